"""The FHIR destination against Medplum's router (tests/fhir_server): real transactions, real limits.

The ``fhir`` fixture (a reset ``FhirTestServer``) comes from ``tests.fhir_server.fixtures``, which the
root ``tests/conftest.py`` registers as a plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.destinations import FhirConfig, FhirDestination, Outcome

from . import SYSTEM, lab_bundle

pytestmark = pytest.mark.integration
pytest.importorskip("tests.fhir_server.fixtures", reason="the FHIR test server is not in this checkout")


@pytest.fixture
def dest(fhir: Any) -> Iterator[FhirDestination]:
    d = FhirDestination(FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url, timeout_s=10))
    yield d
    d.close()


def search(fhir: Any, resource_type: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{fhir.base_url}/{resource_type}", params={**params, "_count": "100"}, timeout=10)
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry", [])]


def assert_lab_result_stored_once(fhir: Any) -> None:
    counts = {t: fhir.count(t) for t in ("Patient", "Encounter", "Observation", "DiagnosticReport")}
    assert counts == {"Patient": 1, "Encounter": 1, "Observation": 8, "DiagnosticReport": 1}
    (patient,) = search(fhir, "Patient")
    (encounter,) = search(fhir, "Encounter")
    observations = search(fhir, "Observation")
    (report,) = search(fhir, "DiagnosticReport", identifier=f"{SYSTEM}|RPT-1")
    assert {r["reference"] for r in report["result"]} == {f"Observation/{o['id']}" for o in observations}
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    assert report["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    for o in observations:
        assert o["subject"]["reference"] == f"Patient/{patient['id']}"
        assert o["encounter"]["reference"] == f"Encounter/{encounter['id']}"


def test_eleven_entries_delivered_twice_exist_once(fhir: Any, dest: FhirDestination) -> None:
    bundle = lab_bundle()
    for _ in range(2):
        result = dest.send(bundle, message_id="m-1")
        assert result.outcome is Outcome.SENT, result.error
    assert_lab_result_stored_once(fhir)


def test_server_refuses_a_conditional_transaction_over_eight_entries(fhir: Any) -> None:
    config = FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url, max_entries_per_transaction=11)
    unsplit = FhirDestination(config)
    try:
        result = unsplit.send(lab_bundle(), message_id="m-1")
    finally:
        unsplit.close()
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 400)
    assert fhir.count("Patient") == 0


def test_503_then_success(fhir: Any, dest: FhirDestination) -> None:
    fhir.fail_next(503, count=1, retry_after=2)
    first = dest.send(lab_bundle(), message_id="m-1")
    assert (first.outcome, first.status_code, first.retry_after_s) == (Outcome.RETRY, 503, 2.0)
    second = dest.send(lab_bundle(), message_id="m-1")
    assert second.outcome is Outcome.SENT, second.error
    assert_lab_result_stored_once(fhir)


def test_resend_after_the_second_transaction_failed(fhir: Any) -> None:
    """The first transaction lands, the second is lost: resending everything duplicates nothing."""
    calls = 0
    network = httpx.HTTPTransport()

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise httpx.ReadTimeout("timed out", request=request)
        return network.handle_request(request)

    config = FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url)
    d = FhirDestination(config, transport=httpx.MockTransport(flaky))
    try:
        first = d.send(lab_bundle(), message_id="m-1")
        assert (first.outcome, first.error) == (Outcome.RETRY, "transaction 2/2: ReadTimeout: timed out")
        assert fhir.count("Patient") == 1
        assert d.send(lab_bundle(), message_id="m-1").outcome is Outcome.SENT
    finally:
        d.close()
        network.close()
    assert_lab_result_stored_once(fhir)
