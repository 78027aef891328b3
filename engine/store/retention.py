"""Retention: what the store keeps and for how long, and the pruner that enforces it.

Per channel (``retention:`` in the channel file, else the engine's ``retention:``):

- ``content_days``: a finished message's content (raw message, bundle, what each attempt sent and got back,
  the error text) is removed that many days after it was received; its row, deliveries and attempts stay.
- ``metadata_days``: the message itself goes with everything that hangs off it (deliveries, attempts,
  search keys, content).

Never pruned, whatever its age: a message still ``received``, ``transformed`` or ``held`` (unfinished), or
``dead`` (a dead letter waits for an operator); they become prunable once finished. The instances of a DICOM
study (``grouped``) lose their content like any other message, so an instance arriving after that is
assembled into a study message without them. A channel no longer
configured is pruned by the engine's default. The stale-write guard's ``writes`` rows go once older than
the longest ``metadata_days`` of any channel (never while one keeps metadata for ever).

:class:`Pruner` works in small batches: the candidates of a batch are read outside any write lock, then
one short transaction deletes them (its status re-checked there, so a message reprocessed meanwhile is
kept), then it pauses, so the store's write lock is free for ingest between batches. ``interlink run``
prunes every ``interval_s`` in a thread (:meth:`Pruner.start`); ``interlink prune [--dry-run]`` runs one
pass and prints the counts.

Content already pruned is not re-read on every pass: each channel's content scan starts where the last
complete one ended (in memory), and starts from the oldest message again every ``rescan_s`` and at
start-up, to catch messages that finished since (e.g. a dead letter replayed and sent).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field, model_validator
from sqlalchemy import bindparam, delete, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from engine.config.model import Model
from engine.store.schema import MessageStatus, attempts, contents, deliveries, message_keys, messages, writes

if TYPE_CHECKING:
    from engine.config.channel import Channel
    from engine.store.repository import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0

#: Statuses a message may be pruned in: finished, and not a dead letter.
PRUNABLE = tuple(
    str(s)
    for s in (
        MessageStatus.sent,
        MessageStatus.filtered,
        MessageStatus.error,
        MessageStatus.duplicate,
        MessageStatus.grouped,
    )
)


def _check_order(content_days: float | None, metadata_days: float | None) -> None:
    if content_days is not None and metadata_days is not None and metadata_days < content_days:
        raise ValueError("metadata_days must be at least content_days (a message's content goes with it)")


class RetentionOverride(Model):
    """A channel's own retention (any of the two; the rest stays the engine's ``retention:``)."""

    content_days: float | None = Field(
        None,
        ge=0,
        description="Days a finished message's content (raw, bundle, requests, responses) is kept after it "
        "was received; default: the engine's.",
    )
    metadata_days: float | None = Field(
        None,
        ge=0,
        description="Days a finished message is kept at all (row, deliveries, attempts); default: the engine's.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetentionOverride:
        _check_order(self.content_days, self.metadata_days)
        return self


class RetentionSettings(Model):
    """Retention of finished messages (never unfinished or dead-lettered ones) and the pruner's pace."""

    content_days: float | None = Field(
        None,
        ge=0,
        description="Days a finished message's content (raw, bundle, what each attempt sent and received) is "
        "kept after it was received; unset: for ever. A channel's `retention:` overrides it.",
    )
    metadata_days: float | None = Field(
        None,
        ge=0,
        description="Days a finished message is kept at all (its row, deliveries, attempts, search keys); "
        "unset: for ever. A channel's `retention:` overrides it.",
    )
    interval_s: float = Field(600, gt=0, description="How often `interlink run` prunes.")
    batch_size: int = Field(
        100, ge=1, le=10_000, description="Messages deleted per transaction (each holds the store's write lock)."
    )
    pause_ms: float = Field(
        10, ge=0, le=10_000, description="Pause between two batches, leaving the write lock to ingest and workers."
    )
    secure_delete: bool = Field(
        True,
        description="SQLite: overwrite what is deleted with zeros (the default of Debian's SQLite: the freed pages "
        "are written again); false: only where the page is written anyway (SQLite's FAST mode): about half the "
        "pages written per batch (measured 105 -> 55 per 100 messages), the rest of the bytes staying in free "
        "pages until reused.",
    )
    rescan_s: float = Field(
        86_400,
        gt=0,
        description="How often the content scan starts again from the oldest message (to prune messages that "
        "finished since, e.g. replayed dead letters).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetentionSettings:
        _check_order(self.content_days, self.metadata_days)
        return self


@dataclass(frozen=True, slots=True)
class Policy:
    """One channel's effective retention, in days (None: kept for ever)."""

    content_days: float | None
    metadata_days: float | None

    def cutoffs(self, now: float) -> tuple[float | None, float | None]:
        """(content cutoff, metadata cutoff): messages received before them lose content / go."""
        meta = None if self.metadata_days is None else now - self.metadata_days * DAY_S
        content = None if self.content_days is None else now - self.content_days * DAY_S
        if meta is not None and (content is None or meta > content):
            content = meta  # a message's content goes with it
        return content, meta


def policy(settings: RetentionSettings, override: RetentionOverride | None) -> Policy:
    """A channel's policy: its own values where given, else the engine's."""
    content = override.content_days if override and override.content_days is not None else settings.content_days
    meta = override.metadata_days if override and override.metadata_days is not None else settings.metadata_days
    return Policy(content, meta)


@dataclass(slots=True)
class Pruned:
    """What a pass removed (or, dry, would remove) in one channel."""

    messages: int = 0  # messages removed with everything they hold
    contents: int = 0  # content rows removed (of messages kept and of messages removed)


@dataclass(slots=True)
class Report:
    """One pass: per channel, and the stale-write guard rows that went."""

    channels: dict[str, Pruned] = field(default_factory=dict)
    writes: int = 0
    batches: int = 0
    #: the longest delete transaction (what ingest may have waited for the write lock), milliseconds
    longest_ms: float = 0.0
    locked_ms: float = 0.0  # all delete transactions together

    def total(self) -> Pruned:
        return Pruned(sum(p.messages for p in self.channels.values()), sum(p.contents for p in self.channels.values()))


_Keyset = tuple[float, str]


class Pruner:
    """Enforces retention on a store, in small batches; one per process."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        channels: Callable[[], Sequence[Channel]] = tuple,
    ) -> None:
        self.store = store
        self.settings = settings
        self._channels = channels
        self._floors: dict[str, float] = {}  # channel → received_at below which content is gone (this process)
        self._floors_since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- policy -----------------------------------------------------------------------------------------

    def policies(self) -> tuple[dict[str, Policy], Policy]:
        """Each configured channel's policy, and the default for channels that are not configured."""
        return (
            {c.name: policy(self.settings, c.retention) for c in self._channels()},
            policy(self.settings, None),
        )

    def _stored_channels(self) -> list[str]:
        with self.store.work.connect() as conn:
            return list(conn.execute(select(messages.c.channel).distinct()).scalars())

    # -- one pass ---------------------------------------------------------------------------------------

    def prune(self, *, dry_run: bool = False, channel: str | None = None, now: float | None = None) -> Report:
        """One pass over every channel in the store (or ``channel``); ``dry_run``: count, remove nothing."""
        now = time.time() if now is None else now
        if now - self._floors_since > self.settings.rescan_s:
            self._floors.clear()
            self._floors_since = now
        configured, default = self.policies()
        report = Report()
        names = [channel] if channel else sorted(set(self._stored_channels()) | set(configured))
        for name in names:
            content_cutoff, meta_cutoff = configured.get(name, default).cutoffs(now)
            done = report.channels[name] = Pruned()
            if dry_run:
                done.messages, done.contents = self._count(name, content_cutoff, meta_cutoff)
                continue
            if meta_cutoff is not None:
                for ids in self._batches(name, meta_cutoff, None, report):
                    n_msgs, n_contents = self._delete_messages(ids, report)
                    done.messages += n_msgs
                    done.contents += n_contents
            if content_cutoff is not None and (meta_cutoff is None or content_cutoff > meta_cutoff):
                start = self._floors.get(name)
                for ids in self._batches(name, content_cutoff, start, report, with_content=True):
                    done.contents += self._delete_contents(ids, report)
                if not self._stop.is_set():  # a complete scan: the next one starts here
                    self._floors[name] = content_cutoff
        if not channel:
            report.writes = self._prune_writes(configured, default, now, dry_run, report)
        return report

    def _count(self, name: str, content_cutoff: float | None, meta_cutoff: float | None) -> tuple[int, int]:
        m = messages.c
        n_msgs = n_contents = 0
        with self.store.work.connect() as conn:
            if meta_cutoff is not None:
                n_msgs = conn.execute(
                    select(func.count()).select_from(messages).where(*_prunable(name, meta_cutoff))
                ).scalar_one()
            if content_cutoff is not None:
                n_contents = conn.execute(
                    select(func.count())
                    .select_from(contents.join(messages, m.id == contents.c.message_id))
                    .where(*_prunable(name, content_cutoff))
                ).scalar_one()
        return n_msgs, n_contents

    def _batches(
        self, name: str, cutoff: float, start: float | None, report: Report, *, with_content: bool = False
    ) -> Iterator[list[str]]:
        """Ids of prunable messages received before ``cutoff`` (from ``start``), ``batch_size`` at a time, in
        (received_at, id) order; read outside the write lock, each batch pausing before the next."""
        m = messages.c
        after: _Keyset | None = (start, "") if start is not None else None
        pause = self.settings.pause_ms / 1000
        while not self._stop.is_set():
            cond: list[ColumnElement[bool]] = list(_prunable(name, cutoff))
            if after is not None:
                # the range (>=) for the index, the tie-break on id as a filter (an OR alone is not a range)
                cond += [m.received_at >= after[0], or_(m.received_at > after[0], m.id > after[1])]
            query = select(m.id, m.received_at).where(*cond).order_by(m.received_at, m.id)
            if with_content:
                query = query.where(select(contents.c.id).where(contents.c.message_id == m.id).exists())
            with self.store.work.connect() as conn:
                rows = conn.execute(query.limit(self.settings.batch_size)).all()
            if not rows:
                return
            after = (rows[-1][1], rows[-1][0])
            report.batches += 1
            yield [r[0] for r in rows]
            if len(rows) < self.settings.batch_size:
                return
            self._checkpoint()
            if pause:
                time.sleep(pause)

    def _checkpoint(self) -> None:
        """SQLite: copy what the batch wrote back into the database file now, outside the write lock.
        Otherwise the WAL the deletes grow is checkpointed by whichever commit crosses SQLite's threshold,
        often an ingest commit (synchronous=FULL), which then waits for it. PASSIVE never blocks a writer."""
        if self.store.work.dialect.name == "sqlite":
            with self.store.work.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @contextlib.contextmanager
    def _transaction(self, report: Report) -> Iterator[Connection]:
        """One delete transaction under the store's write lock, timed from the lock taken to the commit."""
        sqlite = self.store.work.dialect.name == "sqlite"
        with self.store._write_lock:
            t0 = time.perf_counter()
            with self.store.work.connect() as conn:
                fast = sqlite and not self.settings.secure_delete
                if fast:
                    conn.exec_driver_sql("PRAGMA secure_delete=FAST")
                    conn.commit()
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if fast:  # back to the build's default for the pool's next user
                        conn.exec_driver_sql("PRAGMA secure_delete=ON")
                        conn.commit()
            ms = (time.perf_counter() - t0) * 1000
        report.longest_ms = max(report.longest_ms, ms)
        report.locked_ms += ms

    def _delete_messages(self, ids: list[str], report: Report) -> tuple[int, int]:
        """One transaction: the messages still prunable among ``ids``, with what hangs off them (deleted
        here rather than left to the foreign keys' cascade, which SQLite applies only with its pragma on)."""
        with self._transaction(report) as conn:
            gone = _still_prunable(conn, ids)
            if not gone:
                return 0, 0
            n_contents = int(conn.execute(_DELETE_CONTENT, {"ids": gone}).rowcount)
            for statement in _DELETE_CHILDREN:
                conn.execute(statement, {"ids": gone})
            n_msgs = int(conn.execute(_DELETE_MESSAGES, {"ids": gone}).rowcount)
        return n_msgs, n_contents

    def _delete_contents(self, ids: list[str], report: Report) -> int:
        """One transaction: the content of the messages still prunable among ``ids``."""
        with self._transaction(report) as conn:
            still = _still_prunable(conn, ids)
            return int(conn.execute(_DELETE_CONTENT, {"ids": still}).rowcount) if still else 0

    def _prune_writes(
        self, configured: dict[str, Policy], default: Policy, now: float, dry_run: bool, report: Report
    ) -> int:
        """The stale-write guard's rows older than every channel's metadata retention."""
        days = [p.metadata_days for p in (*configured.values(), default)]
        if any(d is None for d in days):
            return 0
        cutoff = now - max(d for d in days if d is not None) * DAY_S
        w = writes.c
        old = w.updated_at < cutoff
        if dry_run:
            with self.store.work.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(writes).where(old)).scalar_one())
        removed = 0
        while not self._stop.is_set():
            with self.store.work.connect() as conn:
                keys = conn.execute(select(w.target, w.resource).where(old).limit(self.settings.batch_size)).all()
            if not keys:
                break
            report.batches += 1
            with self._transaction(report) as conn:
                for target in {k[0] for k in keys}:
                    resources = [k[1] for k in keys if k[0] == target]
                    removed += conn.execute(
                        delete(writes).where(w.target == target, w.resource.in_(resources), old)
                    ).rowcount
            if len(keys) < self.settings.batch_size:
                break
            time.sleep(self.settings.pause_ms / 1000)
        return removed

    # -- schedule ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Prune every ``interval_s`` in a background thread (the first pass one interval after start)."""
        self._thread = threading.Thread(target=self._loop, name="pruner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            try:
                report = self.prune()
            except Exception as exc:  # the store may be briefly unavailable: the next pass tries again
                log.error("retention pass failed (%s); will try again", type(exc).__name__)
                continue
            total = report.total()
            if total.messages or total.contents or report.writes:
                log.info(
                    "retention: %d message(s) and %d content row(s) removed, %d write record(s), in %d batch(es)",
                    total.messages,
                    total.contents,
                    report.writes,
                    report.batches,
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


# Built once, the id lists bound at execution (expanding): building an IN of 100 literals per statement cost
# SQLAlchemy ~2.5 ms per batch, inside the write lock (cProfile).
_STATUS_OF = select(messages.c.id, messages.c.status).where(messages.c.id.in_(bindparam("ids", expanding=True)))
_DELETE_CONTENT = delete(contents).where(contents.c.message_id.in_(bindparam("ids", expanding=True)))
_DELETE_CHILDREN = tuple(
    delete(t).where(t.c.message_id.in_(bindparam("ids", expanding=True))) for t in (attempts, deliveries, message_keys)
)
_DELETE_MESSAGES = delete(messages).where(messages.c.id.in_(bindparam("ids", expanding=True)))


def _still_prunable(conn: Connection, ids: list[str]) -> list[str]:
    """Those of ``ids`` still in a prunable status, read by primary key inside the delete's transaction. The
    status is compared here, not in SQL: with ``status IN (…)`` beside ``id IN (…)`` SQLite takes the status
    index and reads every sent message per batch (EXPLAIN QUERY PLAN; a 1M-message prune ran for over 19
    minutes that way)."""
    return [i for i, status in conn.execute(_STATUS_OF, {"ids": ids}) if status in PRUNABLE]


def _prunable(name: str, cutoff: float) -> tuple[ColumnElement[bool], ...]:
    m = messages.c
    return (m.channel == name, m.received_at < cutoff, m.status.in_(PRUNABLE))


def describe(report: Report, *, dry_run: bool) -> list[str]:
    """Lines for the CLI: per channel, counts only."""
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{name:<24} {verb} {p.messages} message(s), {p.contents} content row(s)" for name, p in report.channels.items()
    ]
    total = report.total()
    lines.append(f"{'total':<24} {verb} {total.messages} message(s), {total.contents} content row(s), "
                 f"{report.writes} stale-write record(s)")  # fmt: skip
    if not dry_run and report.batches:
        lines.append(f"{report.batches} batch(es), the longest transaction {report.longest_ms:.1f} ms")
    return lines
