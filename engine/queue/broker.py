"""Broker factory: ``memory://`` (in-process), ``redis://…``, ``amqp://…``."""

from __future__ import annotations

from collections import defaultdict, deque

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries


class MemoryBroker(StubBroker):
    """Dramatiq's in-memory broker, for the embedded engine.

    Failed messages are recorded in the SQL store by :class:`DeadLetters`; the stub's own dead-letter
    list keeps only the last few so a long-running process does not grow without bound.
    """

    def __init__(self, middleware: list[dramatiq.Middleware] | None = None) -> None:
        super().__init__(middleware=middleware)
        # a bounded deque where the stub keeps an unbounded list
        self.dead_letters_by_queue = defaultdict(lambda: deque(maxlen=100))  # type: ignore[arg-type, return-value]


def default_middleware() -> list[dramatiq.Middleware]:
    # Retries apply to unexpected failures only (a database hiccup, a bug); delivery retries with
    # backoff are scheduled explicitly from the store's attempt count (see engine.pipeline).
    # Dramatiq's other default middleware (age and time limits, callbacks, pipelines) is unused here and
    # costs ~50 µs per message (measured); every step already has its own timeouts.
    return [Retries(max_retries=5, min_backoff=1000, max_backoff=60_000)]


DEFAULT_NAMESPACE = "interlink"


def make_broker(url: str, *, namespace: str = DEFAULT_NAMESPACE) -> dramatiq.Broker:
    """Build the broker for a queue URL (the actors add the dead-letter middleware: ``engine.queue.actors``).

    ``namespace`` prefixes every Redis key (``namespace:queue``); it has no effect on other brokers
    (RabbitMQ separates engines by the virtual host in the URL).
    """
    middleware = default_middleware()
    if url.startswith("memory://"):
        return MemoryBroker(middleware=middleware)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=middleware, namespace=namespace)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware)
    raise ValueError(f"unsupported queue URL scheme: {url.split(':', 1)[0]}")
