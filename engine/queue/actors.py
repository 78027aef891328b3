"""The two actors: ``process(message_ids)`` and ``deliver(message_id, destination)``.

They carry ids only; the store holds the payloads. Both are idempotent (see engine.pipeline). The pipeline
decides, the actors act on its :class:`~engine.pipeline.Decision`: queue the deliveries it names (now or
after a delay) and send what it gave up through the one dead-letter door — the :class:`DeadLetters`
middleware, which the actors install on the broker and which calls :meth:`Pipeline.give_up`.
``process`` takes the ids one group commit accepted (at most ``PROCESS_BATCH_MAX``), so a queue hop,
a read and a write transaction serve several messages (measured: +40% end-to-end throughput).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from engine.errors import DeadLetter
from engine.pipeline import Decision, Pipeline
from engine.queue.coalesce import Coalescer
from engine.queue.deadletter import DeadLetters

PROCESS_QUEUE = "process"
DELIVER_QUEUE = "deliver"
PROCESS_BATCH_MAX = 20  # more would leave other worker threads idle while one works through a batch
# On a shared queue, ids committed within this long of each other go as one process message
# (engine/queue/coalesce.py; group commits on PostgreSQL hold ~1 message). bench/pg_pipeline.py, paired runs
# at load 4.8: 5 ms -> 6.0 ms CPU per message, 310 msg/s; 20 ms -> 4.6 ms, 401 msg/s. Adds at most this
# much to the time to delivery, nothing to the ACK.
PROCESS_LINGER_S = 0.02


class Actors:
    """Actors bound to one broker and one pipeline."""

    def __init__(self, broker: dramatiq.Broker, pipeline: Pipeline) -> None:
        self.broker = broker
        self.pipeline = pipeline
        self.process: dramatiq.Actor[[list[str]], None] = dramatiq.Actor(
            self._process,
            broker=broker,
            actor_name="process",
            queue_name=PROCESS_QUEUE,
            priority=0,
            options={"max_retries": 5},
        )
        self.deliver: dramatiq.Actor[[str, str], None] = dramatiq.Actor(
            self._deliver,
            broker=broker,
            actor_name="deliver",
            queue_name=DELIVER_QUEUE,
            priority=0,
            options={"max_retries": 5, "throws": (DeadLetter,)},
        )
        broker.add_middleware(DeadLetters(self.record_dead))
        self._coalescer = (
            None
            if isinstance(broker, StubBroker)
            else Coalescer(self._send_process, max_ids=PROCESS_BATCH_MAX, linger_s=PROCESS_LINGER_S)
        )

    def close(self) -> None:
        """Queue the ids still held for coalescing (before the broker closes)."""
        if self._coalescer is not None:
            self._coalescer.close()

    def _process(self, message_ids: list[str]) -> None:
        self.apply(self.pipeline.process_many(message_ids, deliver_inline=True))

    def _deliver(self, message_id: str, destination: str) -> None:
        decision = self.pipeline.deliver(message_id, destination)
        self.apply(decision, in_deliver=True)

    def apply(self, decision: Decision, *, in_deliver: bool = False) -> None:
        """Queue what a step decided; a delivery given up goes through the dead-letter door — as this
        actor's own failure when it is the deliver step's delivery, else directly."""
        for d in decision.deliver:
            self.enqueue_deliver(d.message_id, d.destination, d.delay_ms)
        for g in decision.dead:
            if in_deliver:
                raise DeadLetter(g.reason)
            self.record_dead("deliver", (g.message_id, g.destination), g.reason)

    def record_dead(self, actor: str, args: tuple[object, ...], reason: str) -> None:
        """The dead-letter door (the middleware calls it for every nacked queue message)."""
        decision = self.pipeline.give_up(actor, args, reason)
        for d in decision.deliver:
            self.enqueue_deliver(d.message_id, d.destination, d.delay_ms)

    def waiting(self, queue_name: str) -> int:
        """Messages waiting in a queue (not counting those a worker already holds)."""
        b = self.broker
        if isinstance(b, StubBroker):
            q = b.queues.get(queue_name)
            return q.qsize() if q is not None else 0
        client = getattr(b, "client", None)
        if client is not None:  # Redis
            return int(client.llen(f"{getattr(b, 'namespace', '')}:{queue_name}"))
        counts = getattr(b, "get_queue_message_counts", None)
        return counts(queue_name)[0] if counts else 0

    def enqueue_process(self, message_ids: list[str]) -> None:
        if self._coalescer is not None:
            self._coalescer.add(message_ids)
        else:
            self._send_process(message_ids)

    def _send_process(self, message_ids: list[str]) -> None:
        for i in range(0, len(message_ids), PROCESS_BATCH_MAX):
            self.process.send(message_ids[i : i + PROCESS_BATCH_MAX])

    def enqueue_deliver(self, message_id: str, destination: str, delay_ms: int = 0) -> None:
        if delay_ms > 0:
            self.deliver.send_with_options(args=(message_id, destination), delay=delay_ms)
        else:
            self.deliver.send(message_id, destination)
