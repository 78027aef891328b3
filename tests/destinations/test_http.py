from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import certifi
import httpx
import orjson
import pytest

from engine.destinations import (
    Destination,
    FhirConfig,
    FhirDestination,
    FileConfig,
    FileDestination,
    HttpConfig,
    HttpDestination,
    Outcome,
    make_destination,
)
from engine.destinations.http import outcome_reason

BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": []}

Handler = Callable[[httpx.Request], httpx.Response]


def http(handler: Handler, **options: object) -> HttpDestination:
    config = HttpConfig.model_validate({"type": "http", "name": "out", "url": "https://api.test/in", **options})
    return HttpDestination(config, transport=httpx.MockTransport(handler))


def reply(status: int, body: bytes = b"", **headers: str) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


def test_2xx_is_sent_with_exact_request_and_response() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=b'{"ok":true}')

    dest = http(handler, headers={"X-Site": "north", "content-type": "application/vnd.test+json"})
    result = dest.send(BUNDLE, message_id="m-1")
    assert result.outcome is Outcome.SENT
    assert (result.status_code, result.error, result.retry_after_s) == (201, None, None)
    assert result.request == orjson.dumps(BUNDLE) == seen[0].content
    assert result.response == b'{"ok":true}'
    request = seen[0]
    assert (request.method, str(request.url)) == ("POST", "https://api.test/in")
    assert request.headers["X-Interlink-Message-Id"] == "m-1"
    assert request.headers["X-Site"] == "north"
    assert request.headers.get_list("Content-Type") == ["application/vnd.test+json"]


def test_503_with_retry_after_seconds() -> None:
    result = http(reply(503, b"busy", **{"Retry-After": "7"})).send(BUNDLE, message_id="m")
    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.RETRY, 503, 7.0)
    assert result.error == "HTTP 503"
    assert result.response == b"busy"


def test_503_with_retry_after_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    result = http(reply(503, **{"Retry-After": when})).send(BUNDLE, message_id="m")
    assert result.outcome is Outcome.RETRY
    assert result.retry_after_s is not None and 100 <= result.retry_after_s <= 120


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses(status: int) -> None:
    result = http(reply(status)).send(BUNDLE, message_id="m")
    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.RETRY, status, None)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_other_4xx_permanent_ignoring_retry_after(status: int) -> None:
    result = http(reply(status, **{"Retry-After": "5"})).send(BUNDLE, message_id="m")
    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.PERMANENT, status, None)
    assert result.error == f"HTTP {status}"


OUTCOME = orjson.dumps(
    {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Invalid value 'Alex Testperson 1970-01-01'",
                "expression": ["Patient.birthDate"],
            },
            {"severity": "error", "code": "required", "location": ["Patient.name[0]"]},
            {"severity": "error", "code": "value", "expression": ["Patient.identifier.where(value='MRN-77')"]},
        ],
    }
)


def test_operation_outcome_gives_codes_and_paths_never_diagnostics() -> None:
    result = http(reply(422, OUTCOME)).send(BUNDLE, message_id="m")
    assert result.outcome is Outcome.PERMANENT
    assert result.error == (
        "HTTP 422: OperationOutcome error invalid at Patient.birthDate; error required at Patient.name[0]; "
        "error value at Patient.identifier.where(…)"
    )
    assert "Testperson" not in result.error and "MRN-77" not in result.error
    assert outcome_reason(b"<html>") is None
    assert outcome_reason(b'{"resourceType": "Patient"}') is None


def test_timeout_is_retry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result = http(handler).send(BUNDLE, message_id="m")
    assert (result.outcome, result.status_code) == (Outcome.RETRY, None)
    assert result.error == "ReadTimeout: timed out"
    assert result.request == orjson.dumps(BUNDLE)


def test_connection_refused_is_retry() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = HttpConfig(type="http", name="out", url=f"http://127.0.0.1:{port}/in", timeout_s=2)
    dest = HttpDestination(config)
    try:
        result = dest.send(BUNDLE, message_id="m")
    finally:
        dest.close()
    assert result.outcome is Outcome.RETRY
    assert result.error is not None and result.error.startswith("ConnectError")


def test_unserialisable_bundle_is_permanent_not_raised() -> None:
    result = http(reply(200)).send({"resourceType": "Bundle", "x": {1, 2}}, message_id="m")
    assert result.outcome is Outcome.PERMANENT
    assert result.error == "bundle is not JSON-serialisable"


def test_make_destination_builds_each_kind(tmp_path: Path) -> None:
    transport = httpx.MockTransport(reply(200))
    made = [
        make_destination(FhirConfig(type="fhir", name="a", base_url="https://ehr.test/fhir"), transport=transport),
        make_destination(HttpConfig(type="http", name="b", url="https://api.test/in"), transport=transport),
        make_destination(FileConfig(type="file", name="c", path=f"{tmp_path}/out.ndjson")),
    ]
    assert [type(d) for d in made] == [FhirDestination, HttpDestination, FileDestination]
    assert [d.name for d in made] == ["a", "b", "c"]
    for d in made:
        assert isinstance(d, Destination)
        d.close()


def test_config_is_strict_and_described() -> None:
    with pytest.raises(ValueError, match="timeout"):
        HttpConfig.model_validate({"type": "http", "name": "b", "url": "https://x", "timeout": 3})
    for model in (HttpConfig, FhirConfig, FileConfig):
        assert all(field.description for field in model.model_fields.values()), model
    assert HttpConfig(type="http", name="b", url="https://x").retry.max_attempts == 10


def test_tls_options_build_a_client(tmp_path: Path) -> None:
    HttpDestination(HttpConfig(type="http", name="b", url="https://x", ca_file=certifi.where())).close()
    HttpDestination(HttpConfig(type="http", name="b", url="https://x", verify_tls=False)).close()
    with pytest.raises(FileNotFoundError):  # a wrong ca_file fails when the channel starts, not per message
        HttpDestination(HttpConfig(type="http", name="b", url="https://x", ca_file=str(tmp_path / "none.pem")))
