"""DICOM files on disk, without a network: which files of a folder are instances, and the study message a
set of files becomes exactly as the DICOM source would assemble it.

``instance_files(paths) -> (files, skipped)``
    Files named directly are taken as they are; folders are walked recursively (sorted, symbolic links to
    folders not followed) and a file in them is an instance when it carries the DICOM file preamble
    (``DICM`` at byte 128, PS3.10 7.1), as dcmtk's ``storescu +sd`` decides; the others are counted.
``study_from_files(files, calling_ae) -> bytes``
    The study message of ``interlink convert`` and the DICOM sibling tests: each file read by the source's
    own :func:`~engine.sources.dicom_study.read_instance`, the documents joined by its
    :func:`~engine.sources.dicom_study.study_document`, so what is mapped here is what the engine maps. A file
    the source would refuse raises its :class:`~engine.errors.InboundError` (a tag or ``dataset``, never a
    value), with the file's position in ``files``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from engine.errors import InboundError
from engine.sources.dicom_study import read_instance, study_document
from engine.store.objects import StoredObject

__all__ = ["FileRefused", "instance_files", "is_dicom_file", "study_from_files"]

_PREAMBLE = 128
_MAGIC = b"DICM"


class FileRefused(InboundError):
    """A file the DICOM source would refuse: ``index`` is its position in the files given."""

    def __init__(self, error: InboundError, index: int) -> None:
        super().__init__(error.message, kind=error.kind, location=error.location, reject=error.reject)
        self.index = index


def is_dicom_file(path: Path) -> bool:
    """Whether the file starts like a DICOM file (PS3.10: a 128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE:] == _MAGIC


def instance_files(paths: Iterable[Path]) -> tuple[list[Path], int]:
    """The files to send or read (see the module contract) and how many files of the folders were not DICOM."""
    files: list[Path] = []
    skipped = 0
    for p in paths:
        if not p.is_dir():
            files.append(p)
            continue
        for folder, dirs, names in os.walk(p):
            dirs.sort()
            for name in sorted(names):
                f = Path(folder) / name
                if is_dicom_file(f):
                    files.append(f)
                else:
                    skipped += 1
    return files, skipped


def _describe(path: Path) -> StoredObject:
    """What the object store would record of the file (its SHA-256 and size), without storing it."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return StoredObject(digest.hexdigest(), size)


def study_from_files(files: list[Path], calling_ae: str = "", assembled_at: float | None = None) -> bytes:
    """The study message the source would commit for these instances (see the module contract).

    Raises :class:`FileRefused` for a file the source would answer 0xC000, OSError when one cannot be read.
    """
    documents: list[bytes] = []
    for i, path in enumerate(files):
        instance, error = read_instance(path, _describe(path), calling_ae)
        if error is not None:
            raise FileRefused(error, i)
        assert instance is not None
        documents.append(instance.document)
    return study_document(documents, time.time() if assembled_at is None else assembled_at)[0]
