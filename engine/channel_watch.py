"""Opt-in watching of the channel files (``channels_watch_s`` > 0): every ``interval_s`` the engine of
``interlink run`` reads the channel files' bytes, and when they differ from the last look it reloads them as
``POST /api/v1/channels/reload`` does (``EngineControl.reload_channels``). An invalid file is logged with its
``file:line`` and the running version stays; the same files are not tried again until they change. Each
reload (or refusal) is an audit row with actor ``engine`` and peer ``watch``.

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
    paths: Sequence[Path],
    interval_s: float,
    reload: Callable[[], Awaitable[list[str]]],
    audit: Callable[[str, str], None],
) -> None:
    """Run until cancelled: reload on every change of the files. ``audit(target, outcome)`` records it."""
    seen = await asyncio.to_thread(fingerprint, paths)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(fingerprint, paths)
        if now == seen:
            continue
        seen = now
        try:
            changed = await reload()
        except ConfigError as exc:
            log.warning("channel files changed but were not applied: %s", exc)
            await asyncio.to_thread(audit, "", "refused")
            continue
        except ListenError as exc:
            log.warning("channel files applied, but a listener did not start: %s", exc)
            await asyncio.to_thread(audit, "", "failed")
            continue
        await asyncio.to_thread(audit, " ".join(changed)[:200], "ok")
