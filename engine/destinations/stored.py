"""The seam for destinations that send what was received, not the FHIR bundle: a message's stored objects.

Contract:

- A destination that implements :class:`SendsObjects` (``send_objects(objects, *, message_id) -> Result``)
  is handed the files of the objects its message refers to, in the message's order, instead of the
  bundle; everything else about the delivery (ordering gate, attempt records, retry, the one dead-letter
  door, replay) is the same as for bundle destinations. Its ``send(bundle)`` is never called by the
  pipeline.
- :func:`stored_files` reads the objects a message refers to from its raw content: the DICOM study
  document (``{"instances": [{"object": sha256, "size": …}, …]}``, ``engine.sources.dicom_study``) or
  a single instance document (``{"object": sha256, "size": …}``). Anything else refers to no objects.
- The object store is the one of the channel's source (its ``objects_dir``); :func:`object_store` finds
  it. A worker on another host must see the same folder (a shared volume).
- Nothing here opens the objects: the destination does, when it sends, and names a missing or unreadable
  one by its position in the message ("object 3 of 8"), never by a path, hash or UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from engine.destinations.base import Result
from engine.store.objects import ObjectStore

__all__ = ["SendsObjects", "StoredFile", "object_store", "stored_files"]


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One stored object of a message, resolved to its file (which may have gone: retention, a lost disk)."""

    path: Path
    sha256: str
    size: int


@runtime_checkable
class SendsObjects(Protocol):
    """A destination that sends a message's stored objects, byte for byte as received, instead of its bundle."""

    def send_objects(self, objects: Sequence[StoredFile], *, message_id: str) -> Result: ...


def object_store(source: Any) -> ObjectStore | None:
    """The object store a channel's source keeps its objects in (sources that keep none: None)."""
    folder = getattr(source, "objects_dir", None)  # DicomConfig.objects_dir; a future object source names it too
    return ObjectStore(folder, fsync=False) if isinstance(folder, Path) else None


def stored_files(raw: bytes | None, store: ObjectStore) -> list[StoredFile]:
    """The objects a message's raw content refers to, resolved through ``store`` (none: an empty list)."""
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return []
    if not isinstance(doc, dict):
        return []
    items = doc.get("instances") if "instances" in doc else [doc]
    out = []
    for item in items if isinstance(items, list) else []:
        sha = item.get("object") if isinstance(item, dict) else None
        size = item.get("size", 0)
        if not isinstance(sha, str):
            continue
        try:
            path = store.path(sha)
        except ValueError:
            continue
        out.append(StoredFile(path, sha, size if isinstance(size, int) else 0))
    return out
