"""The accept path every source uses: commit the raw bytes, enqueue, and only then answer.

``await ingest.accept(channel, payload, meta) -> Receipt`` is the only way into the store. It is
protocol-neutral: the source reads what its reply needs and says what it found in :class:`Meta` (input
kind, type, sender, its own duplicate key, the ordering lane, or an :class:`~engine.errors.InboundError`),
and turns the :class:`Receipt` (or :class:`~engine.errors.StoreUnavailable`) into its own reply.

:class:`GroupCommitter` runs one writer thread that commits whatever all connections delivered since its
last commit in a single transaction, then wakes each waiting sender. A commit per message caps a
PostgreSQL-backed listener near 1,200 msg/s; group commit removes that cap without weakening durability.

Given a :class:`~engine.backpressure.Backlog`, each commit is bounded by its channel's backlog: refused
before the commit (:class:`~engine.errors.Busy`, a ``StoreUnavailable``) when it is full, and the answer
delayed after the commit when it is over ``slow_at`` (``engine/backpressure.py``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from engine import ordering
from engine.backpressure import Backlog
from engine.errors import Busy, InboundError, StoreUnavailable
from engine.store import Accepted, MessageStatus, NewMessage, Store

if TYPE_CHECKING:
    from engine.config.channel import Channel

log = logging.getLogger(__name__)

_STOP = object()


class GroupCommitter:
    """A writer thread that commits inbound messages in batches.

    ``on_committed`` is called (in the writer thread, after the transaction commits and after the
    senders have been woken) with the ids of the committed messages that must be queued for processing.
    """

    def __init__(
        self,
        store: Store,
        on_committed: Callable[[list[str]], None],
        *,
        batch_max: int = 200,
        batch_wait_ms: float = 0,
    ) -> None:
        self._store = store
        self._on_committed = on_committed
        self._batch_max = batch_max
        self._wait_s = batch_wait_ms / 1000
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    async def commit(self, msg: NewMessage) -> Accepted:
        """Commit one message (batched with concurrent ones); raises StoreUnavailable on failure."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Accepted] = loop.create_future()
        self._q.put((msg, loop, fut))
        return await fut

    async def commit_many(self, msgs: list[NewMessage]) -> list[Accepted]:
        """Commit several messages (an HL7 batch) in the same transaction, all or none; StoreUnavailable on
        failure. They count as one entry against ``batch_max``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Accepted]] = loop.create_future()
        self._q.put((msgs, loop, fut))
        return await fut

    @property
    def store(self) -> Store:
        return self._store

    def commit_sync(self, msg: NewMessage) -> Accepted:
        """Blocking variant for non-async callers."""
        done = threading.Event()
        box: list[Accepted | BaseException] = []

        def resolve(result: Accepted | BaseException) -> None:
            box.append(result)
            done.set()

        self._q.put((msg, None, resolve))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            items = [first]
            deadline = time.monotonic() + self._wait_s
            stop = False
            while len(items) < self._batch_max:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                items.append(nxt)
            self._commit(items)  # type: ignore[arg-type]
            if stop:
                return
            # Not kept while waiting for the next message: tracemalloc found the raw bytes of the last
            # batch held here until then (two 4 MB messages after a round of large ones).
            first = nxt = items = None  # type: ignore[assignment]

    def _commit(
        self, items: list[tuple[NewMessage | list[NewMessage], asyncio.AbstractEventLoop | None, object]]
    ) -> None:
        batch = [m for m, _, _ in items if isinstance(m, NewMessage)]
        if len(batch) < len(items):  # an HL7 batch among them (commit_many): its messages, answered together
            batch = [x for m, _, _ in items for x in (m if isinstance(m, list) else (m,))]
        try:
            accepted = self._store.insert_messages(batch)
            results: list[Accepted] | None = accepted
            outcome: list[Any] = list(accepted)
            if len(batch) > len(items):
                pos, outcome = 0, []
                for m, _, _ in items:
                    n = len(m) if isinstance(m, list) else 1
                    outcome.append(accepted[pos : pos + n] if isinstance(m, list) else accepted[pos])
                    pos += n
        except Exception as exc:  # anything: the senders must hear "not committed", never hang
            log.error("ingest commit of %d messages failed: %s", len(batch), exc.__class__.__name__)
            err = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable("message store unavailable")
            results = None
            outcome = [err] * len(items)
        # One wake-up per event loop for the whole batch (each call_soon_threadsafe is a syscall).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Accepted], Accepted | BaseException]]] = {}
        for (_, loop, waiter), res in zip(items, outcome, strict=True):
            if loop is None:
                waiter(res)  # type: ignore[operator]
            else:
                by_loop.setdefault(loop, []).append((waiter, res))  # type: ignore[arg-type]
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, pairs)
        if results is not None:
            try:
                self._on_committed(
                    [
                        a.id
                        for m, a in zip(batch, results, strict=True)
                        if m.enqueue and a.status == MessageStatus.received
                    ]
                )
            except Exception:
                # The sweeper re-enqueues anything committed but not queued; never lose the writer thread.
                log.exception("enqueue after commit failed; the recovery sweeper will pick these up")


def _resolve_all(pairs: list[tuple[asyncio.Future[Accepted], Accepted | BaseException]]) -> None:
    for fut, res in pairs:
        if fut.done():
            continue
        if isinstance(res, BaseException):
            fut.set_exception(res)
        else:
            fut.set_result(res)


@dataclass(slots=True)
class Meta:
    """What a source read from one inbound message (never more than its reply needs)."""

    peer: str = ""
    kind: str = "hl7v2"  # input kind: the worker's parser and mapping library
    charset: str = ""  # the text encoding the source resolved ('' for binary kinds)
    message_type: str = ""
    sender: str = ""
    control_id: str = ""
    #: the source kind's duplicate key ('' = never a duplicate) and how far back it counts (None: not checked)
    dedupe: str = ""
    dedupe_window_s: float | None = None
    patient: str = ""  # who the message is about, as the source read it (its ordering lane); never stored
    error: InboundError | None = None  # stored with the raw bytes; the source replies with an error
    #: a member of a group (a DICOM study's instance): the group's key as the source read it (stored as a
    #: keyed hash), and the message is ``held`` for the group's assembly instead of being processed
    group: str = ""


#: what a commit adds to its channel's backlog (a duplicate or an error is finished at once)
_UNFINISHED = (MessageStatus.received, MessageStatus.held)


class Receipt(NamedTuple):
    """The commit of one inbound message (a named tuple: one is made per message, see ``Accepted``)."""

    message_id: str
    status: MessageStatus  # received, duplicate or error
    duplicate_of: str | None = None


class Ingest:
    """The accept path: :meth:`accept` commits through the group committer, bounded by ``backlog``."""

    def __init__(self, committer: GroupCommitter, backlog: Backlog | None = None) -> None:
        self.committer = committer
        self.backlog = backlog
        self._pseudonym = committer.store.pseudonym
        #: channels paused by an operator (the admin API): every new message is refused as Busy, uncommitted
        self.paused: set[str] = set()

    async def accept(self, channel: Channel, payload: bytes, meta: Meta, *, enqueue: bool = True) -> Receipt:
        """Commit the raw bytes with what the source read; raises StoreUnavailable when nothing was committed
        (:class:`~engine.errors.Busy` when the channel's backlog is full).

        ``enqueue``: False when the caller processes the message itself (a reply after transform).
        """
        self._open(channel)
        msg = self._message(channel, payload, meta, enqueue)
        backlog = self.backlog
        if backlog is None:
            accepted: Accepted = await self.committer.commit(msg)
            return Receipt(accepted.id, accepted.status, accepted.duplicate_of)
        backlog.reserve(channel.name)
        entered = 0
        try:
            accepted = await self.committer.commit(msg)
            entered = accepted.status in _UNFINISHED
        finally:
            delay = backlog.settle(channel.name, 1, entered)
        if delay:
            await asyncio.sleep(delay)
        return Receipt(accepted.id, accepted.status, accepted.duplicate_of)

    async def accept_many(
        self, channel: Channel, messages: list[tuple[bytes, Meta]], *, enqueue: bool = True
    ) -> list[Receipt]:
        """:meth:`accept` for the messages of an HL7 batch: committed in one transaction, all or none."""
        self._open(channel)
        msgs = [self._message(channel, p, m, enqueue) for p, m in messages]
        backlog = self.backlog
        if backlog is not None:
            backlog.reserve(channel.name, len(msgs))
        entered = 0
        try:
            done = await self.committer.commit_many(msgs)
            entered = sum(a.status in _UNFINISHED for a in done)
        finally:
            delay = backlog.settle(channel.name, len(msgs), entered) if backlog is not None else 0.0
        if delay:
            await asyncio.sleep(delay)
        return [Receipt(a.id, a.status, a.duplicate_of) for a in done]

    def accept_sync(
        self, channel: Channel, payload: bytes, meta: Meta, *, enqueue: bool = True, bounded: bool = True
    ) -> Receipt:
        """:meth:`accept` for a source whose protocol library calls it from its own threads (DICOM):
        the same commit, through the same group committer; blocks until committed (and for the delay).

        ``bounded``: False for a message made of others already committed (a DICOM study assembled from
        its held instances), which the backlog never refuses.
        """
        if bounded:
            self._open(channel)
        msg = self._message(channel, payload, meta, enqueue)
        backlog = self.backlog if bounded else None
        if backlog is None:
            accepted = self.committer.commit_sync(msg)
            return Receipt(accepted.id, accepted.status, accepted.duplicate_of)
        backlog.reserve(channel.name)
        entered = 0
        try:
            accepted = self.committer.commit_sync(msg)
            entered = accepted.status in _UNFINISHED
        finally:
            delay = backlog.settle(channel.name, 1, entered)
        if delay:
            time.sleep(delay)
        return Receipt(accepted.id, accepted.status, accepted.duplicate_of)

    def check(self, channel: Channel) -> None:
        """:class:`~engine.errors.Busy` when the channel's backlog is full now: a source's early look
        before work a refusal would waste (DICOM: writing the object)."""
        self._open(channel)
        if self.backlog is not None:
            self.backlog.check(channel.name)

    def _open(self, channel: Channel) -> None:
        if channel.name in self.paused:
            raise Busy("channel paused, send again later")

    def _message(self, channel: Channel, payload: bytes, meta: Meta, enqueue: bool) -> NewMessage:
        error = meta.error
        held = error is None and bool(meta.group)
        return NewMessage(
            channel=channel.name,
            raw=payload,
            peer=meta.peer,
            kind=meta.kind,
            charset=meta.charset,
            message_type=meta.message_type,
            sender=meta.sender,
            control_id=meta.control_id,
            dedupe=meta.dedupe if error is None else "",
            status=MessageStatus.error if error else MessageStatus.held if held else MessageStatus.received,
            error=error.message if error else None,
            dedupe_window_s=meta.dedupe_window_s,
            lane=ordering.lane(channel, meta.patient, self._pseudonym) if error is None and not held else "",
            enqueue=enqueue and not held,
            group=self._pseudonym(meta.group) if held else "",
        )
