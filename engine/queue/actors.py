"""The two actors: ``process(message_id)`` and ``deliver(message_id, destination)``.

They carry ids only; the store holds the payloads. Both are idempotent (see engine.pipeline).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from engine.pipeline import Pipeline
from engine.queue.deadletter import DeadLetter

PROCESS_QUEUE = "process"
DELIVER_QUEUE = "deliver"


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

    def _process(self, message_id: str) -> None:
        self.pipeline.process(message_id, deliver_inline=True)

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

    def enqueue_process(self, message_id: str) -> None:
        self.process.send(message_id)

    def enqueue_deliver(self, message_id: str, destination: str, delay_ms: int = 0) -> None:
        if delay_ms > 0:
            self.deliver.send_with_options(args=(message_id, destination), delay=delay_ms)
        else:
            self.deliver.send(message_id, destination)
