"""What flows and what waits, per channel, counted by SQL from the store (the admin API's channel table and
queues; metadata only).

:func:`channel_counters`: per channel, its messages by outcome (one ``GROUP BY channel, status``):
``received`` every message the channel stored (any status), ``queued`` not finished yet (received,
transformed, held), ``sent``, ``filtered``, ``errored`` (status error), ``dead``, ``duplicate``.

:func:`queue_depths`: per channel and destination, the deliveries not finished (pending, waiting behind an
earlier message of the patient, retrying) and the age of the oldest message among them; per channel the
messages received and not yet processed (destination ``None``). Read by the status index and the deliveries'
status index; no content is read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from sqlalchemy import func, select

from engine.store.repository import Store
from engine.store.schema import OPEN_DELIVERY_STATUSES, MessageStatus, deliveries, messages

__all__ = ["COUNTERS", "QueueDepth", "channel_counters", "queue_depths"]

#: counter name -> the message statuses it counts (``received`` counts every status)
COUNTERS: dict[str, tuple[str, ...]] = {
    "queued": (MessageStatus.received, MessageStatus.transformed, MessageStatus.held),
    "sent": (MessageStatus.sent,),
    "filtered": (MessageStatus.filtered,),
    "errored": (MessageStatus.error,),
    "dead": (MessageStatus.dead,),
    "duplicate": (MessageStatus.duplicate,),
}


def channel_counters(store: Store, *, max_age_s: float = 0.0) -> dict[str, dict[str, int]]:
    """Channel -> counter -> number of messages (channels with no message are absent). With ``max_age_s``,
    a count made that recently (by any caller) is reused, and concurrent callers share one query: the count
    reads every row (measured 160-285 ms for 200,000 messages on SQLite, loaded 2-core box), so a live feed
    costs one count per interval whatever the number of viewers."""
    if max_age_s <= 0:
        return _count(store)
    with _cache_lock:
        lock = _locks.setdefault(store, threading.Lock())
    with lock:
        at, counts = _cached.get(store, (0.0, {}))
        if time.monotonic() - at > max_age_s:
            counts = _count(store)
            _cached[store] = (time.monotonic(), counts)
    return {name: dict(c) for name, c in counts.items()}


_cache_lock = threading.Lock()
_locks: WeakKeyDictionary[Store, threading.Lock] = WeakKeyDictionary()
_cached: WeakKeyDictionary[Store, tuple[float, dict[str, dict[str, int]]]] = WeakKeyDictionary()


def _count(store: Store) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (channel, status), n in store.status_counts().items():
        c = out.setdefault(channel, {"received": 0, **{name: 0 for name in COUNTERS}})
        c["received"] += n
        for name, statuses in COUNTERS.items():
            if status in statuses:
                c[name] += n
    return out


@dataclass(frozen=True, slots=True)
class QueueDepth:
    channel: str
    destination: str | None  # None: messages waiting to be processed
    depth: int
    by_status: dict[str, int]
    oldest_received_at: float | None


def queue_depths(store: Store) -> list[QueueDepth]:
    """What waits, per (channel, destination) with anything waiting; oldest by when its message arrived."""
    by_key: dict[tuple[str, str | None], tuple[dict[str, int], float | None]] = {}

    def add(key: tuple[str, str | None], status: str, n: int, oldest: float | None) -> None:
        counts, first = by_key.setdefault(key, ({}, None))
        counts[status] = counts.get(status, 0) + n
        if oldest is not None and (first is None or oldest < first):
            by_key[key] = (counts, oldest)

    open_deliveries = (
        select(messages.c.channel, deliveries.c.destination, deliveries.c.status, func.count(),
               func.min(messages.c.received_at))
        .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
        .where(deliveries.c.status.in_([str(s) for s in OPEN_DELIVERY_STATUSES]))
        .group_by(messages.c.channel, deliveries.c.destination, deliveries.c.status)
    )  # fmt: skip
    unprocessed = (
        select(messages.c.channel, func.count(), func.min(messages.c.received_at))
        .where(messages.c.status == MessageStatus.received)
        .group_by(messages.c.channel)
    )
    with store.work.connect() as conn:
        for channel, destination, status, n, oldest in conn.execute(open_deliveries):
            add((channel, destination), status, n, oldest)
        for channel, n, oldest in conn.execute(unprocessed):
            add((channel, None), "received", n, oldest)
    order = sorted(by_key, key=lambda k: (k[0], k[1] or ""))
    return [QueueDepth(c, d, sum(by_key[c, d][0].values()), *by_key[c, d]) for c, d in order]
