"""Hot reload: what the mapping files are now, and what a reload changed.

A reload (``POST /api/v1/channels/reload``, ``interlink reload``, the watcher of ``channels_watch_s``) applies
the channel files and the mapping files (``mappings_dir`` and ``mapping_overlays``) at once
(``Engine.reload``). Mapping files are told apart by their bytes (:func:`mapping_digests`): only a reload
that finds one added, removed or changed compiles the maps again. :class:`Reloaded` is what it applied, by
channel name and mapping file name (the file's path under its mapping folder, after that folder's name),
never content; :meth:`Reloaded.audit` is the audit rows it makes, for the API and the watcher alike. A
changed channel whose listener cannot start raises :class:`PartlyApplied` (a ``ListenError``) once the rest is
applied: it carries what was, so the maps swapped in are audited all the same.

Site functions (``site_functions``) are Python code loaded once per process: a reload does not load them
again (a changed package needs a restart).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ListenError

if TYPE_CHECKING:
    from engine.settings import Settings

__all__ = ["PartlyApplied", "Reloaded", "changed_files", "mapping_digests", "mapping_fingerprint"]


@dataclass(frozen=True)
class Reloaded:
    """What one reload applied: changed or removed channels, and changed, added or removed mapping files."""

    channels: list[str] = field(default_factory=list)
    mappings: list[str] = field(default_factory=list)

    def audit(self, outcome: str = "ok") -> list[tuple[str, str, str]]:
        """The audit rows (action, target, outcome) of this reload: ``channel.reload`` always, with ``outcome``;
        ``mapping.reload`` when mapping files changed, ``ok`` (maps are swapped in before channels are applied;
        a refused reload swaps nothing). Targets are names only, cut at 200 characters."""
        rows = [("channel.reload", " ".join(self.channels)[:200], outcome)]
        if self.mappings:
            rows.append(("mapping.reload", " ".join(self.mappings)[:200], "ok"))
        return rows


class PartlyApplied(ListenError):
    """A reload applied, except that a changed channel's listener did not start (``str()``: which and why)."""

    def __init__(self, message: str, reloaded: Reloaded) -> None:
        super().__init__(message)
        self.reloaded = reloaded


def mapping_files(settings: Settings) -> list[tuple[str, Path]]:
    """Every mapping file the maps are compiled from, named by its folder's name and its path under it (the
    maps' own tests, ``*.tests.yaml``, are not compiled and not included)."""
    out: list[tuple[str, Path]] = []
    for root in [settings.mappings_dir, *settings.mapping_overlays]:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.yaml")):
            if not path.name.endswith(".tests.yaml") and path.is_file():
                out.append((f"{root.name}/{path.relative_to(root).as_posix()}", path))
    return out


def mapping_digests(settings: Settings) -> dict[str, str]:
    """Each mapping file's name and the SHA-256 of its bytes (a file that vanishes while read counts as empty)."""
    out: dict[str, str] = {}
    for name, path in mapping_files(settings):
        data = b""
        with contextlib.suppress(OSError):
            data = path.read_bytes()
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def mapping_fingerprint(digests: dict[str, str]) -> str:
    """One digest of all the files (what a mapping process checks it compiled)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\0".encode())
    return h.hexdigest()


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Names of the files added, removed or changed between two looks, sorted."""
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
