"""Opt-in watching of the channel and mapping files (``channels_watch_s`` > 0): every ``interval_s`` the engine
(``interlink run``, and ``interlink worker``, which no API reload reaches) reads the files' bytes (channel
files, ``mappings_dir`` and its overlays: ~11 ms for the project's 219 mapping files, in a thread), and when
they differ from the last look it reloads them as ``POST /api/v1/channels/reload`` does
(``EngineControl.reload``). An invalid file is logged with its ``file:line`` and the running version stays;
the same files are not tried again until they change. Each reload (or refusal) is audited
(``engine.reload.Reloaded.audit``) with actor ``engine`` and peer ``watch``.

A file half-written when it is read is simply invalid for one look; the next change (its last write) is
read again. Content, not modification times, decides: a file saved twice within a clock tick still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from engine.config.channel import channel_files
from engine.errors import ConfigError, ListenError
from engine.reload import PartlyApplied, Reloaded

__all__ = ["fingerprint", "watch"]

log = logging.getLogger(__name__)


def fingerprint(paths: Sequence[Path]) -> str:
    """A digest of the channel files' names and bytes (a file that vanishes mid-read counts as empty)."""
    h = hashlib.sha256()
    for f in channel_files(list(paths)):
        h.update(str(f).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


async def watch(
    look: Callable[[], str],
    interval_s: float,
    reload: Callable[[], Awaitable[Reloaded]],
    audit: Callable[[Reloaded | None, str], None],
    *,
    seen: str | None = None,
) -> None:
    """Run until cancelled: reload on every change of what ``look()`` (blocking: run in a thread) digests.
    ``audit(what was applied or None, outcome)`` records each try. ``seen``: the look the running version was
    loaded from (taken before loading, so a change while the engine started is applied); default: now."""
    if seen is None:
        seen = await asyncio.to_thread(look)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(look)
        if now == seen:
            continue
        seen = now
        try:
            reloaded = await reload()
        except ConfigError as exc:
            log.warning("channel or mapping files changed but were not applied: %s", exc)
            await asyncio.to_thread(audit, None, "refused")
            continue
        except ListenError as exc:
            log.warning("channel files applied, but a listener did not start: %s", exc)
            await asyncio.to_thread(audit, exc.reloaded if isinstance(exc, PartlyApplied) else None, "failed")
            continue
        await asyncio.to_thread(audit, reloaded, "ok")
