"""NDJSON file destination: append each bundle as one JSON line.

The file stays open between sends; a lock keeps lines from interleaving across worker threads. A
failed write (disk full) is cut back so the file never holds a partial line, and is retried. When the
file is moved away (log rotation), the next send opens a new one at ``path``.

The lines are FHIR bundles (PHI): a new file is created mode 0600 and missing folders 0700
(``engine.private``); an existing file or folder keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from engine.config.model import Model
from engine.destinations.base import DestinationError, Health, Outcome, Result, RetryPolicy, failure_result, to_json
from engine.private import open_private


class FileConfig(Model):
    """Append each bundle as one JSON line to a file."""

    type: Literal["file"] = Field(description="Destination kind.")
    name: str = Field(description="Destination name, unique in the channel.")
    path: str = Field(
        description="NDJSON file to append to (created mode 0600; missing folders are created mode 0700)."
    )
    fsync: bool = Field(False, description="fsync after every line (survives power loss; much slower).")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy for failed writes.")

    def target(self) -> str:
        """The system written to (channels writing to the same file share ordering lanes)."""
        return "file " + os.path.abspath(self.path)


class FileDestination:
    """Appends bundles to an NDJSON file; thread-safe."""

    def __init__(self, config: FileConfig, *, transport: object = None) -> None:
        self.name = config.name
        self.config = config
        self._path = Path(config.path)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        try:
            body = to_json(bundle)
        except DestinationError as exc:
            return failure_result(exc)
        with self._lock:
            try:
                self._append(body + b"\n")
            except OSError as exc:
                self._close()
                return failure_result(exc, request=body)
        return Result(Outcome.SENT, request=body)

    def healthcheck(self) -> Health:
        """The file's folder exists (or can be made) and is writable."""
        existing = _existing_parent(self._path.parent)
        if not existing.is_dir():
            return Health(False, "output folder cannot be created (a file is in the way)")
        if not os.access(existing, os.W_OK):
            return Health(False, "output folder is not writable")
        return Health(True)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _append(self, line: bytes) -> None:
        fd = self._open()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            if self.config.fsync:
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # never leave a partial line behind
            raise

    def _open(self) -> int:
        if self._fd is not None and not self._moved(self._fd):
            return self._fd
        self._close()
        self._fd = open_private(self._path)
        return self._fd

    def _moved(self, fd: int) -> bool:
        """True when ``path`` no longer names the open file (rotated or deleted)."""
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            return True
        then = os.fstat(fd)
        return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _existing_parent(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
