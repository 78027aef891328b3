"""The accept path's shortcuts agree with the plain way of doing the same thing.

- an ACK from its template (``response.hl7_ack`` without text or error) is the ACK built field by field;
- the store's pseudonym (HMAC-SHA256 from pads hashed once) is ``hmac.new``'s;
- the received counter and reply histogram, counted in plain numbers, expose what prometheus_client's would.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from engine import hl7v2, metrics, response
from engine.metrics import Metrics
from engine.store import Store

MSHS = [
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1",
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01|C2^X|T|2.3||||8859/1",  # MSH-18 copied
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ADT^A01|C3|P|2.5|||AL|NE||UNICODE UTF-8",  # enhanced mode
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ADT^A01|C4|P|2.5|||||UNICODE UTF-16",  # MSH-18 not copied
    "MSH#$%*!#APP#FAC#R#RF#20240101##SIU$S12#C5",  # other delimiters, no MSH-11/12
    "MSH|^~\\&|||||||ORM|C6",
]


def _without_time_and_id(ack: str) -> list[list[str]]:
    """The ACK's segments and fields with MSH-7 and MSH-10 (its own time and control id) blanked."""
    segs = [s.split(ack[3]) for s in ack.split("\r")]
    segs[0][6] = segs[0][9] = ""
    return segs


@pytest.mark.parametrize("msh", MSHS)
@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_ack_template_is_the_ack_built_field_by_field(msh: str, code: str) -> None:
    header = hl7v2.read_header(msh + "\rPID|1")
    # `now` given: built field by field; without it, from the template (made by the first call, then reused)
    reference = response.hl7_ack(header, code, now=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    first, again = response.hl7_ack(header, code), response.hl7_ack(header, code)
    assert _without_time_and_id(first) == _without_time_and_id(reference)
    assert _without_time_and_id(again) == _without_time_and_id(reference)
    assert first.split("\r")[0].split(msh[3])[9] != again.split("\r")[0].split(msh[3])[9]  # a new control id


def test_ack_templates_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "_ACK_TEMPLATES", {})
    monkeypatch.setattr(response, "_ACK_TEMPLATES_MAX", 3)
    for i in range(10):
        response.hl7_ack(hl7v2.read_header(f"MSH|^~\\&|APP{i}|FAC|EHR|HOSP|||ADT^A01|C|P|2.5"), "AA")
        assert len(response._ACK_TEMPLATES) <= 3


def test_pseudonym_is_hmac_sha256_of_the_installation_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path}/s.db")
    try:
        key = store._key
        assert key is not None
        for value in ["patient\x1f12345", "", "channel\x1flab", "é" * 100]:
            expected = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]
            assert store.pseudonym(value) == expected
        # a key longer than SHA-256's block is hashed first, as RFC 2104 says
        store._key, store._pads = b"k" * 100, None
        assert store.pseudonym("x") == hmac.new(b"k" * 100, b"x", hashlib.sha256).hexdigest()[:24]
    finally:
        store.close()


def _samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    """Every sample of the received counter and reply histogram (creation times left out)."""
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(("interlink_messages_received", "interlink_reply_seconds"))
        and not s.name.endswith("_created")
    )


def test_received_metrics_are_prometheus_clients_counter_and_histogram() -> None:
    observed = [("a", "received", 0.002), ("a", "received", 0.0005), ("a", "error", 0.3), ("b", "received", 42.0)]
    observed += [("b", "duplicate", b) for b in metrics._LATENCY_BUCKETS]  # on each bound: counted in its bucket
    m = Metrics()
    reference = CollectorRegistry()
    counter = Counter("interlink_messages_received", "", ["channel", "status"], registry=reference)
    histogram = Histogram("interlink_reply_seconds", "", ["channel"], buckets=metrics._LATENCY_BUCKETS,
                          registry=reference)  # fmt: skip
    for channel, status, seconds in observed:
        m.received(channel, status, seconds)
        counter.labels(channel, status).inc()
        histogram.labels(channel).observe(seconds)
    assert _samples(m.registry) == _samples(reference)
    created = {s.name for metric in m.registry.collect() for s in metric.samples if s.name.endswith("_created")}
    assert created == {"interlink_messages_received_created", "interlink_reply_seconds_created"}
    text = generate_latest(m.registry).decode()
    assert 'interlink_reply_seconds_bucket{channel="a",le="+Inf"} 3.0' in text
    assert "# TYPE interlink_messages_received_total counter" in text
