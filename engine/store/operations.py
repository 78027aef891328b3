"""Operator actions on stored messages, one by one or by a filter: dead letters (list, replay, discard),
reprocess, redeliver, and the messages a mapping diff reads.

A :class:`Selection` says which: message ids, and/or a filter (channel, destination, message status, message
type, received since/until). The admin API and the CLI build the same one. Every verb that acts has a dry
run (``count_*``) that counts exactly what it would act on, and acts in batches of ``BATCH`` in id order, one
transaction per batch, yielding what each batch changed: the caller enqueues each batch at once (and shows
progress) before the next is read. Every change is a conditional update (``… WHERE status = expected``), so
an action racing a worker or another operator changes each row once; what moved on meanwhile is skipped.

``for_sweeper``: the caller cannot enqueue (another process owns an in-process queue), so the rows are marked
stale and that process's sweeper picks them up at its next pass.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator
from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement

from engine.config.model import Model
from engine.store import codec
from engine.store.schema import ContentKind, DeliveryStatus, MessageStatus, contents, deliveries, messages

if TYPE_CHECKING:
    from engine.config.channel import Channel
    from engine.store.repository import Store

__all__ = [
    "BATCH",
    "DIFFABLE",
    "REPROCESSABLE",
    "DiffInput",
    "Redelivered",
    "Refused",
    "Selection",
    "count_dead",
    "count_reprocess",
    "dead_letters",
    "destination_target",
    "discard_dead",
    "for_diff",
    "redeliver",
    "replay_dead",
    "reprocess",
    "wake_behind",
]

#: rows changed per transaction (and handed to the caller to enqueue) when acting on a filtered set
BATCH = 500

#: message statuses an operator may run again from raw (default: error and dead)
REPROCESSABLE = (MessageStatus.error, MessageStatus.dead, MessageStatus.filtered, MessageStatus.sent)
_REPROCESS_DEFAULT = (MessageStatus.error, MessageStatus.dead)

#: message statuses a mapping diff reads: those that were mapped (or refused by the mapping)
DIFFABLE = (
    MessageStatus.transformed,
    MessageStatus.sent,
    MessageStatus.dead,
    MessageStatus.error,
    MessageStatus.filtered,
)

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_ID = r"^[0-9a-f]{32}$"


class Selection(Model):
    """Which messages (or their deliveries) an operator action takes: ids, a filter, or both (ids that match)."""

    ids: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Message ids (32 hex digits); with filter fields, only those of them that match.",
    )
    channel: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", max_length=100, description="Only this channel.")
    destination: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        max_length=100,
        description="Only this destination (dead letters: the delivery's; messages: those with a delivery to it).",
    )
    status: MessageStatus | None = Field(None, description="Only messages in this status.")
    message_type: str | None = Field(
        None, max_length=40, description="Only this message type as stored (`ORU^R01`; `ORU` takes every ORU event)."
    )
    since: datetime | None = Field(
        None,
        description="Received at or after: an ISO 8601 time (no offset: the engine host's time zone) or an age "
        "such as `30m`, `2h`, `7d`.",
    )
    until: datetime | None = Field(None, description="Received before (same forms as `since`).")
    all: bool = Field(False, description="Take every message when no id and no filter field is given.")

    @field_validator("ids")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        for i, v in enumerate(ids):
            if not re.match(_ID, v):
                raise ValueError(f"ids[{i}] is not a message id (32 hex digits)")
        return ids

    @field_validator("since", "until", mode="before")
    @classmethod
    def _age(cls, value: Any) -> Any:
        if isinstance(value, str) and (m := _RELATIVE.match(value.strip())):
            return datetime.now().astimezone() - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        return value

    @property
    def chooses(self) -> bool:
        """Whether it names anything: ids, a filter field, or ``all``."""
        return bool(self.all or self.ids or self.filtered)

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.channel, self.destination, self.status, self.message_type, self.since, self.until)
        )

    def describe(self) -> str:
        """The selection for an audit row's target: its filter fields (the ids go to the row's message ids);
        names, statuses and times, never message content."""
        parts = [
            f"{k}={v.isoformat() if isinstance(v, datetime) else v}"
            for k, v in self.model_dump(exclude={"ids", "all"}, exclude_none=True).items()
        ]
        if self.ids:
            parts.append(f"ids={len(self.ids)}")
        return " ".join(parts) or "all"

    def message_conditions(self, *, destination: bool = True) -> list[ColumnElement[bool]]:
        """Conditions on ``messages`` (``destination``: a delivery to it exists)."""
        m = messages.c
        cond: list[ColumnElement[bool]] = []
        if self.ids:
            cond.append(m.id.in_(self.ids))
        if self.channel:
            cond.append(m.channel == self.channel)
        if self.status:
            cond.append(m.status == self.status)
        if self.message_type:
            t = self.message_type
            cond.append(m.message_type == t if "^" in t else or_(m.message_type == t, m.message_type.like(f"{t}^%")))
        if self.since:
            cond.append(m.received_at >= self.since.timestamp())
        if self.until:
            cond.append(m.received_at < self.until.timestamp())
        if destination and self.destination:
            d = deliveries.c
            cond.append(exists().where(d.message_id == m.id, d.destination == self.destination))
        return cond

    def delivery_conditions(self) -> list[ColumnElement[bool]]:
        """Conditions on ``deliveries`` joined with ``messages``."""
        cond = self.message_conditions(destination=False)
        if self.destination:
            cond.append(deliveries.c.destination == self.destination)
        return cond


class Refused(Exception):
    """An action refused on one message: ``slug`` says why (``not-found``, ``conflict``, ``no-bundle``)."""

    def __init__(self, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail


# -- dead letters ------------------------------------------------------------------------------------------

_DEAD = deliveries.c.status == DeliveryStatus.dead


def _after(after: tuple[str, str] | None) -> list[ColumnElement[bool]]:
    if after is None:
        return []
    d = deliveries.c
    return [or_(d.message_id > after[0], and_(d.message_id == after[0], d.destination > after[1]))]


def dead_letters(
    store: Store, selection: Selection, *, after: tuple[str, str] | None = None, limit: int = 100
) -> list[Row[Any]]:
    """Dead deliveries in (message id, destination) order after the keyset ``after``: metadata only."""
    d, m = deliveries.c, messages.c
    q = (
        select(
            d.message_id,
            d.destination,
            d.attempts,
            d.last_status_code,
            d.last_error,
            d.updated_at,
            m.channel,
            m.message_type,
            m.received_at,
        )
        .join(messages, m.id == d.message_id)
        .where(_DEAD, *selection.delivery_conditions(), *_after(after))
        .order_by(d.message_id, d.destination)
        .limit(limit)
    )
    with store.work.connect() as conn:
        return list(conn.execute(q))


def count_dead(store: Store, selection: Selection) -> int:
    """How many dead deliveries :func:`replay_dead` or :func:`discard_dead` would take now (a dry run)."""
    q = (
        select(func.count())
        .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
        .where(_DEAD, *selection.delivery_conditions())
    )
    with store.work.connect() as conn:
        return int(conn.execute(q).scalar_one())


def _dead_page(conn: Any, selection: Selection, after: tuple[str, str] | None, batch: int) -> list[tuple[str, str]]:
    """The next ``batch`` dead (message id, destination) pairs of the selection after the keyset ``after``."""
    d = deliveries.c
    q = (
        select(d.message_id, d.destination)
        .join(messages, messages.c.id == d.message_id)
        .where(_DEAD, *selection.delivery_conditions(), *_after(after))
        .order_by(d.message_id, d.destination)
        .limit(batch)
    )
    return [(str(mid), str(dest)) for mid, dest in conn.execute(q)]


def _one_dead(deliveries_key: tuple[str, str]) -> ColumnElement[bool]:
    d = deliveries.c
    return and_(d.message_id == deliveries_key[0], d.destination == deliveries_key[1], _DEAD)


def replay_dead(
    store: Store, selection: Selection, *, for_sweeper: bool = False, batch: int = BATCH
) -> Iterator[list[tuple[str, str]]]:
    """Dead deliveries → pending again (attempt count restarts); yields per batch what must be enqueued."""
    after: tuple[str, str] | None = None
    while True:
        with store._writing(store.work) as conn:
            pairs = _dead_page(conn, selection, after, batch)
            now = time.time()
            done = []
            for pair in pairs:
                moved = conn.execute(
                    update(deliveries)
                    .where(_one_dead(pair))
                    .values(
                        status=DeliveryStatus.pending,
                        attempts=0,
                        next_attempt_at=now,
                        updated_at=0.0 if for_sweeper else now,
                    )
                ).rowcount
                if moved:
                    done.append(pair)
                    conn.execute(
                        update(messages)
                        .where(messages.c.id == pair[0], messages.c.status == MessageStatus.dead)
                        .values(status=MessageStatus.transformed, updated_at=now)
                    )
        if pairs:
            yield done  # committed: the caller may enqueue
        if len(pairs) < batch:
            return
        after = pairs[-1]


def discard_dead(
    store: Store, selection: Selection, reason: str, *, batch: int = BATCH
) -> Iterator[list[tuple[str, str]]]:
    """An operator gives up on dead deliveries: final, and they no longer hold their lanes. Yields per batch
    what was discarded; what waits behind it is marked due for the sweeper (a caller with the running engine's
    queue releases it at once: :func:`wake_behind`)."""
    after: tuple[str, str] | None = None
    while True:
        with store._writing(store.work) as conn:
            pairs = _dead_page(conn, selection, after, batch)
            now = time.time()
            done = [
                pair
                for pair in pairs
                if conn.execute(
                    update(deliveries)
                    .where(_one_dead(pair))
                    .values(status=DeliveryStatus.discarded, last_error=f"discarded: {reason}"[:500], updated_at=now)
                ).rowcount
            ]
            if done:  # what waits behind them in their lanes is due now (the sweeper re-checks it)
                lanes = select(messages.c.lane).where(messages.c.id.in_({m for m, _ in done}), messages.c.lane != "")
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.status == DeliveryStatus.waiting,
                        deliveries.c.message_id.in_(select(messages.c.id).where(messages.c.lane.in_(lanes))),
                    )
                    .values(updated_at=0.0)
                )
        if pairs:
            yield done
        if len(pairs) < batch:
            return
        after = pairs[-1]


def wake_behind(store: Store, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Release the first delivery waiting behind each of these messages in its lane (after a discard); returns
    the (message id, destination) pairs the caller must enqueue."""
    ids = sorted({m for m, _ in pairs})
    if not ids:
        return []
    with store.work.connect() as conn:
        lanes = conn.execute(select(messages.c.id, messages.c.lane).where(messages.c.id.in_(ids))).all()
    out: list[tuple[str, str]] = []
    for mid, lane in lanes:
        if lane:
            out.extend(store.wake_after(lane, mid))
    return out


# -- reprocess ---------------------------------------------------------------------------------------------


def _reprocess_conditions(selection: Selection) -> list[ColumnElement[bool]]:
    if selection.status is not None and selection.status not in REPROCESSABLE:
        raise ValueError(f"status: only messages {', '.join(REPROCESSABLE)} can be reprocessed")
    cond = selection.message_conditions()
    if selection.status is None:
        cond.append(messages.c.status.in_(_REPROCESS_DEFAULT))
    return cond


def count_reprocess(store: Store, selection: Selection) -> int:
    """How many messages :func:`reprocess` would run again now (a dry run). ValueError: a status that cannot be
    reprocessed."""
    q = select(func.count()).select_from(messages).where(*_reprocess_conditions(selection))
    with store.work.connect() as conn:
        return int(conn.execute(q).scalar_one())


def reprocess(
    store: Store, selection: Selection, *, for_sweeper: bool = False, batch: int = BATCH
) -> Iterator[list[str]]:
    """Messages (in error or dead unless the selection names another status of :data:`REPROCESSABLE`) run again
    from raw with the current mappings: back to ``received``, their deliveries gone (the new bundle makes new
    ones). Yields per batch the ids to enqueue for processing. ValueError: see :func:`count_reprocess`."""
    cond = _reprocess_conditions(selection)
    m = messages.c
    after = ""
    while True:
        with store._writing(store.work) as conn:
            rows = conn.execute(select(m.id, m.status).where(*cond, m.id > after).order_by(m.id).limit(batch)).all()
            if not rows:
                return
            now = time.time()
            done = [
                str(mid)
                for mid, status in rows
                if conn.execute(
                    update(messages)
                    .where(m.id == mid, m.status == status)
                    .values(status=MessageStatus.received, error=None, updated_at=0.0 if for_sweeper else now)
                ).rowcount
            ]
            if done:
                conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(done)))
        yield done
        if len(rows) < batch:
            return
        after = str(rows[-1][0])


# -- redeliver ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redelivered:
    """A delivery made pending again (or new): ``message_id`` is the message whose bundle goes out (a
    duplicate's original), ``duplicate`` the duplicate asked for ('' = none)."""

    message_id: str
    destination: str
    channel: str
    duplicate: str = ""


def destination_target(channels: Sequence[Channel], channel: str, destination: str) -> str:
    """The target key (:func:`~engine.destinations.target_key`) of a destination of a configured channel;
    Refused (``unknown-destination``) when the channel is not configured or has no destination of that name."""
    from engine.destinations import target_key

    for c in channels:
        if c.name == channel:
            for d in c.destinations:
                if d.name == destination:
                    return target_key(d)
            names = ", ".join(d.name for d in c.destinations)
            raise Refused("unknown-destination", f"destination: channel {channel} delivers to {names}")
    raise Refused("unknown-destination", f"channel {channel} is not configured")


_IN_FLIGHT = (DeliveryStatus.pending, DeliveryStatus.waiting, DeliveryStatus.retrying)
_REDELIVERABLE = (MessageStatus.sent, MessageStatus.transformed, MessageStatus.dead)


def redeliver(
    store: Store, message_id: str, destination: str, *, target: str, for_sweeper: bool = False
) -> Redelivered:
    """Deliver a message's stored bundle again, on purpose, to ``destination`` (configured in its channel, with
    ``target`` its :func:`~engine.destinations.target_key`): its delivery there becomes pending with attempts
    restarting, or is made. A duplicate is never mapped: its original's bundle goes out (the delivery is
    the original's). Refused: unknown message, no stored bundle, or a delivery there still on its way."""
    m, d = messages.c, deliveries.c
    duplicate = ""
    with store._writing(store.work) as conn:
        row = conn.execute(select(m.id, m.status, m.channel, m.duplicate_of).where(m.id == message_id)).first()
        if row is not None and row.status == MessageStatus.duplicate and row.duplicate_of:
            duplicate = message_id
            row = conn.execute(
                select(m.id, m.status, m.channel, m.duplicate_of).where(m.id == row.duplicate_of)
            ).first()
        if row is None:
            raise Refused("not-found", "no such message" + (" (the duplicate's original is gone)" if duplicate else ""))
        if row.status not in _REDELIVERABLE:
            raise Refused("no-bundle", f"a message {row.status} has no bundle to deliver")
        has_bundle = conn.execute(
            select(contents.c.id)
            .where(contents.c.message_id == row.id, contents.c.kind == ContentKind.transformed)
            .limit(1)
        ).first()
        if has_bundle is None:
            raise Refused("no-bundle", "the message has no stored bundle")
        now = time.time()
        touched = 0.0 if for_sweeper else now
        key = and_(d.message_id == row.id, d.destination == destination)
        current = conn.execute(select(d.status).where(key)).scalar()
        if current in _IN_FLIGHT:
            raise Refused("conflict", f"its delivery to {destination} is still {current}")
        if current is None:
            conn.execute(
                insert(deliveries).values(
                    message_id=row.id,
                    destination=destination,
                    target=target,
                    status=DeliveryStatus.pending,
                    attempts=0,
                    next_attempt_at=now,
                    updated_at=touched,
                )
            )
        elif not conn.execute(
            update(deliveries)
            .where(key, d.status == current)
            .values(
                status=DeliveryStatus.pending,
                attempts=0,
                next_attempt_at=now,
                updated_at=touched,
                target=target,
                last_error=None,
                last_status_code=None,
            )
        ).rowcount:
            raise Refused("conflict", f"its delivery to {destination} changed meanwhile")
        conn.execute(
            update(messages)
            .where(m.id == row.id, m.status == MessageStatus.sent)
            .values(status=MessageStatus.transformed, updated_at=now)
        )
        return Redelivered(str(row.id), destination, str(row.channel), duplicate)


# -- what a mapping diff reads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiffInput:
    """A stored message as the mapping diff reads it: its raw content and the newest bundle made of it."""

    id: str
    channel: str
    status: str
    message_type: str
    kind: str
    charset: str
    raw: bytes
    bundle: bytes | None


def for_diff(store: Store, selection: Selection, *, limit: int) -> list[DiffInput]:
    """The newest ``limit`` messages of the selection that were mapped or refused by the mapping
    (:data:`DIFFABLE`), with raw content and stored bundle."""
    m = messages.c
    cond = selection.message_conditions()
    if selection.status is None:
        cond.append(m.status.in_(DIFFABLE))
    with store.work.connect() as conn:
        rows = conn.execute(
            select(m.id, m.channel, m.status, m.message_type, m.kind, m.charset)
            .where(*cond)
            .order_by(m.id.desc())
            .limit(limit)
        ).all()
        ids = [r.id for r in rows]
        data: dict[tuple[str, str], bytes] = {}
        for start in range(0, len(ids), BATCH):
            for mid, kind, blob, blob_codec in conn.execute(
                select(contents.c.message_id, contents.c.kind, contents.c.data, contents.c.codec)
                .where(
                    contents.c.message_id.in_(ids[start : start + BATCH]),
                    contents.c.kind.in_([ContentKind.raw, ContentKind.transformed]),
                    contents.c.destination == "",
                )
                .order_by(contents.c.id)
            ):
                data[(mid, kind)] = codec.decode(blob, blob_codec) or b""  # the newest wins
    return [
        DiffInput(
            r.id,
            r.channel,
            r.status,
            r.message_type,
            r.kind,
            r.charset,
            data.get((r.id, ContentKind.raw), b""),
            data.get((r.id, ContentKind.transformed)),
        )
        for r in rows
    ]
