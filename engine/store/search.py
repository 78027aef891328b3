"""Finding stored messages: search by metadata and search keys, newest first, a page at a time.

``search(store, MessageQuery(...)) -> Page`` returns metadata only (never content): the columns of
``messages`` a viewer may see, and each message's deliveries' statuses.

- **Keys.** ``mrn`` and ``accession`` are given plain and looked up by their keyed hash in
  ``message_keys`` (``Store.pseudonym``, the same hash the pipeline stored: see ``engine.transform.keys``);
  ``control_id`` (MSH-10), ``channel``, ``status``, ``sender`` (MSH-3|MSH-4) and ``message_type`` are
  columns (a type without ``^`` matches every trigger: ``ORU`` finds ``ORU^R01``).
- **Order and pages.** Newest first by ``(received_at, id)``; a page's ``next_cursor`` is the position of
  its last row, and the next page is what lies strictly after it (keyset, not offset): messages committed
  meanwhile are newer than the first page and never shift or repeat a later one. ``limit`` ≤ 200.
- **Indexes.** Each filter meets an index on PostgreSQL and SQLite: ``ix_message_keys_value`` (kind,
  value, message), ``ix_messages_control_id`` (control id, received at), ``ix_messages_channel_received``,
  ``ix_messages_received`` for a time range or none; the keyset bound is written as
  ``received_at <= t AND (received_at < t OR id < i)`` so its first half is an index bound on every planner.
  Measured on PostgreSQL with 1,000,000 messages: see ``bench/search.py`` and ``docs/benchmarks.md``.

``contents_of(store, id)`` is every content row of one message, decoded (``engine.store.codec``), for the
operator's detail view.
``resolve_id(store, given)`` turns a unique id prefix (≥ 8 hex digits) into the id, for the API and CLI.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, or_, select

from engine.store import codec
from engine.store.repository import Store
from engine.store.schema import KeyKind, contents, deliveries, message_keys, messages

#: The most rows one page may have.
MAX_LIMIT = 200
#: The shortest id prefix accepted (an id is 32 hex digits, the first 14 its creation time in µs).
MIN_PREFIX = 8
_ID_LENGTH = 32
_HEX = frozenset("0123456789abcdef")

#: The columns a search returns (metadata: never content, never the duplicate key).
COLUMNS = (
    messages.c.id,
    messages.c.channel,
    messages.c.status,
    messages.c.kind,
    messages.c.message_type,
    messages.c.received_at,
    messages.c.updated_at,
    messages.c.size_bytes,
    messages.c.sender,
    messages.c.control_id,
    messages.c.peer,
    messages.c.error,
    messages.c.duplicate_of,
)


class BadQuery(ValueError):
    """A query parameter that cannot be used; ``field`` names it (the message never holds its value)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownId(LookupError):
    """No stored message has this id (or id prefix)."""


class AmbiguousId(LookupError):
    """More than one stored message starts with this id prefix."""


@dataclass(slots=True, frozen=True)
class MessageQuery:
    """What to look for; every filter given must hold. Times are epoch seconds: ``since`` inclusive,
    ``until`` exclusive, on the time the message was received."""

    channel: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    message_type: str | None = None
    control_id: str | None = None
    mrn: str | None = None
    accession: str | None = None
    sender: str | None = None
    cursor: str | None = None
    limit: int = 50


@dataclass(slots=True, frozen=True)
class Page:
    """One page of results, newest first; ``next_cursor`` is None on the last page."""

    rows: list[Any]  # Rows with the COLUMNS
    next_cursor: str | None
    #: message id → [(destination, delivery status)], for the rows of this page
    deliveries: dict[str, list[tuple[str, str]]]


def encode_cursor(received_at: float, message_id: str) -> str:
    """The opaque position after a row (its receive time, exactly, and its id)."""
    return base64.urlsafe_b64encode(f"{received_at!r}:{message_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, message_id = text.split(":", 1)
        return float(at), message_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery("cursor", "not a cursor this server gave") from None


def _key_filter(store: Store, kind: KeyKind, value: str) -> Any:
    hashed = store.pseudonym(value.strip())
    keyed = select(message_keys.c.message_id).where(message_keys.c.kind == kind.value, message_keys.c.value == hashed)
    return messages.c.id.in_(keyed)


def conditions(store: Store, q: MessageQuery) -> list[Any]:
    """The WHERE clauses of a query (without its cursor)."""
    where: list[Any] = []
    if q.channel:
        where.append(messages.c.channel == q.channel)
    if q.status:
        where.append(messages.c.status == q.status)
    if q.since is not None:
        where.append(messages.c.received_at >= q.since)
    if q.until is not None:
        where.append(messages.c.received_at < q.until)
    if q.message_type:
        t = q.message_type
        where.append(
            messages.c.message_type == t
            if "^" in t
            else or_(messages.c.message_type == t, messages.c.message_type.startswith(t + "^"))
        )
    if q.control_id:
        where.append(messages.c.control_id == q.control_id)
    if q.sender:
        where.append(messages.c.sender == q.sender)
    if q.mrn:
        where.append(_key_filter(store, KeyKind.mrn, q.mrn))
    if q.accession:
        where.append(_key_filter(store, KeyKind.accession, q.accession))
    return where


def statement(store: Store, q: MessageQuery) -> Select[Any]:
    """The SELECT of one page of ``q`` (one row more than ``limit``: it tells whether a next page exists)."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise BadQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise BadQuery("until", "must be later than since")
    where = conditions(store, q)
    if q.cursor:
        at, last = decode_cursor(q.cursor)
        where.append(and_(messages.c.received_at <= at, or_(messages.c.received_at < at, messages.c.id < last)))
    return (
        select(*COLUMNS).where(*where).order_by(messages.c.received_at.desc(), messages.c.id.desc()).limit(q.limit + 1)
    )


def search(store: Store, q: MessageQuery) -> Page:
    """The page of messages matching ``q`` after its cursor (or the first page), newest first."""
    stmt = statement(store, q)
    with store.work.connect() as conn:
        rows = list(conn.execute(stmt))
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    cursor = encode_cursor(rows[-1].received_at, rows[-1].id) if more else None
    return Page(rows, cursor, delivery_statuses(store, [r.id for r in rows]))


def delivery_statuses(store: Store, ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """message id → [(destination, status)] in destination order, for ``ids`` (absent: no deliveries)."""
    out: dict[str, list[tuple[str, str]]] = {}
    if not ids:
        return out
    stmt = (
        select(deliveries.c.message_id, deliveries.c.destination, deliveries.c.status)
        .where(deliveries.c.message_id.in_(list(ids)))
        .order_by(deliveries.c.message_id, deliveries.c.destination)
    )
    with store.work.connect() as conn:
        for message_id, destination, status in conn.execute(stmt):
            out.setdefault(message_id, []).append((destination, status))
    return out


def resolve_id(store: Store, given: str) -> str:
    """The id of the one stored message whose id starts with ``given`` (a whole id, or ≥ 8 hex digits).

    Raises ``BadQuery`` for a prefix too short or not hex, ``UnknownId``, or ``AmbiguousId``.
    """
    prefix = given.strip().lower()
    if len(prefix) < MIN_PREFIX or len(prefix) > _ID_LENGTH or not set(prefix) <= _HEX:
        raise BadQuery("id", f"a message id is {_ID_LENGTH} hex digits; give at least {MIN_PREFIX}")
    if len(prefix) == _ID_LENGTH:
        where = messages.c.id == prefix
    else:  # a range on the primary key (LIKE 'p%' uses no index under PostgreSQL's default collations)
        where = messages.c.id.between(prefix.ljust(_ID_LENGTH, "0"), prefix.ljust(_ID_LENGTH, "f"))
    with store.work.connect() as conn:
        found = list(conn.execute(select(messages.c.id).where(where).limit(2)).scalars())
    if not found:
        raise UnknownId(given)
    if len(found) > 1:
        raise AmbiguousId(given)
    return str(found[0])


@dataclass(slots=True, frozen=True)
class Content:
    """One stored content of a message (``engine.store.schema.ContentKind``), decoded."""

    kind: str
    destination: str
    created_at: float
    data: bytes


def contents_of(store: Store, message_id: str) -> list[Content]:
    """Every content row of a message, oldest first (what a detail view shows: raw, bundle, each attempt's
    request and response, errors)."""
    stmt = (
        select(contents.c.id, contents.c.kind, contents.c.destination, contents.c.created_at, contents.c.data,
               contents.c.codec)
        .where(contents.c.message_id == message_id)
        .order_by(contents.c.id)
    )  # fmt: skip
    with store.work.connect() as conn:
        rows = conn.execute(stmt).all()
    decoded = codec.decode_rows([(r.id, r.data, r.codec) for r in rows])  # some are compressed against the bundle
    return [Content(r.kind, r.destination, r.created_at, decoded.get(r.id, b"")) for r in rows]
