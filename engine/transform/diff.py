"""What a mapping change would change: stored messages run through the mappings on disk now, each new bundle
compared with the bundle stored when the message was processed.

:func:`diff_bundles` is the structural diff of two transaction bundles. Entries are paired by ``fullUrl``
(a resource's identity: the mapping derives it from the business identifier), then what is left of one
resource type in order (an identity the change altered: the key shows both). Per pair, every leaf that
differs is a :class:`Change` with a FHIRPath-like path (``name[0].given[1]``; the entry's request under
``request.``): ``added``, ``removed`` or ``changed``, with the old and new values. An entry on one side only
is one change of the whole resource.

:class:`Replay` compiles the mappings and reads the channel files on disk now (``load_site_mappings``, never
the running engine's maps) and maps each :class:`~engine.store.operations.DiffInput` as the worker would.
:class:`Replays` keeps the last one while no file under those folders changed (path, size and mtime of each:
measured 6 ms for the project's 350 mapping files, against 1.7 s to compile them), so a diff view that asks
again and again compiles once per edit.
The values are message content (PHI): :meth:`MessageDiff.summary_rows` and :func:`summarize` give paths and
counts only, for listings.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from engine.errors import explain
from engine.transform.pool import channel_job, map_one

if TYPE_CHECKING:
    from engine.config.channel import Channel
    from engine.settings import Settings
    from engine.store.operations import DiffInput
    from engine.transform import MappingSet

__all__ = ["Change", "MessageDiff", "Replay", "Replays", "ResourceDiff", "diff_bundles", "fingerprint", "summarize"]

Op = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One leaf (or subtree on one side only) that differs."""

    path: str
    op: Op
    old: Any = None
    new: Any = None


@dataclass(frozen=True, slots=True)
class ResourceDiff:
    """One resource of the bundle: added, removed or changed (then ``changes`` lists the paths)."""

    resource_type: str
    key: str  # the entry's fullUrl (old -> new when the identity changed)
    op: Op
    changes: tuple[Change, ...] = ()

    def as_json(self, *, values: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"resource_type": self.resource_type, "key": self.key, "op": self.op}
        out["changes"] = [
            {"path": c.path, "op": c.op, **({"old": c.old, "new": c.new} if values else {})} for c in self.changes
        ]
        return out


@dataclass(slots=True)
class MessageDiff:
    """One stored message: how it was processed, what the mapping on disk makes of it now, what differs."""

    message_id: str
    channel: str
    message_type: str
    before: str  # the stored status (transformed, sent, dead, error, filtered)
    now: str  # transformed | error | filtered | skipped
    error: str | None = None  # why ``now`` is error or skipped (PHI-free: a place and a rule)
    resources: list[ResourceDiff] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Some resource differs, or the mapping now refuses (or filters) what it did not before."""
        return bool(self.resources) or (self.now in ("error", "filtered") and self.before != self.now)

    def as_json(self, *, values: bool = True) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "channel": self.channel,
            "message_type": self.message_type,
            "before": self.before,
            "now": self.now,
            "error": self.error,
            "changed": self.changed,
            "resources": [r.as_json(values=values) for r in self.resources],
        }


# -- the structural diff -----------------------------------------------------------------------------------


def diff_bundles(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[ResourceDiff]:
    """The resources that differ between two bundles (None: no bundle on that side)."""
    before = _entries(old)
    after = _entries(new)
    out: list[ResourceDiff] = []
    paired: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []
    rest_old = [(k, e) for k, e in before.items() if k not in after]
    rest_new = [(k, e) for k, e in after.items() if k not in before]
    paired.extend((k, before[k], k, after[k]) for k in before if k in after)
    for kind in dict.fromkeys(_type(e) for _, e in rest_old):  # identities that changed: same type, in order
        olds = [x for x in rest_old if _type(x[1]) == kind]
        news = [x for x in rest_new if _type(x[1]) == kind]
        for (ko, eo), (kn, en) in zip(olds, news, strict=False):
            paired.append((ko, eo, kn, en))
            rest_old.remove((ko, eo))
            rest_new.remove((kn, en))
    for ko, eo, kn, en in paired:
        changes = _diff(_comparable(eo), _comparable(en), "")
        if changes or ko != kn:
            out.append(ResourceDiff(_type(en), ko if ko == kn else f"{ko} -> {kn}", "changed", tuple(changes)))
    for k, e in rest_old:
        out.append(ResourceDiff(_type(e), k, "removed", (Change("", "removed", old=_comparable(e)),)))
    for k, e in rest_new:
        out.append(ResourceDiff(_type(e), k, "added", (Change("", "added", new=_comparable(e)),)))
    return out


def _entries(bundle: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not bundle:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(bundle.get("entry") or []):
        out[str(e.get("fullUrl") or f"entry[{i}]")] = e
    return out


def _type(entry: dict[str, Any]) -> str:
    return str((entry.get("resource") or {}).get("resourceType", "?"))


def _comparable(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as compared: its resource's elements, and its request under ``request``."""
    resource = {k: v for k, v in (entry.get("resource") or {}).items() if k != "resourceType"}
    if "request" in entry:
        resource["request"] = entry["request"]
    return resource


def _diff(old: Any, new: Any, path: str) -> list[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in dict.fromkeys([*old, *new]):
            sub = f"{path}.{k}" if path else k
            if k not in new:
                out.append(Change(sub, "removed", old=old[k]))
            elif k not in old:
                out.append(Change(sub, "added", new=new[k]))
            else:
                out.extend(_diff(old[k], new[k], sub))
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(new):
                out.append(Change(sub, "removed", old=old[i]))
            elif i >= len(old):
                out.append(Change(sub, "added", new=new[i]))
            else:
                out.extend(_diff(old[i], new[i], sub))
        return out
    return [] if old == new else [Change(path, "changed", old=old, new=new)]


# -- running stored messages through the maps on disk ------------------------------------------------------


class Replay:
    """The mappings and channel files on disk now, compiled for a diff (seconds: compile once per diff)."""

    def __init__(self, settings: Settings) -> None:
        from engine.config.channel import load_channels
        from engine.transform.mappingset import load_site_mappings

        self.mappings: MappingSet = load_site_mappings(settings)
        self.channels: dict[str, Channel] = {c.name: c for c in load_channels([settings.channels_dir])}

    def diff(self, stored: Iterable[DiffInput]) -> list[MessageDiff]:
        return [self.diff_one(s) for s in stored]

    def diff_one(self, s: DiffInput) -> MessageDiff:
        out = MessageDiff(s.id, s.channel, s.message_type, s.status, "skipped")
        channel = self.channels.get(s.channel)
        if channel is None:
            out.error = f"channel {s.channel} is not in the channel files"
            return out
        mapped = map_one(self.mappings, channel_job(channel, s.raw, s.charset, s.kind))
        if mapped.error is not None:
            out.now, out.error = "error", explain(mapped.error)
        elif mapped.empty or mapped.bundle is None:
            out.now = "filtered"
        else:
            out.now = "transformed"
        old = orjson.loads(s.bundle) if s.bundle else None
        new = orjson.loads(mapped.bundle) if mapped.bundle else None
        out.resources = diff_bundles(old, new)
        return out


def fingerprint(settings: Settings) -> str:
    """What the mapping folders (with overlays) and channel files on disk are now: every file's path, size and
    modification time."""
    h = hashlib.sha256()
    for root in (settings.mappings_dir, *settings.mapping_overlays, settings.channels_dir):
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed while walking: the next look sees it gone
                    continue
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class Replays:
    """The :class:`Replay` of the files on disk now, compiled again only when one of them changed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # one compile at a time; a second request waits for it
        self._key = ""
        self._replay: Replay | None = None

    def current(self) -> Replay:
        key = fingerprint(self.settings)
        with self._lock:
            if self._replay is None or key != self._key:
                self._replay, self._key = Replay(self.settings), key
            return self._replay


def summarize(diffs: Sequence[MessageDiff]) -> Counter[tuple[str, str, str]]:
    """(resource type, path without indices, op) → how many times, over every message: no values."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for d in diffs:
        for r in d.resources:
            for c in r.changes:
                counts[(r.resource_type, _no_index(c.path) or "(resource)", c.op)] += 1
    return counts


def _no_index(path: str) -> str:
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)
