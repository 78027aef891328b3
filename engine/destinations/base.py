"""What every destination shares: the outcome of a send, the one classifier, and the retry policy.

``classify`` is the single place that decides whether a delivery problem is worth retrying:

    2xx                                      → SENT
    408, 429, 5xx, timeouts, network errors, → RETRY
    I/O errors (disk full)
    other statuses, malformed requests,      → PERMANENT
    anything unexpected
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import httpx
import orjson
from pydantic import Field, model_validator

from engine.config.model import Model
from engine.errors import DeliveryError


class Outcome(StrEnum):
    """How a delivery attempt ended."""

    SENT = "sent"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one ``Destination.send`` call, with what was sent and received.

    ``status_code`` is the HTTP status that decided the outcome: the last response's, or, in a FHIR
    transaction-response, the worst entry's. ``error`` is short and PHI-free.
    """

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    request: bytes | None = None
    response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """Whether a destination can be reached now, with a short PHI-free reason when not."""

    ok: bool
    detail: str = ""


@runtime_checkable
class Destination(Protocol):
    """Where bundles go. ``send`` is synchronous, thread-safe and never raises for delivery problems;
    ``healthcheck`` says whether the system behind it answers (for readiness checks), quickly."""

    name: str

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result: ...

    def healthcheck(self) -> Health: ...

    def close(self) -> None: ...


class DestinationSettings(Protocol):
    """What every destination kind's config has (for type checking; the channel validates the real models)."""

    @property
    def type(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def retry(self) -> RetryPolicy: ...

    def target(self) -> str: ...


@runtime_checkable
class ConditionalWrites(Protocol):
    """A destination whose writes replace resources found by business identity (FHIR conditional updates).

    The pipeline's stale-write guard uses it: ``overwrites`` names the resources a bundle would replace
    (by their deterministic ``fullUrl``); ``keep_existing`` returns the bundle with those resources written
    only if absent, never over what the target holds (their references still resolve).
    """

    def overwrites(self, bundle: dict[str, Any]) -> list[str]: ...

    def keep_existing(self, bundle: dict[str, Any], resources: set[str]) -> dict[str, Any]: ...


class DestinationError(DeliveryError):
    """A delivery problem found by a destination itself; ``outcome`` was decided by ``classify``."""

    def __init__(self, message: str, *, outcome: Outcome, status_code: int | None = None) -> None:
        self.outcome = outcome
        self.status_code = status_code
        super().__init__(message)


_PERMANENT_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)


def classify(failure: int | BaseException) -> Outcome:
    """Map an HTTP status code or an exception raised while delivering to an ``Outcome``."""
    if isinstance(failure, int):
        if 200 <= failure < 300:
            return Outcome.SENT
        if failure in (408, 429) or 500 <= failure < 600:
            return Outcome.RETRY
        return Outcome.PERMANENT
    if isinstance(failure, DestinationError):
        return failure.outcome
    if isinstance(failure, _PERMANENT_TRANSPORT):
        return Outcome.PERMANENT
    if isinstance(failure, httpx.RequestError | OSError):
        return Outcome.RETRY
    return Outcome.PERMANENT


def describe(exc: BaseException) -> str:
    """A short, PHI-free reason for an exception: its type, plus the text of errors known to be safe."""
    name = type(exc).__name__
    if isinstance(exc, DestinationError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    if isinstance(exc, httpx.TransportError) and str(exc):
        # Transport errors describe the connection (refused, reset, timed out, TLS), but a protocol error
        # quotes what the peer sent (h11: "illegal status line: bytearray(b'…')"): cut at the first quote.
        return f"{name}: {_unquoted(str(exc))}"
    return name


_QUOTE = re.compile(r"""b'|b"|bytearray\(|['"`{<]|[^ -~]""")


def _unquoted(text: str, limit: int = 200) -> str:
    """``text`` up to its first quoted or non-printable part (with ``…`` when cut), at most ``limit`` chars."""
    found = _QUOTE.search(text[:limit])
    if found is None and len(text) <= limit:
        return text
    end = found.start() if found else limit
    return text[:end].rstrip(" :(") + "…"


def failure_result(exc: BaseException, *, request: bytes | None = None) -> Result:
    """The Result for an exception raised while delivering."""
    status = exc.status_code if isinstance(exc, DestinationError) else None
    return Result(classify(exc), status_code=status, error=describe(exc), request=request)


def to_json(bundle: dict[str, Any]) -> bytes:
    """The bundle as compact JSON; a bundle that cannot be serialised is a PERMANENT DestinationError."""
    try:
        return orjson.dumps(bundle)
    except TypeError:  # orjson.JSONEncodeError
        raise DestinationError("bundle is not JSON-serialisable", outcome=Outcome.PERMANENT) from None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RetryPolicy(Model):
    """How often and how patiently a destination is retried."""

    max_attempts: int = Field(10, ge=1, description="Attempts in all (the first one included) before dead.")
    min_backoff_ms: int = Field(1000, ge=0, description="Delay after the first failed attempt (ms).")
    max_backoff_ms: int = Field(300_000, ge=0, description="Longest delay computed by backoff (ms).")
    max_retry_after_s: float = Field(
        3600, ge=0, description="Longest a server's Retry-After is honoured (s); longer values are capped."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetryPolicy:
        if self.min_backoff_ms > self.max_backoff_ms:
            raise ValueError("min_backoff_ms must not exceed max_backoff_ms")
        return self

    def delay_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Delay before the next attempt, after attempt number ``attempt`` (1-based) failed.

        Exponential backoff (doubling from ``min_backoff_ms``, capped at ``max_backoff_ms``) with equal
        jitter (a random value in the upper half), and never less than the server's Retry-After (itself
        capped at ``max_retry_after_s``).
        """
        exponent = min(max(attempt, 1) - 1, 62)
        ceiling = min(self.max_backoff_ms, self.min_backoff_ms * 2**exponent)
        delay = ceiling / 2 + random.random() * ceiling / 2
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s) * 1000)
        return round(delay)

    def exhausted(self, attempt: int) -> bool:
        """True when attempt number ``attempt`` (1-based) was the last one allowed."""
        return attempt >= self.max_attempts
