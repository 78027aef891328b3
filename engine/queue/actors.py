"""The two actors: ``process(message_ids)`` and ``deliver(message_id, destination)``.

They carry ids only; the store holds the payloads. Both are idempotent (see engine.pipeline).
``process`` takes the ids one group commit accepted (at most ``PROCESS_BATCH_MAX``), so a queue hop,
a read and a write transaction serve several messages (measured: +40% end-to-end throughput).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from engine.pipeline import Pipeline
from engine.queue.deadletter import DeadLetter

PROCESS_QUEUE = "process"
DELIVER_QUEUE = "deliver"
PROCESS_BATCH_MAX = 20  # more would leave other worker threads idle while one works through a batch


class Actors:
    """Actors bound to one broker and one pipeline."""

    def __init__(self, broker: dramatiq.Broker, pipeline: Pipeline) -> None:
        self.broker = broker
        self.pipeline = pipeline
        self.process = dramatiq.actor(
            self._process, broker=broker, actor_name="process", queue_name=PROCESS_QUEUE, max_retries=5
        )
        self.deliver = dramatiq.actor(
            self._deliver,
            broker=broker,
            actor_name="deliver",
            queue_name=DELIVER_QUEUE,
            max_retries=5,
            throws=(DeadLetter,),
        )
        pipeline.enqueue_deliver = self.enqueue_deliver

    def _process(self, message_ids: list[str]) -> None:
        self.pipeline.process_many(message_ids, deliver_inline=True)

    def _deliver(self, message_id: str, destination: str) -> None:
        self.pipeline.deliver(message_id, destination)

    def waiting(self, queue_name: str) -> int:
        """Messages waiting in a queue (not counting those a worker already holds)."""
        b = self.broker
        if isinstance(b, StubBroker):
            q = b.queues.get(queue_name)
            return q.qsize() if q is not None else 0
        client = getattr(b, "client", None)
        if client is not None:  # Redis
            return int(client.llen(f"{b.namespace}:{queue_name}"))
        counts = getattr(b, "get_queue_message_counts", None)
        return counts(queue_name)[0] if counts else 0

    def enqueue_process(self, message_ids: list[str]) -> None:
        for i in range(0, len(message_ids), PROCESS_BATCH_MAX):
            self.process.send(message_ids[i : i + PROCESS_BATCH_MAX])

    def enqueue_deliver(self, message_id: str, destination: str, delay_ms: int = 0) -> None:
        if delay_ms > 0:
            self.deliver.send_with_options(args=(message_id, destination), delay=delay_ms)
        else:
            self.deliver.send(message_id, destination)
