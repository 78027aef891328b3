"""schemathesis against the served OpenAPI document: generated requests to every operation of the running
server (a webhook channel open to all, so bodies get past authentication); no answer is a 5xx, and every
status, content type, header and body matches the document."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.api.openapi import document
from tests.api.running import RunningEngine, webhook_channel


@schemathesis.serializer("application/hl7-v2", "x-application/hl7-v2+er7")
def _hl7_text(ctx: object, value: object) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


schema = schemathesis.openapi.from_dict(document())
#: what the document promises: no 5xx, and every answer as documented. (Acceptance of any schema-valid body
#: is not promised: a body can satisfy the JSON Schema and still not be valid FHIR.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp = tmp_path_factory.mktemp("openapi")
    channel = webhook_channel("events", out=tmp / "out", max_bytes=4096)
    with RunningEngine(tmp, [channel]) as running:
        yield running


def test_the_served_document_is_the_one_tested(eng: RunningEngine) -> None:
    assert httpx.get(f"{eng.url}/openapi.json").json() == document()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case: schemathesis.Case, eng: RunningEngine) -> None:
    if "channel" in (case.path_parameters or {}):
        case.path_parameters["channel"] = "events"  # the running channel: bodies are read, not just 404
    case.call_and_validate(base_url=eng.url, checks=CHECKS)
