"""Prometheus metrics: what operations staff watch (throughput, errors, latency, backlog, dead letters).

Labels are channel and destination names and statuses only, never message content. Served on
``metrics_port`` (127.0.0.1 by default) as the standard ``/metrics`` text exposition.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The engine's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._replies = _Replies()
        r.register(self._replies)
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

        self._refused = Counter(
            "interlink_backlog_refused", "Messages refused uncommitted because their channel's backlog was full.",
            ["channel"], registry=r,
        )  # fmt: skip

    def kept(self, channel: str, destination: str, resources: int) -> None:
        self._kept.labels(channel, destination).inc(resources)

    def held(self, channel: str, destination: str) -> None:
        self._held.labels(channel, destination).inc()

    def received(self, channel: str, status: str, seconds: float) -> None:
        self._replies.add(channel, status, seconds)

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

    def refused(self, channel: str) -> None:
        self._refused.labels(channel).inc()

    def channel_gauge(self, name: str, help_text: str, read: Callable[[], dict[str, int]]) -> None:
        """A value per channel read when scraped (e.g. each channel's backlog), labelled ``channel``."""
        self.registry.register(_ChannelGauge(name, help_text, read))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics``; a port in use is logged, not fatal (the engine still moves messages)."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.warning("metrics not served on %s:%d: %s", host, port, exc.strerror or type(exc).__name__)
            return
        log.info("metrics on http://%s:%d/metrics", host, port)


class _Replies(Collector):
    """``interlink_messages_received`` (counter by channel and status) and ``interlink_reply_seconds``
    (histogram by channel), counted once per inbound message in plain numbers under one lock and turned into
    the same samples as prometheus_client's Counter and Histogram when scraped: those take a lock per
    ``inc`` and per bucket (16k instructions per message through cached label children; this 6k, callgrind)."""

    _RECEIVED = ("interlink_messages_received", "Messages committed by a source, by how they were answered.")
    _REPLY = ("interlink_reply_seconds", "From a complete inbound message to the reply (commit included).")

    def __init__(self) -> None:
        self._bounds = (*_LATENCY_BUCKETS, math.inf)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], list[float]] = {}  # (channel, status) -> [count, created]
        self._hist: dict[str, list[float]] = {}  # channel -> per-bucket counts (not cumulative), sum, created

    def add(self, channel: str, status: str, seconds: float) -> None:
        i = bisect.bisect_left(self._bounds, seconds)  # the first bucket whose bound is >= seconds
        with self._lock:
            count = self._counts.get((channel, status))
            if count is None:
                count = self._counts[channel, status] = [0, time.time()]
            count[0] += 1
            hist = self._hist.get(channel)
            if hist is None:
                hist = self._hist[channel] = [0.0] * len(self._bounds) + [0.0, time.time()]
            hist[i] += 1
            hist[-2] += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = {k: list(v) for k, v in self._counts.items()}
            hists = {k: list(v) for k, v in self._hist.items()}
        received = CounterMetricFamily(*self._RECEIVED, labels=["channel", "status"])
        for (channel, status), (n, created) in counts.items():
            received.add_metric([channel, status], n, created=created)
        yield received
        reply = HistogramMetricFamily(*self._REPLY, labels=["channel"])
        for channel, hist in hists.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip(self._bounds, hist, strict=False):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            reply.add_metric([channel], buckets, hist[-2])
            reply.add_sample(f"{self._REPLY[0]}_created", {"channel": channel}, hist[-1])
        yield reply


class _ChannelGauge(Collector):
    """A gauge labelled by channel whose values are read when scraped."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[str, int]]) -> None:
        self._name, self._help, self._read = name, help_text, read

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(self._name, self._help, labels=["channel"])
        for channel, value in self._read().items():
            gauge.add_metric([channel], value)
        yield gauge
