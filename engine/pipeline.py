"""The work done for each stored message: process (parse → map → store) and deliver.

Both steps are idempotent: they start from what the store says and advance it with conditional updates,
so at-least-once queue delivery (and the recovery sweeper) never does anything twice that matters.
Actors (``engine.queue.actors``) are thin wrappers around these two methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from engine.destinations import Destination, Outcome, RetryPolicy, make_destination
from engine.errors import HL7Error, TransformError, explain
from engine.metrics import Metrics
from engine.queue.deadletter import DeadLetter
from engine.spec.channel import Channel
from engine.store import AttemptRecord, DeliveryStatus, MessageStatus, ProcessResult, Store
from engine.transform.pool import InThreadMapper, Job, Mapped

if TYPE_CHECKING:
    from engine.transform import MappingSet
    from engine.transform.pool import ProcessMapper

log = logging.getLogger(__name__)

EnqueueDeliver = Callable[[str, str, int], None]


@dataclass(slots=True, frozen=True)
class Attempted:
    """One delivery attempt and its consequence."""

    record: AttemptRecord
    status: DeliveryStatus
    next_attempt_at: float
    retry_in_ms: int | None = None  # schedule another attempt
    dead: str | None = None  # give up, with this reason


@dataclass(slots=True, frozen=True)
class Processed:
    """Outcome of processing one message."""

    status: str
    error: TransformError | HL7Error | None = None


class Pipeline:
    """Everything a worker needs: the store, compiled mappings, channels and their destinations."""

    def __init__(
        self,
        store: Store,
        mappings: MappingSet,
        channels: list[Channel],
        *,
        make: Callable[..., Destination] = make_destination,
        mapper: InThreadMapper | ProcessMapper | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.mappings = mappings
        self.mapper = mapper or InThreadMapper(mappings)
        self.channels = {c.name: c for c in channels}
        self.destinations: dict[tuple[str, str], Destination] = {
            (c.name, d.name): make(d) for c in channels for d in c.destinations
        }
        self.retry: dict[tuple[str, str], RetryPolicy] = {
            (c.name, d.name): d.retry for c in channels for d in c.destinations
        }
        self.enqueue_deliver: EnqueueDeliver = lambda _m, _d, _delay: None

    def close(self) -> None:
        self.mapper.close()
        for d in self.destinations.values():
            d.close()

    # -- process ------------------------------------------------------------------------------------

    def process(self, message_id: str, *, deliver_inline: bool = False) -> Processed:
        """Process one message (see :meth:`process_many`)."""
        return self.process_many([message_id], deliver_inline=deliver_inline).get(message_id, Processed("missing"))

    def process_many(self, message_ids: list[str], *, deliver_inline: bool = False) -> dict[str, Processed]:
        """received → transformed (deliveries queued) | error | filtered, for a batch of messages.

        A no-op for messages in any other status. One read, one claim transaction and one transaction
        for the attempts per batch (the ingest writer hands over what each group commit accepted):
        measured, per-message transactions and queue hops cost more than the mapping itself.

        ``deliver_inline``: a channel with one destination gets its first delivery attempt right here,
        with the bundle in memory, after the claim (so a message another worker took is not sent twice);
        a crash between send and record re-sends it (at-least-once, idempotent at the EHR). Retries go
        through the queue as usual.
        """
        results: list[ProcessResult] = []
        out: dict[str, Processed] = {}
        todo: list[tuple[str, Channel]] = []
        jobs: list[Job] = []
        for message_id, status, channel_name, raw in self.store.load_for_processing(message_ids):
            channel = self.channels.get(channel_name)
            if status != MessageStatus.received:
                out[message_id] = Processed(status)
            elif channel is None:
                why = f"channel {channel_name} is not configured in this process"
                results.append(ProcessResult(message_id, MessageStatus.error, error=why))
                out[message_id] = Processed(MessageStatus.error)
            else:
                todo.append((message_id, channel))
                jobs.append(
                    Job(
                        raw or b"",
                        channel.charset,
                        channel.mapping,
                        channel.validation,
                        channel.timezone,
                        channel.identifiers,
                    )
                )
        for (message_id, channel), mapped in zip(todo, self.mapper.map_many(jobs) if jobs else [], strict=True):
            result = _result(message_id, channel, mapped)
            results.append(result)
            out[message_id] = Processed(result.status, mapped.error)
            self.metrics.processed(channel.name, result.status)
        # Claim before sending: a message another worker already took is not sent twice.
        won = self.store.finish_processing(results) if results else set()
        inline: list[tuple[str, str, Attempted]] = []
        for r in results:
            if r.message_id not in won or r.status != MessageStatus.transformed:
                continue
            attempted = None
            if deliver_inline and len(r.destinations) == 1:
                attempted = self._try_inline(r)
            if attempted is None:
                for name in r.destinations:
                    self.enqueue_deliver(r.message_id, name, 0)
            else:
                inline.append((r.message_id, r.destinations[0], attempted))
        if inline:
            self.store.record_attempts([(m, d, a.record, a.status, a.next_attempt_at) for m, d, a in inline])
        for message_id, destination, attempted in inline:
            try:
                self._follow_up(message_id, destination, attempted)
            except DeadLetter as exc:
                self.on_dead("deliver", (message_id, destination), str(exc))
        return out

    def _try_inline(self, r: ProcessResult) -> Attempted | None:
        """The first delivery attempt; None hands it to the queue instead."""
        assert r.bundle is not None
        try:
            return self._send(r.message_id, r.destinations[0], r.channel, 0, r.bundle, orjson.loads(r.bundle))
        except Exception as exc:  # a bug or an outage: the queue's retries take over; no content in the log
            log.error("inline delivery of %s failed (%s); handing it to the queue", r.message_id, type(exc).__name__)
            return None

    # -- deliver ------------------------------------------------------------------------------------

    def deliver(self, message_id: str, destination: str) -> DeliveryStatus | None:
        """Send the stored bundle to one destination; schedule a retry or give up (DeadLetter)."""
        loaded = self.store.load_for_delivery(message_id, destination)
        if loaded is None or loaded[0] in (DeliveryStatus.sent, DeliveryStatus.dead):
            return None
        _, attempts_so_far, channel_name, stored = loaded
        stored = stored or b"{}"
        attempted = self._send(message_id, destination, channel_name, attempts_so_far, stored, orjson.loads(stored))
        self.store.record_attempt(
            message_id,
            destination,
            attempted.record,
            status=attempted.status,
            next_attempt_at=attempted.next_attempt_at,
        )
        return self._follow_up(message_id, destination, attempted)

    def _send(
        self, message_id: str, destination: str, channel_name: str, attempts_so_far: int, stored: bytes, bundle: dict
    ) -> Attempted:
        """One attempt, and what it means (sent, retry when, or dead); nothing is written here."""
        key = (channel_name, destination)
        dest = self.destinations.get(key)
        if dest is None:
            raise DeadLetter(f"destination {destination} is not configured in this process")
        number = attempts_so_far + 1
        started = time.time()
        t0 = time.perf_counter()
        result = dest.send(bundle, message_id=message_id)
        seconds = time.perf_counter() - t0
        self.metrics.attempted(channel_name, destination, result.outcome, seconds)
        record = AttemptRecord(
            number=number,
            started_at=started,
            duration_ms=seconds * 1000,
            outcome=result.outcome,
            status_code=result.status_code,
            error=result.error,
            # the sent request is stored only when it is not the stored bundle itself (e.g. split transactions)
            sent=None if result.request == stored else result.request,
            response=result.response,
        )
        if result.outcome == Outcome.SENT:
            return Attempted(record, DeliveryStatus.sent, started)
        policy = self.retry[key]
        if result.outcome == Outcome.RETRY and not policy.exhausted(number):
            delay = policy.delay_ms(number, result.retry_after_s)
            return Attempted(record, DeliveryStatus.retrying, started + delay / 1000, retry_in_ms=delay)
        why = "retries exhausted" if result.outcome == Outcome.RETRY else "permanent failure"
        reason = f"{why} after {number} attempt(s): {result.error or result.status_code}"
        return Attempted(record, DeliveryStatus.retrying, 1e18, dead=reason)

    def _follow_up(self, message_id: str, destination: str, a: Attempted) -> DeliveryStatus:
        """After the attempt is recorded: schedule the retry, or give up through the dead-letter path."""
        if a.dead is not None:
            raise DeadLetter(a.dead)
        if a.retry_in_ms is not None:
            log.info(
                "delivery to %s failed (attempt %d, %s); retrying in %d ms",
                destination, a.record.number, a.record.error, a.retry_in_ms,
            )  # fmt: skip
            self.enqueue_deliver(message_id, destination, a.retry_in_ms)
        return a.status

    # -- dead letters -------------------------------------------------------------------------------

    def on_dead(self, actor: str, args: tuple[object, ...], reason: str) -> None:
        """Called by the DeadLetters middleware for every nacked queue message."""
        if actor == "deliver" and len(args) == 2:
            self.store.mark_dead(str(args[0]), str(args[1]), reason)
            self.metrics.dead(str(args[1]))
            log.warning("delivery of message %s to %s is dead: %s", args[0], args[1], reason)
        elif actor == "process" and args:
            ids = args[0] if isinstance(args[0], list) else [args[0]]
            for message_id in ids:
                self.store.mark_error(str(message_id), reason)
            log.warning("processing of %d message(s) failed for good: %s", len(ids), reason)


def _result(message_id: str, channel: Channel, mapped: Mapped) -> ProcessResult:
    if mapped.error is not None:
        return ProcessResult(message_id, MessageStatus.error, error=explain(mapped.error))
    if mapped.empty or mapped.bundle is None:
        return ProcessResult(message_id, MessageStatus.filtered, error="mapping produced no resources")
    names = tuple(d.name for d in channel.destinations)
    return ProcessResult(
        message_id, MessageStatus.transformed, bundle=mapped.bundle, destinations=names, channel=channel.name
    )
