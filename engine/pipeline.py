"""The work done for each stored message: process (parse → map → store) and deliver.

Both steps are idempotent: they start from what the store says and advance it with conditional updates,
so at-least-once queue delivery (and the recovery sweeper) never does anything twice that matters.
The pipeline decides and the queue acts: each step returns a :class:`Decision` (deliveries to queue, now or
after a delay, and deliveries given up); the actors (``engine.queue.actors``) enqueue them and send what was
given up through the one dead-letter door (:meth:`Pipeline.give_up`, called by the dead-letter middleware).

Two guards stand before every send (see ``engine.ordering`` and ``docs/architecture.md``):

- the ordering gate: a delivery waits while an earlier message of its lane (patient) is unfinished for the
  same target, and whoever finishes that message wakes it;
- the stale-write guard: a resource the target already holds from a message with a newer source time is
  not overwritten (the destination turns that entry into a create-if-absent), and what a successful
  delivery wrote is recorded with its source time.

A destination that sends what was received rather than the bundle (``engine.destinations.stored``:
DICOM forward, STOW-RS) is handed the files of the message's stored objects instead; the rest is the same.

Hooks (``hooks=``, e.g. ``engine.alerts.critical.CriticalResults``) see each processed batch's results
before the claim transaction: what a hook records then is not lost by a crash before the claim, since the
batch is processed again (hooks must be idempotent). A hook that raises fails the batch like the claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from engine.config.channel import Channel, OnDead
from engine.destinations import ConditionalWrites, Destination, Outcome, RetryPolicy, make_destination, target_key
from engine.destinations.stored import SendsObjects, StoredFile, object_store, stored_files
from engine.errors import HL7Error, TransformError, explain
from engine.metrics import Metrics
from engine.ordering import Gate
from engine.store import AttemptRecord, ContentKind, DeliveryStatus, MessageStatus, ProcessResult, Store
from engine.store.repository import Written
from engine.transform.pool import InThreadMapper, Job, Mapped, Switch, channel_job

if TYPE_CHECKING:
    from engine.transform import MappingSet
    from engine.transform.pool import ProcessMapper

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Delivery:
    """A delivery for the queue to run, after ``delay_ms``."""

    message_id: str
    destination: str
    delay_ms: int = 0


@dataclass(slots=True, frozen=True)
class GaveUp:
    """A delivery given up for good (a permanent failure, or retries exhausted), with its PHI-free reason."""

    message_id: str
    destination: str
    reason: str


@dataclass(slots=True)
class Decision:
    """What the queue must do after a step, and what the step found."""

    deliver: list[Delivery] = field(default_factory=list)
    dead: list[GaveUp] = field(default_factory=list)
    #: process steps: the outcome per message id (messages that do not exist are absent)
    processed: dict[str, Processed] = field(default_factory=dict)
    #: deliver steps: the delivery's status afterwards (None: nothing was to be done)
    status: DeliveryStatus | None = None

    def queue(self, pairs: list[tuple[str, str]]) -> None:
        self.deliver.extend(Delivery(m, d) for m, d in pairs)


@dataclass(slots=True, frozen=True)
class Attempted:
    """One delivery attempt and its consequence."""

    record: AttemptRecord
    status: DeliveryStatus
    next_attempt_at: float
    retry_in_ms: int | None = None  # schedule another attempt
    gave_up: str | None = None  # given up, with this reason
    written: Written | None = None  # what a successful attempt wrote (stale-write guard)


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
        hooks: Sequence[Callable[[Sequence[ProcessResult]], None]] = (),
    ) -> None:
        self.metrics = metrics or Metrics()
        self.hooks = tuple(hooks)
        self.store = store
        self.mappings = mappings
        self.mapper = Switch(mapper or InThreadMapper(mappings))
        self.channels = {c.name: c for c in channels}
        self.destinations: dict[tuple[str, str], Destination] = {
            (c.name, d.name): make(d) for c in channels for d in c.destinations
        }
        self.retry: dict[tuple[str, str], RetryPolicy] = {
            (c.name, d.name): d.retry for c in channels for d in c.destinations
        }
        self.targets: dict[tuple[str, str], str] = {
            (c.name, d.name): target_key(d) for c in channels for d in c.destinations
        }
        self.gate = Gate(store)
        self._make = make
        self._retired: list[Destination] = []

    def use_channel(self, channel: Channel) -> None:
        """Take a channel's new configuration (a reload): new destinations are built; the ones it replaces
        are closed only with the pipeline, since a worker may be sending through them right now."""
        old = {key: d for key, d in self.destinations.items() if key[0] == channel.name}
        for key in old:
            del self.destinations[key], self.retry[key], self.targets[key]
        self._retired.extend(old.values())
        self.channels[channel.name] = channel
        for d in channel.destinations:
            key = (channel.name, d.name)
            self.destinations[key] = self._make(d)
            self.retry[key] = d.retry
            self.targets[key] = target_key(d)

    def use_mappings(self, mappings: MappingSet, mapper: InThreadMapper | ProcessMapper) -> None:
        """Map with new maps (a reload) from the next batch on; a batch being mapped finishes on the old ones,
        whose processes then close (``pool.Switch``)."""
        self.mappings = mappings
        self.mapper.use(mapper)

    def close(self) -> None:
        self.mapper.close()
        for d in [*self.destinations.values(), *self._retired]:
            d.close()

    # -- process ------------------------------------------------------------------------------------

    def process(self, message_id: str, *, deliver_inline: bool = False) -> Decision:
        """Process one message (see :meth:`process_many`)."""
        return self.process_many([message_id], deliver_inline=deliver_inline)

    def process_many(self, message_ids: list[str], *, deliver_inline: bool = False) -> Decision:
        """received → transformed (deliveries queued) | error | filtered, for a batch of messages.

        A no-op for messages in any other status. One read, one claim transaction and one transaction
        for the attempts per batch (the ingest writer hands over what each group commit accepted):
        measured, per-message transactions and queue hops cost more than the mapping itself.

        ``deliver_inline``: a channel with one destination gets its first delivery attempt right here,
        with the bundle in memory, after the claim (so a message another worker took is not sent twice)
        and once the ordering gate lets it; a crash between send and record re-sends it (at-least-once,
        idempotent at the EHR). Retries go through the queue as usual.
        """
        results: list[ProcessResult] = []
        decision = Decision()
        out = decision.processed
        todo: list[tuple[str, Channel, str]] = []
        jobs: list[Job] = []
        for stored in self.store.load_for_processing(message_ids):
            message_id, status, channel_name, lane = stored.id, stored.status, stored.channel, stored.lane
            channel = self.channels.get(channel_name)
            if status != MessageStatus.received:
                out[message_id] = Processed(status)
            elif channel is None:
                why = f"channel {channel_name} is not configured in this process"
                results.append(ProcessResult(message_id, MessageStatus.error, error=why, lane=lane))
                out[message_id] = Processed(MessageStatus.error)
            else:
                todo.append((message_id, channel, lane))
                jobs.append(channel_job(channel, stored.raw or b"", stored.charset, stored.kind))
        for (message_id, channel, lane), mapped in zip(todo, self.mapper.map_many(jobs) if jobs else [], strict=True):
            result = self._result(message_id, channel, mapped, lane)
            results.append(result)
            out[message_id] = Processed(result.status, mapped.error)
            self.metrics.processed(channel.name, result.status)
        for hook in self.hooks:
            hook(results)
        # Claim before sending: a message another worker already took is not sent twice.
        won = self.store.finish_processing(results) if results else set()
        inline: list[tuple[ProcessResult, Attempted]] = []
        waiting = self.gate.waiting(r.lane for r in results if r.message_id in won)
        for r in results:
            if r.message_id not in won:
                continue
            # No longer unprocessed: what waits behind it in its lane may go (or waits on its deliveries now).
            if r.lane in waiting:
                decision.queue(self.gate.wake(r.lane, r.message_id))
            if r.status != MessageStatus.transformed:
                continue
            if deliver_inline and len(r.destinations) == 1:
                if not self._may_send(r.channel, r.message_id, r.destinations[0], r.lane):
                    continue  # parked behind an earlier message of the same patient; it will be woken
                attempted = self._try_inline(r)
                if attempted is not None:
                    inline.append((r, attempted))
                    continue
            decision.queue([(r.message_id, name) for name in r.destinations])
        if inline:
            self.store.record_attempts(
                [(r.message_id, r.destinations[0], a.record, a.status, a.next_attempt_at) for r, a in inline],
                [(r.message_id, a.written) for r, a in inline if a.written is not None],
            )
        # a sent delivery wakes what waits behind it: asked once for the batch, after the attempts are recorded
        waiting = self.gate.waiting(r.lane for r, a in inline if a.status == DeliveryStatus.sent)
        for r, attempted in inline:
            self._follow_up(
                decision, r.message_id, r.destinations[0], attempted, r.lane, r.targets[0], wake=r.lane in waiting
            )
        return decision

    def _result(self, message_id: str, channel: Channel, mapped: Mapped, lane: str) -> ProcessResult:
        # search keys come plain from the mapping (process): only their keyed hashes are stored
        found = tuple((kind, self.store.pseudonym(value)) for kind, value in mapped.keys)
        if mapped.error is not None:
            return ProcessResult(message_id, MessageStatus.error, error=explain(mapped.error), lane=lane, keys=found)
        if mapped.empty or mapped.bundle is None:
            return ProcessResult(message_id, MessageStatus.filtered, error="mapping produced no resources", lane=lane)
        names = tuple(d.name for d in channel.destinations)
        return ProcessResult(
            message_id,
            MessageStatus.transformed,
            bundle=mapped.bundle,
            destinations=names,
            channel=channel.name,
            targets=tuple(self.targets[(channel.name, n)] for n in names),
            source_time=mapped.source_time,
            lane=lane,
            keys=found,
        )

    def _try_inline(self, r: ProcessResult) -> Attempted | None:
        """The first delivery attempt; None hands it to the queue instead."""
        assert r.bundle is not None
        try:
            return self._send(
                r.message_id, r.destinations[0], r.channel, 0, r.bundle, orjson.loads(r.bundle), r.source_time
            )
        except Exception as exc:  # a bug or an outage: the queue's retries take over; no content in the log
            log.error("inline delivery of %s failed (%s); handing it to the queue", r.message_id, type(exc).__name__)
            return None

    def _may_send(self, channel_name: str, message_id: str, destination: str, lane: str) -> bool:
        channel = self.channels[channel_name]
        if self.gate.may_send(channel, message_id, destination, lane, self.targets[(channel_name, destination)]):
            return True
        self.metrics.held(channel_name, destination)
        return False

    # -- deliver ------------------------------------------------------------------------------------

    def deliver(self, message_id: str, destination: str) -> Decision:
        """Send the stored bundle to one destination, once its lane lets it; decide the retry or give up."""
        decision = Decision()
        loaded = self.store.load_for_delivery(message_id, destination)
        if loaded is None or loaded.status in (DeliveryStatus.sent, DeliveryStatus.dead, DeliveryStatus.discarded):
            return decision
        if loaded.status == DeliveryStatus.waiting and not self.store.release(message_id, destination):
            return decision  # a waker released it first and queued it: that one sends
        if (loaded.channel, destination) not in self.destinations:
            decision.dead.append(GaveUp(message_id, destination, f"destination {destination} is not configured"))
            return decision
        if not self._may_send(loaded.channel, message_id, destination, loaded.lane):
            decision.status = DeliveryStatus.waiting
            return decision
        stored = loaded.bundle or b"{}"
        attempted = self._send(
            message_id, destination, loaded.channel, loaded.attempts, stored, orjson.loads(stored), loaded.source_time
        )
        self.store.record_attempt(
            message_id,
            destination,
            attempted.record,
            status=attempted.status,
            next_attempt_at=attempted.next_attempt_at,
            written=attempted.written,
        )
        self._follow_up(decision, message_id, destination, attempted, loaded.lane, loaded.target)
        return decision

    def _send(
        self,
        message_id: str,
        destination: str,
        channel_name: str,
        attempts_so_far: int,
        stored: bytes,
        bundle: dict,
        source_time: float | None,
    ) -> Attempted:
        """One attempt, and what it means (sent, retry when, or dead); nothing is written here."""
        key = (channel_name, destination)
        dest = self.destinations[key]
        bundle, written = self._guard(key, dest, bundle, source_time)
        number = attempts_so_far + 1
        started = time.time()
        t0 = time.perf_counter()
        if isinstance(dest, SendsObjects):  # DICOM forward, STOW-RS: what was received, not the bundle
            result = dest.send_objects(self._stored_files(channel_name, message_id), message_id=message_id)
        else:
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
            return Attempted(record, DeliveryStatus.sent, started, written=written)
        policy = self.retry[key]
        if result.outcome == Outcome.RETRY and not policy.exhausted(number):
            delay = policy.delay_ms(number, result.retry_after_s)
            return Attempted(record, DeliveryStatus.retrying, started + delay / 1000, retry_in_ms=delay)
        why = "retries exhausted" if result.outcome == Outcome.RETRY else "permanent failure"
        reason = f"{why} after {number} attempt(s): {result.error or result.status_code}"
        return Attempted(record, DeliveryStatus.dead, started, gave_up=reason)

    def _stored_files(self, channel_name: str, message_id: str) -> list[StoredFile]:
        """The files of the objects a message refers to (its raw content), in the channel source's object store."""
        channel = self.channels.get(channel_name)
        store = object_store(channel.source) if channel is not None else None
        if store is None:
            return []
        return stored_files(self.store.content(message_id, ContentKind.raw), store)

    def _guard(
        self, key: tuple[str, str], dest: Destination, bundle: dict, source_time: float | None
    ) -> tuple[dict, Written | None]:
        """The stale-write guard: never overwrite what the target holds from a newer message."""
        channel = self.channels.get(key[0])
        if (
            source_time is None
            or channel is None
            or channel.ordering.stale_writes != "keep_newer"
            or not isinstance(dest, ConditionalWrites)
        ):
            return bundle, None
        target = self.targets[key]
        resources = dest.overwrites(bundle)
        newer = self.store.newer_writes(target, resources, source_time)
        if newer:
            self.metrics.kept(key[0], key[1], len(newer))
            log.info("%s/%s: %d resource(s) held from a newer message are not overwritten", key[0], key[1], len(newer))
            bundle = dest.keep_existing(bundle, newer)
        return bundle, Written(target, tuple(r for r in resources if r not in newer), source_time)

    def _follow_up(
        self,
        decision: Decision,
        message_id: str,
        destination: str,
        a: Attempted,
        lane: str,
        target: str,
        *,
        wake: bool = True,
    ) -> None:
        """After the attempt is recorded: what waits behind it (``wake``: False when the lane is known to
        hold no waiter), the retry, or the dead letter."""
        decision.status = a.status
        if a.gave_up is not None:
            decision.dead.append(GaveUp(message_id, destination, a.gave_up))
        elif a.retry_in_ms is not None:
            log.info(
                "delivery to %s failed (attempt %d, %s); retrying in %d ms",
                destination, a.record.number, a.record.error, a.retry_in_ms,
            )  # fmt: skip
            decision.deliver.append(Delivery(message_id, destination, a.retry_in_ms))
        elif a.status == DeliveryStatus.sent and wake:
            decision.queue(self.gate.wake(lane, message_id, target))

    # -- dead letters -------------------------------------------------------------------------------

    def give_up(self, actor: str, args: tuple[object, ...], reason: str) -> Decision:
        """The dead-letter door: a delivery (actor ``deliver``, args (message id, destination)) or a batch
        of messages (actor ``process``) failed for good. Records it; returns what its lane may release."""
        decision = Decision()
        if actor == "deliver" and len(args) == 2:
            message_id, destination = str(args[0]), str(args[1])
            self.store.mark_dead(message_id, destination, reason)
            self.metrics.dead(destination)
            log.warning("delivery of message %s to %s is dead: %s", message_id, destination, reason)
            loaded = self.store.load_for_delivery(message_id, destination)
            channel = self.channels.get(loaded.channel) if loaded else None
            if loaded and channel and channel.ordering.on_dead is OnDead.skip:
                decision.queue(self.gate.wake(loaded.lane, message_id, loaded.target))
        elif actor == "process" and args:
            ids = [str(i) for i in (args[0] if isinstance(args[0], list) else [args[0]])]
            for message_id in ids:
                self.store.mark_error(message_id, reason)
            for stored in self.store.load_for_processing(ids):
                decision.queue(self.gate.wake(stored.lane, stored.id))
            log.warning("processing of %d message(s) failed for good: %s", len(ids), reason)
        return decision
