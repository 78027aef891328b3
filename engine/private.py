"""Files and folders that hold message content (PHI): readable by the engine's user only.

Contract:

- :func:`private_dir` creates every missing folder of a path with mode 0700 (outermost first). Folders
  that already exist are left as they are: they belong to whoever made them (a mounted volume, a folder
  an operator shares with a backup agent).
- :func:`create_private_file` creates a file with mode 0600 if it does not exist (never truncates).
- :func:`open_private` opens a file for appending, creating it with mode 0600.
- :func:`exposed_mode` gives the permission bits of an existing file or folder that grants any access to
  group or others (else ``None``); callers warn about it rather than change an operator's choice.

The modes are given at creation (``mkdir``/``open`` with a mode), so a file is never readable by others
even for a moment, and the process umask is never changed (it is shared by every thread). The umask can
only remove permission bits, never add them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each with mode 0700; existing folders are untouched."""
    missing: list[Path] = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another thread or process
            folder.mkdir(mode=DIR_MODE)


def create_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 (and its missing folders 0700); an existing file is kept."""
    private_dir(Path(path).parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def open_private(path: Path) -> int:
    """Open ``path`` for appending (a raw descriptor), creating it 0600 and its missing folders 0700."""
    private_dir(Path(path).parent)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)


def exposed_mode(path: Path) -> int | None:
    """The permission bits of ``path`` when it exists and group or others have any access, else None."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    return mode if mode & 0o077 else None
