"""Prometheus metrics: what operations staff watch (throughput, errors, latency, backlog, dead letters).

Labels are channel and destination names and statuses only, never message content. Served on
``metrics_port`` (127.0.0.1 by default) as the standard ``/metrics`` text exposition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The engine's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._received = Counter(
            "interlink_messages_received", "Messages committed by a source, by how they were answered.",
            ["channel", "status"], registry=r,
        )  # fmt: skip
        self._reply = Histogram(
            "interlink_reply_seconds", "From a complete inbound message to the reply (commit included).",
            ["channel"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._processed = Counter(
            "interlink_messages_processed", "Messages mapped, by outcome (transformed, error, filtered).",
            ["channel", "status"], registry=r,
        )  # fmt: skip
        self._attempts = Counter(
            "interlink_delivery_attempts", "Delivery attempts by outcome (sent, retry, permanent).",
            ["channel", "destination", "outcome"], registry=r,
        )  # fmt: skip
        self._delivery = Histogram(
            "interlink_delivery_seconds", "Duration of one delivery attempt.",
            ["channel", "destination"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._dead = Counter(
            "interlink_dead_letters", "Deliveries given up (permanent failure or retries exhausted).",
            ["destination"], registry=r,
        )  # fmt: skip
        self._kept = Counter(
            "interlink_stale_writes_kept", "Resources not overwritten because the target holds a newer version.",
            ["channel", "destination"], registry=r,
        )  # fmt: skip
        self._held = Counter(
            "interlink_deliveries_held", "Deliveries parked behind an earlier message of the same patient/lane.",
            ["channel", "destination"], registry=r,
        )  # fmt: skip
        #: (channel, status) -> the received counter's and reply histogram's children: ``labels()`` builds
        #: and checks a label tuple under a lock on every call, 19k of the 34k instructions received() cost
        #: per message (callgrind, bench/accept_instructions.py)
        self._replies: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def kept(self, channel: str, destination: str, resources: int) -> None:
        self._kept.labels(channel, destination).inc(resources)

    def held(self, channel: str, destination: str) -> None:
        self._held.labels(channel, destination).inc()

    def received(self, channel: str, status: str, seconds: float) -> None:
        children = self._replies.get((channel, status))
        if children is None:
            children = self._replies[channel, status] = (
                self._received.labels(channel, status),
                self._reply.labels(channel),
            )
        children[0].inc()
        children[1].observe(seconds)

    def processed(self, channel: str, status: str) -> None:
        self._processed.labels(channel, status).inc()

    def attempted(self, channel: str, destination: str, outcome: str, seconds: float) -> None:
        self._attempts.labels(channel, destination, outcome).inc()
        self._delivery.labels(channel, destination).observe(seconds)

    def dead(self, destination: str) -> None:
        self._dead.labels(destination).inc()

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when scraped (e.g. the store's backlog, a queue's depth)."""
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics``; a port in use is logged, not fatal (the engine still moves messages)."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.warning("metrics not served on %s:%d: %s", host, port, exc.strerror or type(exc).__name__)
            return
        log.info("metrics on http://%s:%d/metrics", host, port)
