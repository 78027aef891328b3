from __future__ import annotations

import errno
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import ValidationError

from engine.destinations import (
    DestinationError,
    HttpConfig,
    HttpDestination,
    Outcome,
    Result,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from engine.destinations.base import describe, failure_result


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_sent(status: int) -> None:
    assert classify(status) is Outcome.SENT


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_5xx_retry(status: int) -> None:
    assert classify(status) is Outcome.RETRY


@pytest.mark.parametrize("status", [100, 301, 304, 400, 401, 403, 404, 409, 410, 412, 422, 600])
def test_other_statuses_are_permanent(status: int) -> None:
    assert classify(status) is Outcome.PERMANENT


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("t"),
        httpx.ReadTimeout("t"),
        httpx.PoolTimeout("t"),
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("closed"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_network_and_io_errors_retry(exc: BaseException) -> None:
    assert classify(exc) is Outcome.RETRY


@pytest.mark.parametrize(
    "exc",
    [
        httpx.UnsupportedProtocol("ftp"),
        httpx.LocalProtocolError("bad header"),
        TypeError("not serialisable"),
        KeyError("x"),
        DestinationError("cycle", outcome=Outcome.PERMANENT),
    ],
)
def test_request_faults_and_unknown_errors_are_permanent(exc: BaseException) -> None:
    assert classify(exc) is Outcome.PERMANENT


def test_destination_error_carries_its_outcome() -> None:
    exc = DestinationError("token endpoint: HTTP 503", outcome=Outcome.RETRY, status_code=503)
    result = failure_result(exc, request=b"{}")
    assert result == Result(
        Outcome.RETRY, status_code=503, error="token endpoint: HTTP 503", request=b"{}", response=None
    )


def test_describe_keeps_exception_text_out_unless_known_safe() -> None:
    assert describe(ValueError("Patient Alex Testperson, born 1970-01-01")) == "ValueError"
    assert describe(OSError(errno.ENOSPC, "No space left on device", "/x")) == "OSError: No space left on device"
    assert describe(httpx.ConnectError("[Errno 111] Connection refused")) == (
        "ConnectError: [Errno 111] Connection refused"
    )
    assert describe(httpx.RemoteProtocolError("illegal header line: bytearray(b'X-Echo: Testperson')")) == (
        "RemoteProtocolError: illegal header line…"
    )
    assert describe(httpx.ReadError('peer said "Testperson"')) == "ReadError: peer said…"
    assert describe(httpx.ReadError("x" * 300)) == "ReadError: " + "x" * 200 + "…"


@pytest.mark.parametrize(
    "reply",
    [
        b"ZQXSECRET4711 is not a status line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nZQXSECRET4711 no colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ZQXSECRET4711\r\n\r\n",
    ],
)
def test_what_a_broken_peer_sends_stays_out_of_the_error(reply: bytes) -> None:
    """A real server answering garbage: h11 quotes it in its exception; the Result's error must not."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        config = HttpConfig(type="http", name="out", url=f"http://127.0.0.1:{server.getsockname()[1]}/in", timeout_s=5)
        dest = HttpDestination(config)
        try:
            result = dest.send({"resourceType": "Bundle"}, message_id="m")
        finally:
            dest.close()
        t.join(5)
    assert result.outcome is Outcome.RETRY
    assert result.error is not None and result.error.startswith("RemoteProtocolError")
    assert "ZQXSECRET4711" not in result.error


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Sat, 01 Mar 2025 12:02:00 GMT", 120.0),
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),
        ("-5", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def samples(policy: RetryPolicy, attempt: int, n: int = 200) -> list[int]:
    return [policy.delay_ms(attempt, None) for _ in range(n)]


def test_backoff_grows_with_jitter_within_bounds() -> None:
    policy = RetryPolicy(min_backoff_ms=1000, max_backoff_ms=60_000)
    previous_max = 0
    for attempt in range(1, 7):
        ceiling = min(60_000, 1000 * 2 ** (attempt - 1))
        delays = samples(policy, attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 10  # jittered
        assert min(delays) >= previous_max  # never shorter than any delay of the attempt before
        previous_max = max(delays)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(min_backoff_ms=1000, max_backoff_ms=30_000)
    assert all(15_000 <= d <= 30_000 for d in samples(policy, 50) + samples(policy, 10_000))


def test_retry_after_is_a_floor_capped_by_max_retry_after() -> None:
    policy = RetryPolicy(min_backoff_ms=1000, max_backoff_ms=8000, max_retry_after_s=600)
    assert all(d >= 30_000 for d in (policy.delay_ms(1, 30) for _ in range(50)))
    assert policy.delay_ms(1, 86_400) == 600_000
    # a Retry-After shorter than the backoff does not shorten it
    assert all(d >= 4000 for d in (policy.delay_ms(4, 0.5) for _ in range(50)))


def test_retry_policy_defaults_and_validation() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.min_backoff_ms, policy.max_backoff_ms) == (10, 1000, 300_000)
    assert not policy.exhausted(9) and policy.exhausted(10)
    with pytest.raises(ValidationError, match="min_backoff_ms"):
        RetryPolicy(min_backoff_ms=10_000, max_backoff_ms=1000)
    with pytest.raises(ValidationError):
        RetryPolicy(backoff_ms=1)  # type: ignore[call-arg]
