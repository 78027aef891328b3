"""A content-addressed object store: large inbound payloads (DICOM instances) kept as files, by SHA-256.

Contract:

- :meth:`ObjectStore.put_file` copies a file into the store while hashing it, makes it durable (the file
  and its folder are fsynced unless ``fsync=False``) and returns its :class:`StoredObject` (hex SHA-256 and
  size). It is written under a temporary name and renamed into place, so an object that exists is always
  complete; storing the same bytes twice keeps one file.
- An object's name is ``<root>/<first two hex digits>/<sha256>``; nothing else is written into it.
- Messages refer to objects by their SHA-256 (in their raw content); an object lives as long as some
  message refers to it: :meth:`ObjectStore.collect` removes the objects no stored message refers to (the
  store's retention removes messages; this follows it).
- Raises :class:`~engine.errors.StoreUnavailable` when the bytes cannot be stored (disk full, permissions):
  the caller must refuse the inbound payload (DICOM 0xA700), never acknowledge it.

Paths and hashes are never logged with message content; only counts and error class names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import StoreUnavailable

log = logging.getLogger(__name__)

__all__ = ["ObjectStore", "StoredObject"]

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One stored object: its hex SHA-256 (its name) and its size in bytes."""

    sha256: str
    size: int


class ObjectStore:
    """Files by content under ``root``; thread-safe (every write goes through its own temporary file)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        """Where the object named ``sha256`` is (whether or not it exists)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 object name")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """The object's bytes, for reading."""
        return self.path(sha256).open("rb")

    def put_file(self, source: Path | BinaryIO) -> StoredObject:
        """Copy ``source`` (a path, or a binary file positioned at its start) into the store."""
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp / f"{time.time_ns():x}-{os.getpid()}-{os.urandom(6).hex()}"
            digest = hashlib.sha256()
            size = 0
            with contextlib.ExitStack() as stack:
                src = stack.enter_context(open(source, "rb")) if isinstance(source, str | Path) else source
                out = stack.enter_context(open(tmp, "wb"))
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file():
                tmp.unlink()  # the same bytes are stored already: refreshed, so collect() keeps them
                os.utime(final)
                return StoredObject(sha, size)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(final.parent)
            return StoredObject(sha, size)
        except OSError as exc:
            with contextlib.suppress(Exception):
                tmp.unlink(missing_ok=True)
            log.error("object store write failed (%s)", exc.__class__.__name__)
            raise StoreUnavailable(f"object store write failed ({exc.__class__.__name__})") from None

    def names(self) -> Iterator[str]:
        """Every stored object's name."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                for f in folder.iterdir():
                    if len(f.name) == 64:
                        yield f.name

    def collect(self, referenced: Iterable[str], *, older_than_s: float = 3600) -> int:
        """Remove objects no message refers to (``referenced``) and not written in the last ``older_than_s``
        seconds (an object is written before the message that refers to it is committed). Returns how many."""
        keep = set(referenced)
        cutoff = time.time() - older_than_s
        removed = 0
        for name in list(self.names()):
            if name in keep:
                continue
            p = self.path(name)
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
