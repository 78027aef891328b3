"""The accept path every source uses: commit the raw bytes, enqueue, and only then answer.

:class:`GroupCommitter` runs one writer thread that commits whatever all connections delivered since its
last commit in a single transaction, then wakes each waiting sender. A commit per message caps a
PostgreSQL-backed listener near 1,200 msg/s; group commit removes that cap without weakening durability.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine import hl7v2, ordering, response
from engine.config.channel import Channel, ReplyPolicy
from engine.errors import EncodingError, HL7Error, StoreUnavailable, TransformError
from engine.store import Accepted, MessageStatus, NewMessage, Store

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

    def _commit(self, items: list[tuple[NewMessage, asyncio.AbstractEventLoop | None, object]]) -> None:
        batch = [m for m, _, _ in items]
        try:
            results: list[Accepted] | None = self._store.insert_messages(batch)
            outcome: list[Accepted | BaseException] = list(results)
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
class Reply:
    """What ingest decided: the reply text to send (``""`` = send nothing) and the stored message."""

    text: str
    message_id: str | None
    status: str
    #: The sender's MSH-18 (first repetition): the reply is encoded in it when byte-compatible.
    charset: str = ""


class HL7Ingest:
    """Accept HL7 v2 messages for one channel: decode, check, commit, reply.

    ``transform_now`` (for channels replying after transform) runs the processing step for a committed
    message and raises TransformError when the mapping rejects it.
    """

    def __init__(
        self,
        channel: Channel,
        committer: GroupCommitter,
        *,
        has_mapping: Callable[[str], bool],
        transform_now: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = channel
        self._committer = committer
        self._has_mapping = has_mapping
        self._transform_now = transform_now

    async def handle(self, raw: bytes, peer: str, error: HL7Error | None = None) -> Reply:
        ch = self.channel
        text: str | None = None
        header: hl7v2.Header | None = None
        try:
            text, header = hl7v2.read(raw, ch.charset)
            if error is None:
                error = self._check_type(header)
        except EncodingError as exc:
            header = exc.header  # type: ignore[assignment]
            error = error or exc
        except HL7Error as exc:
            error = error or exc
        msg = NewMessage(
            channel=ch.name,
            raw=raw,
            peer=peer,
            message_type=header.message_type if header else "",
            sender=header.sender if header else "",
            control_id=header.control_id if header else "",
            status=MessageStatus.error if error else MessageStatus.received,
            error=error.message if error else None,
            dedupe_window_s=ch.dedupe.window_s if ch.dedupe.enabled else None,
            lane=ordering.lane(ch, hl7v2.patient_key(text, header.delimiters)) if text and header and not error else "",
        )
        wait_for_transform = ch.response == ReplyPolicy.after_transform and error is None
        msg.enqueue = not wait_for_transform
        try:
            accepted = await self._committer.commit(msg)
        except StoreUnavailable as exc:
            return self._reply(header, text, "AE", HL7Error(exc.args[0], code="207"), None, "unavailable")
        if error is not None:
            return self._reply(header, text, "AR" if error.reject else "AE", error, accepted.id, "error")
        if wait_for_transform and accepted.status == MessageStatus.received and self._transform_now:
            try:
                await asyncio.to_thread(self._transform_now, accepted.id)
            except TransformError as exc:
                return self._reply(header, text, "AE", exc, accepted.id, "error")
        return self._reply(header, text, "AA", None, accepted.id, accepted.status)

    def _check_type(self, header: hl7v2.Header) -> HL7Error | None:
        ch = self.channel
        if not ch.accepts(header.message_type):
            return HL7Error(
                f"message type {header.message_type} is not accepted by channel {ch.name}",
                code="200",
                location="MSH^1^9",
                reject=True,
            )
        if ch.mapping is None and not self._has_mapping(header.message_type):
            return HL7Error(
                f"no mapping for message type {header.message_type}", code="200", location="MSH^1^9", reject=True
            )
        if not header.control_id:
            return HL7Error("MSH-10 message control id is empty", code="101", location="MSH^1^10", reject=True)
        return None

    @staticmethod
    def _reply(
        header: hl7v2.Header | None,
        text: str | None,
        code: str,
        error: HL7Error | TransformError | None,
        message_id: str | None,
        status: str,
    ) -> Reply:
        if header is None:
            assert isinstance(error, HL7Error)
            return Reply(response.hl7_nak_unparsed(text, error), message_id, status)
        # Enhanced mode: MSH-15 says when the sender wants an accept acknowledgement at all.
        when = header.accept_ack_type.upper()
        ok = code == "AA"
        if (when == "NE") or (when == "ER" and ok) or (when == "SU" and not ok):
            return Reply("", message_id, status, header.charset)
        return Reply(response.hl7_ack(header, code, error=error), message_id, status, header.charset)

    @staticmethod
    def encode(reply: Reply, charset: str) -> bytes:
        """Encode the reply like the inbound message (MSH-18, else the channel charset), but only in a
        codec that writes ASCII as ASCII: MLLP framing and the sender's MSH reader need single bytes."""
        return reply.text.encode(response.reply_codec(reply.charset, charset), errors="replace")
