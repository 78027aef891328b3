"""The event feed: a channel's lifecycle events, POSTed in signed batches to a subscriber's URL.

A channel with ``events:`` tells another system what happens to its messages — ids and statuses only:

    message.received   a message was committed (every row the channel's source stored)
    message.error      it was refused by parsing or mapping (nothing delivered)
    delivery.sent      a destination took it
    delivery.dead      a destination gave up on it (dead letter; a replay that succeeds sends delivery.sent)

Each event is ``{id, type, channel, message_id, destination?, status, at}`` (``at``: ISO 8601 UTC, when
the change was recorded): never content, an identifier, a control id, a message type or an error text.
A batch is ``{"type": "interlink.events", "channel": …, "events": [...]}``, POSTed by the channel's
``events.destination`` — an ``http`` destination: Standard Webhooks signature (``webhook-id`` is
``msg_<batch id>``, the same for every retry of one batch), the same outcome classification and backoff
(``RetryPolicy``) as message deliveries.

Durable and off the hot path. The feed writes nothing where messages are accepted or delivered: one
thread per channel reads the store's own state changes (messages by id, which sorts by creation time;
deliveries by ``(status, updated_at)``, index ``ix_deliveries_changed``) after they have settled
(``settle_s``: a transaction stamped before a later one may commit after it; rows younger than that are
left for the next poll), and records how far it got in ``feed_cursors`` only once the receiver answered
2xx. A restart resumes there; a batch taken but not recorded is sent again with the same event ids
(at-least-once: subscribers deduplicate by event ``id``). A receiver that refuses (4xx) or stays down is
retried with backoff forever, capped at ``max_backoff_ms``: the feed never skips events; its lag grows
and the log says so (channel and HTTP status only).

Run by the process that runs the channel's source (``interlink run``), one feed per channel. Two
``run`` processes of one channel each send the feed (duplicates, recognised by event id).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import Field
from sqlalchemy import and_, or_, select

from engine.config.model import Model
from engine.destinations.base import Outcome
from engine.destinations.http import HttpConfig, HttpDestination
from engine.store.schema import DeliveryStatus, MessageStatus, deliveries, messages

__all__ = ["EVENT_TYPES", "EventFeed", "EventsConfig", "collect"]

log = logging.getLogger(__name__)

EventType = Literal["message.received", "message.error", "delivery.sent", "delivery.dead"]
EVENT_TYPES: tuple[EventType, ...] = ("message.received", "message.error", "delivery.sent", "delivery.dead")


class EventsConfig(Model):
    """A channel's event feed: which lifecycle events go to which HTTP destination (see engine/events_feed.py)."""

    destination: HttpConfig = Field(
        description="The subscriber: an `http` destination (url, signing, timeout_s, headers, auth); its `retry` "
        "sets the backoff only: a batch is retried until it is taken, never dead-lettered or skipped."
    )
    types: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        min_length=1,
        description="Events sent: message.received, message.error, delivery.sent, delivery.dead (default: all).",
    )
    batch_max: int = Field(100, ge=1, le=10_000, description="Most events in one POST.")
    interval_s: float = Field(1.0, gt=0, description="How often the store is read for new events (s).")
    settle_s: float = Field(
        2.0,
        ge=0,
        description="Events are read once they are this old (s): a commit stamped earlier than one already "
        "read can land after it; keep it above the longest store transaction.",
    )


@dataclass
class Cursor:
    """How far the feed has delivered: the last message id, and the last delivery/error change read."""

    message_id: str = ""
    delivery: tuple[float, str, str] = (0.0, "", "")  # (updated_at, message id, destination)
    error: tuple[float, str] = (0.0, "")  # (updated_at, message id)

    def dumps(self) -> str:
        return orjson.dumps([self.message_id, list(self.delivery), list(self.error)]).decode()

    @classmethod
    def loads(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        m, d, e = orjson.loads(text)
        return cls(m, (float(d[0]), d[1], d[2]), (float(e[0]), e[1]))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _id_at(ts: float) -> str:
    """The smallest message id made at ``ts`` (ids start with their creation time in µs, 14 hex digits)."""
    return f"{int(ts * 1_000_000):014x}"


def _event(kind: str, channel: str, message_id: str, at: float, destination: str = "") -> dict[str, Any]:
    status = kind.split(".", 1)[1]
    key = f"{message_id}|{destination}|{status}|{at!r}"
    event = {"id": "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32], "type": kind, "channel": channel,
             "message_id": message_id, "status": status, "at": _iso(at)}  # fmt: skip
    if destination:
        event["destination"] = destination
    return event


def collect(
    conn: Any, channel: str, cursor: Cursor, types: list[EventType], limit: int, until: float
) -> tuple[list[dict[str, Any]], Cursor]:
    """The next events after ``cursor`` (at most ``limit``, none newer than ``until``), oldest first, and the
    cursor after them. Each kind is read in its own order, up to ``limit``; the merged batch keeps the
    oldest ``limit`` and the cursor moves only past what it keeps."""
    found: list[tuple[float, int, dict[str, Any], Any]] = []  # (time, kind order, event, position)
    if "message.received" in types:
        q = (
            select(messages.c.id, messages.c.received_at)
            .where(messages.c.id > cursor.message_id, messages.c.id < _id_at(until), messages.c.channel == channel)
            .order_by(messages.c.id)
            .limit(limit)
        )
        for mid, at in conn.execute(q):
            # ordered by the time in the id (the cursor's order), so what is kept is always a prefix
            found.append((int(mid[:14], 16) / 1e6, 0, _event("message.received", channel, mid, at), ("m", mid)))
    if "message.error" in types:
        t, mid = cursor.error
        q = (
            select(messages.c.id, messages.c.updated_at)
            .where(
                messages.c.status == MessageStatus.error.value,
                messages.c.updated_at < until,
                or_(messages.c.updated_at > t, and_(messages.c.updated_at == t, messages.c.id > mid)),
                messages.c.channel == channel,
            )
            .order_by(messages.c.updated_at, messages.c.id)
            .limit(limit)
        )
        for mid2, at in conn.execute(q):
            found.append((at, 1, _event("message.error", channel, mid2, at), ("e", (at, mid2))))
    wanted = [
        s for s, k in ((DeliveryStatus.sent, "delivery.sent"), (DeliveryStatus.dead, "delivery.dead")) if k in types
    ]
    if wanted:
        t, mid, dest = cursor.delivery
        d = deliveries.c
        same_time_after = or_(d.message_id > mid, and_(d.message_id == mid, d.destination > dest))
        after = or_(d.updated_at > t, and_(d.updated_at == t, same_time_after))
        q = (
            select(d.message_id, d.destination, d.status, d.updated_at)
            .join(messages, messages.c.id == d.message_id)
            .where(d.status.in_([s.value for s in wanted]), d.updated_at < until, after, messages.c.channel == channel)
            .order_by(d.updated_at, d.message_id, d.destination)
            .limit(limit)
        )
        for mid2, dest2, status, at in conn.execute(q):
            found.append((at, 2, _event(f"delivery.{status}", channel, mid2, at, dest2), ("d", (at, mid2, dest2))))
    found.sort(key=lambda f: (f[0], f[1]))  # stable: each kind keeps its own (cursor) order
    kept = found[:limit]
    nxt = Cursor(cursor.message_id, cursor.delivery, cursor.error)
    for _, _, _, (kind, pos) in kept:  # each kind's rows were read in its own cursor order
        if kind == "m":
            nxt.message_id = pos
        elif kind == "e":
            nxt.error = pos
        else:
            nxt.delivery = pos
    return [f[2] for f in kept], nxt


class EventFeed:
    """One channel's feed: a thread that reads new events from the store and POSTs them in batches."""

    def __init__(self, store: Any, channel: str, config: EventsConfig, destination: Any = None) -> None:
        self.store = store
        self.channel = channel
        self.config = config
        #: the http destination (a test may give its own, e.g. on an httpx.MockTransport)
        self.destination = destination if destination is not None else HttpDestination(config.destination)
        self.sent_batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"interlink-feed-{self.channel}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.destination.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.step()
            except Exception as exc:  # the store is down or busy: try again at the next poll, never die
                log.warning("event feed %s: cannot read the store (%s)", self.channel, type(exc).__name__)
                sent = False
            if not sent:
                self._stop.wait(self.config.interval_s)

    def step(self) -> bool:
        """Send the next batch (retrying it until the receiver takes it or the feed stops); True when a full
        batch was sent (more may be waiting)."""
        cfg = self.config
        cursor = Cursor.loads(self.store.feed_cursor(self.channel))
        with self.store.work.connect() as conn:
            events, nxt = collect(conn, self.channel, cursor, cfg.types, cfg.batch_max, time.time() - cfg.settle_s)
        if not events:
            return False
        batch_id = hashlib.sha256("".join(e["id"] for e in events).encode()).hexdigest()[:32]
        payload = {"type": "interlink.events", "channel": self.channel, "events": events}
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            result = self.destination.send(payload, message_id=batch_id)
            if result.outcome is Outcome.SENT:
                self.store.save_feed_cursor(self.channel, nxt.dumps())
                self.sent_batches += 1
                return len(events) == cfg.batch_max
            policy = cfg.destination.retry
            log.warning("event feed %s: batch not taken (%s), attempt %d; retrying", self.channel,
                        result.status_code or result.outcome.value, attempt)  # fmt: skip
            delay = policy.delay_ms(min(attempt, policy.max_attempts), result.retry_after_s) / 1000
            self._stop.wait(delay)
        return False
