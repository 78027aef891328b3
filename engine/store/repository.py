"""The store's verbs: everything the engine reads from or writes to the message store.

Every state change is a conditional UPDATE (``… WHERE status = expected``), so two workers racing on
the same message (a sweeper re-enqueue beside a live queue entry) cannot both advance it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from engine.errors import StoreUnavailable
from engine.store import codec, migrate, operations
from engine.store.database import make_engines
from engine.store.schema import (
    OPEN_DELIVERY_STATUSES,
    ContentKind,
    DeliveryStatus,
    MessageStatus,
    attempts,
    contents,
    deliveries,
    feed_cursors,
    install,
    messages,
)
from engine.store.sql import Statements

#: Earlier messages with these statuses do not make a resend a duplicate.
_NOT_ORIGINALS = frozenset({MessageStatus.error, MessageStatus.duplicate})


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states that have absorbed ``key`` XOR the HMAC inner and outer pads (RFC 2104)."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


def new_id() -> str:
    """A 32-hex-digit id that sorts by creation time (µs) and is unique without coordination."""
    return f"{time.time_ns() // 1000:014x}{os.urandom(9).hex()}"


@dataclass(slots=True)
class NewMessage:
    """An inbound message about to be committed."""

    channel: str
    raw: bytes
    peer: str = ""
    #: input kind (hl7v2, dicom, json, fhir) and the text encoding the source resolved ('' = binary)
    kind: str = "hl7v2"
    charset: str = ""
    message_type: str = ""
    sender: str = ""
    control_id: str = ""
    #: the source kind's duplicate key (HL7: sender + MSH-10; DICOM: SOP Instance UID); '' = never a duplicate
    dedupe: str = ""
    status: MessageStatus = MessageStatus.received
    error: str | None = None
    dedupe_window_s: float | None = None
    #: Ordering lane ('' = unordered): deliveries of one lane to one target go out in message-id order.
    lane: str = ""
    #: False when the caller processes the message itself (replies after transform).
    enqueue: bool = True
    #: The group it belongs to ('' = none; a keyed hash, e.g. of a DICOM study): see :meth:`Store.group`.
    group: str = ""
    id: str = field(default_factory=new_id)

    @property
    def dedupe_key(self) -> str:
        """Channel and the source's duplicate key (empty: never a duplicate, e.g. an unreadable message)."""
        if not self.dedupe or self.status not in (MessageStatus.received, MessageStatus.held):
            return ""
        return f"{self.channel}\x1f{self.dedupe}"[:512]


class Accepted(NamedTuple):
    """What the commit of one inbound message produced. A named tuple, not a frozen dataclass: one is made
    per message, and a frozen dataclass's ``__init__`` costs 6.5k instructions to its 3.8k (callgrind)."""

    id: str
    status: MessageStatus
    duplicate_of: str | None = None


@dataclass(slots=True, frozen=True)
class ProcessResult:
    """What processing made of one message (see :meth:`Store.finish_processing`)."""

    message_id: str
    status: MessageStatus  # transformed, error or filtered
    bundle: bytes | None = None
    destinations: tuple[str, ...] = ()
    error: str | None = None
    channel: str = ""
    #: The target (hash of the system written to) of each destination, in the same order ('' = none).
    targets: tuple[str, ...] = ()
    #: When the message's event happened at the source (epoch s), for the stale-write guard.
    source_time: float | None = None
    lane: str = ""
    #: What it is searched by: (kind, Store.pseudonym(value)) pairs, written with the outcome (message_keys).
    keys: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, frozen=True, order=True)
class Stored:
    """A stored message as the process step reads it (ordered by id: arrival)."""

    id: str
    status: str
    channel: str
    raw: bytes | None
    lane: str
    kind: str
    charset: str


@dataclass(slots=True, frozen=True)
class Written:
    """Resources a successful delivery wrote to a target, and the source time of what it wrote."""

    target: str
    resources: tuple[str, ...]
    source_time: float


@dataclass(slots=True, frozen=True)
class Loaded:
    """A delivery as the deliver step reads it."""

    status: str
    attempts: int
    channel: str
    bundle: bytes | None
    lane: str
    source_time: float | None
    target: str


@dataclass(slots=True, frozen=True)
class AttemptRecord:
    """One delivery attempt, as the worker saw it."""

    number: int
    started_at: float
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    sent: bytes | None
    response: bytes | None


class Store:
    """The message store. Thread-safe; one per process."""

    def __init__(self, url: str, *, migrate_schema: bool = True, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.ingest, self.work = make_engines(url, sqlite_synchronous=sqlite_synchronous)
        if migrate_schema:
            migrate.upgrade(self.ingest)
        self.sql = Statements(self.ingest.dialect.paramstyle)
        # The hot paths' one-statement reads on PostgreSQL without BEGIN and ROLLBACK: two round trips fewer
        # each (SQLite begins no transaction for a SELECT anyway)
        self.reads = (
            self.work.execution_options(isolation_level="AUTOCOMMIT")
            if self.work.dialect.name == "postgresql"
            else self.work
        )
        # SQLite has one writer at a time, and a thread that finds the database locked sleeps in SQLite's
        # busy handler for milliseconds. Writers of this process take turns on a lock instead (measured:
        # 2x end-to-end throughput with 8 worker threads).
        self._write_lock = threading.Lock() if self.ingest.dialect.name == "sqlite" else contextlib.nullcontext()
        self._local = threading.local()
        self._key = self._install_key() if migrate_schema else None
        self._pads: tuple[Any, Any] | None = None  # the key's HMAC pads, hashed once (see pseudonym)

    def _install_key(self) -> bytes:
        """The installation's secret key, made at the first start (every process then reads the same one)."""
        query = select(install.c.value).where(install.c.name == "pseudonym_key")
        for _ in range(3):
            with self.work.connect() as conn:
                key = conn.execute(query).scalar()
            if key is not None:
                return bytes(key)
            try:
                with self._writing(self.work) as conn:
                    conn.execute(insert(install).values(name="pseudonym_key", value=os.urandom(32)))
            except IntegrityError:
                pass  # another process made it first: read theirs
        raise StoreUnavailable("message store: the installation key cannot be read")

    def pseudonym(self, value: str) -> str:
        """A keyed hash of ``value`` (24 hex digits) for the non-content columns: the same value gives the
        same pseudonym in every process of this installation; nobody without the key can test a guess."""
        pads = self._pads
        if pads is None:
            if self._key is None:
                self._key = self._install_key()
            pads = self._pads = _hmac_pads(self._key)
        # HMAC-SHA256 (RFC 2104) from the key's inner and outer pads hashed once: the digest hmac.new gives,
        # for half the instructions (a lane per accepted message; callgrind: 26k -> 13k)
        inner = pads[0].copy()
        inner.update(value.encode())
        outer = pads[1].copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:24]

    @contextlib.contextmanager
    def _writing(self, engine: Engine) -> Iterator[Connection]:
        with self._write_lock, engine.begin() as conn:
            yield conn

    def close(self) -> None:
        conn = getattr(self._local, "ingest", None)
        if conn is not None:
            self._local.ingest = None
            with contextlib.suppress(Exception):
                conn.close()
        self.ingest.dispose()
        self.work.dispose()

    # -- ingest ---------------------------------------------------------------------------------------

    def insert_messages(self, batch: Sequence[NewMessage]) -> list[Accepted]:
        """Commit a batch of inbound messages in one transaction (group commit).

        Duplicate MSH-10s from the same sender within a message's window are committed with status
        ``duplicate``. Raises :class:`StoreUnavailable` when the commit fails: nothing may be ACKed.
        This is the hot path of every listener, so it speaks plain SQL to the driver (measured: the
        SQLAlchemy Core constructs cost more than the commit itself).
        """
        now = time.time()
        # before the lock, at zstd's fast level: the writer's turn stays short (engine/store/codec.py)
        packed = [codec.encode(m.raw, fast=True) for m in batch]
        with self._write_lock:
            conn = self._ingest_connection()
            try:
                cur = conn.cursor()
                dupes = self._find_duplicates(cur, batch, now)
                msg_rows = []
                content_rows = []
                out: list[Accepted] = []
                for m, (data, data_codec) in zip(batch, packed, strict=True):
                    dup = dupes.get(m.id)
                    status = MessageStatus.duplicate if dup else m.status
                    msg_rows.append(
                        (m.id, m.channel, str(status), now, now, m.peer[:100], m.message_type[:40], m.sender[:200],
                         m.control_id[:200], m.dedupe_key, dup, m.error, len(m.raw), m.lane, m.kind, m.charset,
                         m.group)
                    )  # fmt: skip
                    content_rows.append((m.id, ContentKind.raw.value, "", data, data_codec, now))
                    out.append(Accepted(m.id, status, dup))
                cur.executemany(self.sql.insert_message, msg_rows)
                cur.executemany(self.sql.insert_content, content_rows)
                conn.commit()
                cur.close()
            except Exception as exc:  # any driver error: drop the connection, refuse the batch
                self._drop_ingest_connection(conn)
                raise StoreUnavailable(f"message store commit failed ({exc.__class__.__name__})") from exc
            return out

    def _ingest_connection(self) -> Any:
        """The calling thread's own driver connection for ingest (the group-commit writer keeps one:
        measured, a pool checkout per batch, with PostgreSQL's pre-ping, cost more than the inserts)."""
        conn = getattr(self._local, "ingest", None)
        if conn is None:
            conn = self._local.ingest = self.ingest.raw_connection()
        return conn

    def _drop_ingest_connection(self, conn: Any) -> None:
        self._local.ingest = None
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.invalidate()

    def _find_duplicates(self, cur: Any, batch: Sequence[NewMessage], now: float) -> dict[str, str]:
        """Map new message id → id of the earlier message it duplicates (also within the batch)."""
        candidates = [m for m in batch if m.dedupe_window_s is not None and m.dedupe_key]
        if not candidates:
            return {}
        keys = list({m.dedupe_key for m in candidates})
        earlier: dict[str, list[tuple[float, str]]] = {}
        cur.execute(self.sql.find_duplicates(len(keys)), tuple(keys))
        for key, mid, received_at, status in cur.fetchall():
            if status not in _NOT_ORIGINALS:
                earlier.setdefault(key, []).append((received_at, mid))
        found: dict[str, str] = {}
        first_in_batch: dict[str, str] = {}
        for m in candidates:
            since = now - (m.dedupe_window_s or 0)
            original = min((r for r in earlier.get(m.dedupe_key, ()) if r[0] >= since), default=None)
            if original is not None:
                found[m.id] = original[1]
            elif m.dedupe_key in first_in_batch:
                found[m.id] = first_in_batch[m.dedupe_key]
            else:
                first_in_batch[m.dedupe_key] = m.id
        return found

    # -- the event feed's position (engine/events_feed.py) -------------------------------------------

    def feed_cursor(self, channel: str) -> str | None:
        """How far a channel's event feed has delivered (its own JSON), None before its first batch."""
        with self.work.connect() as conn:
            return conn.execute(select(feed_cursors.c.cursor).where(feed_cursors.c.channel == channel)).scalar()

    def save_feed_cursor(self, channel: str, cursor: str) -> None:
        """Record the feed's new position, after its receiver took the batch."""
        now = time.time()
        with self._writing(self.work) as conn:
            row = feed_cursors.c.channel == channel
            if not conn.execute(update(feed_cursors).where(row).values(cursor=cursor, updated_at=now)).rowcount:
                conn.execute(insert(feed_cursors).values(channel=channel, cursor=cursor, updated_at=now))

    # -- reads ----------------------------------------------------------------------------------------

    def message(self, message_id: str) -> Row[Any] | None:
        with self.work.connect() as conn:
            return conn.execute(select(messages).where(messages.c.id == message_id)).first()

    def content(self, message_id: str, kind: ContentKind, destination: str = "") -> bytes | None:
        """The newest content of a kind for a message (and destination, for sent/response)."""
        with self.work.connect() as conn:
            row = conn.execute(
                select(contents.c.data, contents.c.codec)
                .where(
                    contents.c.message_id == message_id,
                    contents.c.kind == kind,
                    contents.c.destination == destination,
                )
                .order_by(contents.c.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            ref = codec.reference_of(row[0], row[1])
            reference = None
            if ref is not None:  # compressed against the message's bundle (what an attempt sent, its response)
                found = conn.execute(select(contents.c.data, contents.c.codec).where(contents.c.id == ref)).first()
                reference = codec.decode(found[0], found[1]) if found is not None else None
        return codec.decode(row[0], row[1], reference)

    def delivery(self, message_id: str, destination: str) -> Row[Any] | None:
        with self.work.connect() as conn:
            return conn.execute(
                select(deliveries).where(deliveries.c.message_id == message_id, deliveries.c.destination == destination)
            ).first()

    def deliveries_of(self, message_id: str) -> list[Row[Any]]:
        with self.work.connect() as conn:
            return list(conn.execute(select(deliveries).where(deliveries.c.message_id == message_id)))

    def attempts_of(self, message_id: str) -> list[Row[Any]]:
        with self.work.connect() as conn:
            return list(
                conn.execute(select(attempts).where(attempts.c.message_id == message_id).order_by(attempts.c.id))
            )

    def list_messages(
        self, *, channel: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Row[Any]]:
        q = select(messages).order_by(messages.c.id.desc()).limit(limit)
        if channel:
            q = q.where(messages.c.channel == channel)
        if status:
            q = q.where(messages.c.status == status)
        with self.work.connect() as conn:
            return list(conn.execute(q))

    def status_counts(self) -> dict[tuple[str, str], int]:
        """(channel, status) → number of messages."""
        with self.work.connect() as conn:
            rows = conn.execute(
                select(messages.c.channel, messages.c.status, func.count()).group_by(
                    messages.c.channel, messages.c.status
                )
            )
            return {(c, s): n for c, s, n in rows}

    def backlog(self) -> int:
        """Messages not yet finished (received or transformed): cheap, by the status index."""
        with self.work.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(messages)
                .where(messages.c.status.in_([MessageStatus.received, MessageStatus.transformed]))
            ).scalar_one()

    def backlog_by_channel(self) -> dict[str, int]:
        """Each channel's messages not finished (received, transformed, or held for their group): one query
        by the status index, whose cost follows the backlog (bounded by back-pressure), not the table."""
        with self.work.connect() as conn:
            rows = conn.execute(
                select(messages.c.channel, func.count())
                .where(messages.c.status.in_([MessageStatus.received, MessageStatus.transformed, MessageStatus.held]))
                .group_by(messages.c.channel)
            )
            return {channel: n for channel, n in rows}

    def dead_letters(self, *, channel: str | None = None, limit: int = 100) -> list[Row[Any]]:
        """Dead deliveries in arrival order (filters and paging: ``operations.dead_letters``)."""
        return operations.dead_letters(self, operations.Selection(channel=channel), limit=limit)

    # -- processing -----------------------------------------------------------------------------------

    def load_for_processing(self, message_ids: Sequence[str]) -> list[Stored]:
        """Each message that exists, in id (arrival) order."""
        if not message_ids:
            return []
        with self.reads.connect() as conn:
            rows = conn.exec_driver_sql(self.sql.load_for_processing(len(message_ids)), tuple(message_ids)).all()
        return sorted(Stored(i, s, ch, codec.decode(data, c), lane, k, cs) for i, s, ch, data, c, lane, k, cs in rows)

    def finish_processing(self, results: Sequence[ProcessResult]) -> set[str]:
        """Move a batch of ``received`` messages on, in one transaction: store each bundle and create its
        pending deliveries, or record why it stopped (error, filtered); and its search keys.

        Returns the ids that were still ``received`` (those another worker finished first are skipped).
        """
        now = time.time()
        sql = self.sql
        # compressed before the write lock (a bundle: ~160k instructions, bench/codec_instructions.py)
        packed = {r.message_id: codec.encode(r.bundle) for r in results if r.bundle is not None}
        claims = [
            (r.status.value, r.error, now, r.source_time, r.message_id, MessageStatus.received.value) for r in results
        ]
        with self._writing(self.work) as conn:
            claimed = self._claim(conn, claims)
            won = [r for r in results if r.message_id in claimed]
            content = [
                (r.message_id, ContentKind.transformed.value, "", *packed[r.message_id], now)
                for r in won
                if r.bundle is not None
            ] + [
                (r.message_id, ContentKind.error.value, "", *codec.encode(r.error.encode()), now)
                for r in won
                if r.status == MessageStatus.error and r.error
            ]
            if content:
                conn.exec_driver_sql(sql.insert_content, content)
            new_deliveries = [
                (r.message_id, d, t, DeliveryStatus.pending.value, now, now)
                for r in won
                for d, t in zip(r.destinations, r.targets or ("",) * len(r.destinations), strict=True)
            ]
            if new_deliveries:
                conn.exec_driver_sql(sql.insert_delivery, new_deliveries)
            search_keys = [(r.message_id, kind, value) for r in won for kind, value in r.keys]
            if search_keys:
                conn.exec_driver_sql(sql.insert_key, search_keys)
        return {r.message_id for r in won}

    def _claim(self, conn: Connection, claims: Sequence[tuple[Any, ...]]) -> set[str]:
        """The ids of ``claims`` (finish_message parameters) that were still ``received`` and are now moved on.
        PostgreSQL: one pipelined executemany with RETURNING (one round trip for the batch, not one each)."""
        if self.work.dialect.name != "postgresql":
            return {c[4] for c in claims if conn.exec_driver_sql(self.sql.finish_message, c).rowcount == 1}
        cur: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(self.sql.finish_message + " RETURNING id", claims, returning=True)
            won: set[str] = set()
            while True:
                won.update(row[0] for row in cur.fetchall())
                if not cur.nextset():
                    return won
        finally:
            cur.close()

    def mark_transformed(self, message_id: str, bundle: bytes, destinations: Iterable[str]) -> bool:
        """received → transformed with pending deliveries. False when another worker got there first."""
        result = ProcessResult(message_id, MessageStatus.transformed, bundle=bundle, destinations=tuple(destinations))
        return bool(self.finish_processing([result]))

    def mark_error(self, message_id: str, error: str, *, from_status: MessageStatus = MessageStatus.received) -> bool:
        """Record why a message cannot be processed; its raw content stays for inspection and replay."""
        now = time.time()
        with self._writing(self.work) as conn:
            res = conn.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == from_status)
                .values(status=MessageStatus.error, error=error, updated_at=now)
            )
            if res.rowcount == 1:
                conn.execute(
                    insert(contents),
                    [
                        {
                            "message_id": message_id,
                            "kind": ContentKind.error,
                            "destination": "",
                            "data": (stored := codec.encode(error.encode()))[0],
                            "codec": stored[1],
                            "created_at": now,
                        }
                    ],
                )
            return res.rowcount == 1

    def load_for_delivery(self, message_id: str, destination: str) -> Loaded | None:
        """The delivery's status and attempts, its message's channel, bundle, lane and source time."""
        with self.reads.connect() as conn:
            row = conn.exec_driver_sql(self.sql.load_for_delivery, (message_id, destination)).first()
        if row is None:
            return None
        status, attempts_so_far, channel, data, data_codec, lane, source_time, target = row
        return Loaded(status, attempts_so_far, channel, codec.decode(data, data_codec), lane, source_time, target)

    # -- ordering -------------------------------------------------------------------------------------

    def blocked(self, message_id: str, lane: str, target: str, *, hold_dead: bool) -> bool:
        """Whether an earlier message of ``lane`` is unfinished for ``target`` (or still unprocessed).

        ``hold_dead``: a dead delivery blocks its successors too, until replayed or discarded.
        """
        sql = self.sql.gate_hold_dead if hold_dead else self.sql.gate_skip_dead
        with self.reads.connect() as conn:
            return conn.exec_driver_sql(sql, (target, lane, message_id)).first() is not None

    def hold(self, message_id: str, destination: str) -> bool:
        """pending/retrying → waiting (behind an earlier message of its lane). False if it moved on."""
        with self._writing(self.work) as conn:
            return conn.exec_driver_sql(self.sql.hold_delivery, (time.time(), message_id, destination)).rowcount == 1

    def release(self, message_id: str, destination: str) -> bool:
        """waiting → pending. True for exactly one caller, who must then deliver it."""
        with self._writing(self.work) as conn:
            res = conn.exec_driver_sql(self.sql.release_delivery, (time.time(), message_id, destination))
            return res.rowcount == 1

    def wake_after(self, lane: str, message_id: str, target: str | None = None) -> list[tuple[str, str]]:
        """Release the first waiting delivery after ``message_id`` in ``lane`` (for ``target``, or for every
        target); returns the (message id, destination) pairs the caller must enqueue."""
        with self.reads.connect() as conn:
            rows = conn.exec_driver_sql(self.sql.waiting_after, (lane, message_id)).all()
        first: dict[str, tuple[str, str]] = {}
        for mid, dest, tgt in rows:
            if (target is None or tgt == target) and tgt not in first:
                first[tgt] = (mid, dest)
        return [pair for pair in first.values() if self.release(*pair)]

    def lanes_waiting(self, lanes: Iterable[str]) -> set[str]:
        """Which of ``lanes`` hold a delivery waiting behind an earlier message (one query)."""
        todo = sorted({lane for lane in lanes if lane})
        if not todo:
            return set()
        with self.reads.connect() as conn:
            return {r[0] for r in conn.exec_driver_sql(self.sql.lanes_waiting(len(todo)), tuple(todo))}

    def newer_writes(self, target: str, resources: Sequence[str], source_time: float) -> set[str]:
        """The resources ``target`` holds from us with a newer source time than ``source_time``."""
        if not resources:
            return set()
        keys = {self.pseudonym(r): r for r in resources}
        with self.reads.connect() as conn:
            rows = conn.exec_driver_sql(self.sql.newer_writes(len(keys)), (target, source_time, *keys)).all()
        return {keys[r[0]] for r in rows}

    def held_behind(self, message_id: str) -> int:
        """Deliveries waiting behind ``message_id`` in its lane (what a dead letter holds up)."""
        lane = select(messages.c.lane).where(messages.c.id == message_id).scalar_subquery()
        with self.work.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
                .where(
                    deliveries.c.status == DeliveryStatus.waiting,
                    messages.c.lane != "",
                    messages.c.lane == lane,
                    messages.c.id > message_id,
                )
            ).scalar_one()

    def held(self) -> int:
        """Deliveries waiting behind an earlier message of their lane."""
        with self.work.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(deliveries).where(deliveries.c.status == DeliveryStatus.waiting)
            ).scalar_one()

    def record_attempt(
        self,
        message_id: str,
        destination: str,
        attempt: AttemptRecord,
        *,
        status: DeliveryStatus,
        next_attempt_at: float,
        written: Written | None = None,
    ) -> None:
        """Record one attempt and move the delivery (and, when all are final, the message) on."""
        self.record_attempts(
            [(message_id, destination, attempt, status, next_attempt_at)],
            [(message_id, written)] if written is not None else (),
        )

    def record_attempts(
        self,
        batch: Sequence[tuple[str, str, AttemptRecord, DeliveryStatus, float]],
        written: Sequence[tuple[str, Written]] = (),
    ) -> None:
        """Record several (message id, destination, attempt, new status, next attempt at) in one transaction,
        and what successful ones wrote (message id, Written) for the stale-write guard."""
        now = time.time()
        # what was sent (when not the stored bundle) and the reply, compressed before the write lock, against
        # the message's bundle when they are large enough to repeat it (a split FHIR transaction and its
        # transaction-response: engine/store/codec.py)
        large = [m for m, _, a, _, _ in batch if max(len(a.sent or b""), len(a.response or b"")) >= 512]
        bundles = self._bundles(large)
        packed = [
            [
                (k, *(codec.encode_against(d, *bundles[m]) if m in bundles else codec.encode(d)))
                for k, d in ((ContentKind.sent, a.sent), (ContentKind.response, a.response))
                if d
            ]
            for m, _, a, _, _ in batch
        ]
        # one executemany per statement for the batch (PostgreSQL pipelines each: one round trip, not one per
        # message and statement); every delivery is moved on before any message is settled
        sql = self.sql
        attempts: list[tuple[Any, ...]] = []
        stored: list[tuple[Any, ...]] = []
        moved: list[tuple[Any, ...]] = []
        settled: list[tuple[Any, ...]] = []
        for (message_id, destination, a, status, next_attempt_at), kinds in zip(batch, packed, strict=True):
            attempts.append(
                (message_id, destination, a.number, a.started_at, a.duration_ms, str(a.outcome), a.status_code, a.error)
            )
            stored.extend((message_id, k.value, destination, d, c, now) for k, d, c in kinds)
            moved.append((str(status), a.number, next_attempt_at, now, a.status_code, a.error, message_id, destination))
            if status == DeliveryStatus.sent:
                settled.append((now, message_id, message_id))
        writes = [(w.target, self.pseudonym(r), w.source_time, mid, now) for mid, w in written for r in w.resources]
        with self._writing(self.work) as conn:
            for statement, rows in (
                (sql.insert_attempt, attempts),
                (sql.insert_content, stored),
                (sql.update_delivery, moved),
                (sql.settle_message, settled),
                (sql.upsert_write, writes),
            ):
                if rows:
                    conn.exec_driver_sql(statement, rows)

    def _bundles(self, message_ids: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """The newest stored bundle of each message: (content, its contents id)."""
        if not message_ids:
            return {}
        c = contents.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(c.message_id, c.id, c.data, c.codec)
                .where(c.message_id.in_(set(message_ids)), c.kind == ContentKind.transformed)
                .order_by(c.id)
            ).all()
        return {m: (codec.decode(data, kind) or b"", i) for m, i, data, kind in rows}  # the newest last: it wins

    def mark_dead(self, message_id: str, destination: str, error: str) -> None:
        """The dead-letter choke point: a delivery gives up and the message is marked dead."""
        now = time.time()
        with self._writing(self.work) as conn:
            conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.message_id == message_id,
                    deliveries.c.destination == destination,
                    deliveries.c.status != DeliveryStatus.sent,
                )
                .values(status=DeliveryStatus.dead, last_error=error, updated_at=now)
            )
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == MessageStatus.transformed)
                .values(status=MessageStatus.dead, updated_at=now)
            )

    # -- groups (e.g. the instances of a DICOM study) --------------------------------------------------

    def held_groups(self, channel: str) -> list[str]:
        """The groups of ``channel`` that have members waiting to be assembled (status ``held``)."""
        with self.work.connect() as conn:
            return list(
                conn.execute(
                    select(messages.c.group_key)
                    .where(
                        messages.c.channel == channel,
                        messages.c.group_key != "",
                        messages.c.status == MessageStatus.held,
                    )
                    .distinct()
                ).scalars()
            )

    def group_members(self, channel: str, group: str) -> list[tuple[str, str, bytes]]:
        """(id, status, raw content) of every member of a group, held or already grouped, in arrival order."""
        with self.work.connect() as conn:
            rows = conn.execute(
                select(messages.c.id, messages.c.status, contents.c.data, contents.c.codec)
                .join(contents, and_(contents.c.message_id == messages.c.id, contents.c.kind == ContentKind.raw))
                .where(
                    messages.c.channel == channel,
                    messages.c.group_key == group,
                    messages.c.status.in_([MessageStatus.held, MessageStatus.grouped]),
                )
                .order_by(messages.c.id)
            ).all()
        return [(r[0], r[1], codec.decode(r[2], r[3]) or b"") for r in rows]

    def mark_grouped(self, ids: Sequence[str]) -> int:
        """held → grouped, once the group's own message holding them is committed. Returns how many moved."""
        if not ids:
            return 0
        now = time.time()
        moved = 0
        with self._writing(self.work) as conn:
            for start in range(0, len(ids), 500):
                moved += conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(ids[start : start + 500]), messages.c.status == MessageStatus.held)
                    .values(status=MessageStatus.grouped, updated_at=now)
                ).rowcount
        return moved

    # -- recovery and operator actions ------------------------------------------------------------------

    def unfinished(self, *, older_than: float, limit: int = 10_000) -> tuple[list[str], list[tuple[str, str]]]:
        """Work the store says is not done and nobody has touched since ``older_than`` (epoch seconds).

        Returns message ids still ``received`` and (message id, destination) pairs pending, retrying or
        waiting whose next attempt is due (a waiting one re-checks its lane when delivered: a lost wake-up
        costs at most ``grace_s``).
        """
        with self.work.connect() as conn:
            received = list(
                conn.execute(
                    select(messages.c.id)
                    .where(messages.c.status == MessageStatus.received, messages.c.updated_at <= older_than)
                    .order_by(messages.c.id)
                    .limit(limit)
                ).scalars()
            )
            due = [
                (m, d)
                for m, d in conn.execute(
                    select(deliveries.c.message_id, deliveries.c.destination)
                    .where(
                        deliveries.c.status.in_(OPEN_DELIVERY_STATUSES),
                        deliveries.c.next_attempt_at <= older_than,
                        deliveries.c.updated_at <= older_than,
                    )
                    .order_by(deliveries.c.message_id)
                    .limit(limit)
                )
            ]
        return received, due

    def touch_deliveries(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Note that deliveries were (re-)enqueued now, so the sweeper leaves them alone for a grace period."""
        if not pairs:
            return
        now = time.time()
        with self._writing(self.work) as conn:
            for m, d in pairs:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.message_id == m, deliveries.c.destination == d)
                    .values(updated_at=now)
                )

    def touch_messages(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._writing(self.work) as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids), messages.c.status == MessageStatus.received)
                .values(updated_at=time.time())
            )

    def replay_dead(
        self,
        *,
        message_id: str | None = None,
        destination: str | None = None,
        channel: str | None = None,
        for_sweeper: bool = False,
    ) -> list[tuple[str, str]]:
        """Dead deliveries → pending again; returns what must be enqueued (``operations.replay_dead``)."""
        selection = operations.Selection(ids=[message_id] if message_id else [], destination=destination,
                                         channel=channel)  # fmt: skip
        return [p for batch in operations.replay_dead(self, selection, for_sweeper=for_sweeper) for p in batch]

    def discard(self, message_id: str, destination: str, reason: str) -> bool:
        """An operator gives up on a dead delivery (``operations.discard_dead``)."""
        selection = operations.Selection(ids=[message_id], destination=destination)
        return any(operations.discard_dead(self, selection, reason))

    def reprocess(self, message_id: str, *, for_sweeper: bool = False) -> bool:
        """Run a message in error or dead again from raw (``operations.reprocess``)."""
        selection = operations.Selection(ids=[message_id])
        return any(operations.reprocess(self, selection, for_sweeper=for_sweeper))
