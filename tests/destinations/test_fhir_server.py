"""The FHIR destination against Medplum's router (tests/fhir_server): real transactions, real limits.

The ``fhir`` fixture (a reset ``FhirTestServer``) comes from ``tests.fhir_server.fixtures``, which the
root ``tests/conftest.py`` registers as a plugin.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from engine.destinations import FhirConfig, FhirDestination, Outcome
from tests.fhir_server.launch import FhirTestServer

from . import SYSTEM, lab_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def dest(fhir: FhirTestServer) -> Iterator[FhirDestination]:
    d = FhirDestination(FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url, timeout_s=10))
    yield d
    d.close()


def assert_lab_result_stored_once(fhir: FhirTestServer) -> None:
    counts = {t: fhir.count(t) for t in ("Patient", "Encounter", "Observation", "DiagnosticReport")}
    assert counts == {"Patient": 1, "Encounter": 1, "Observation": 8, "DiagnosticReport": 1}
    (patient,) = fhir.search("Patient")
    (encounter,) = fhir.search("Encounter")
    observations = fhir.search("Observation")
    (report,) = fhir.search("DiagnosticReport", identifier=f"{SYSTEM}|RPT-1")
    assert {r["reference"] for r in report["result"]} == {f"Observation/{o['id']}" for o in observations}
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    assert report["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    for o in observations:
        assert o["subject"]["reference"] == f"Patient/{patient['id']}"
        assert o["encounter"]["reference"] == f"Encounter/{encounter['id']}"


def test_eleven_entries_delivered_twice_exist_once(fhir: FhirTestServer, dest: FhirDestination) -> None:
    bundle = lab_bundle()
    for _ in range(2):
        result = dest.send(bundle, message_id="m-1")
        assert result.outcome is Outcome.SENT, result.error
    assert_lab_result_stored_once(fhir)


def test_server_refuses_a_conditional_transaction_over_eight_entries(fhir: FhirTestServer) -> None:
    config = FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url, max_entries_per_transaction=11)
    unsplit = FhirDestination(config)
    try:
        result = unsplit.send(lab_bundle(), message_id="m-1")
    finally:
        unsplit.close()
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 400)
    assert fhir.count("Patient") == 0


def test_503_then_success(fhir: FhirTestServer, dest: FhirDestination) -> None:
    fhir.fail_next(503, count=1, retry_after=2)
    first = dest.send(lab_bundle(), message_id="m-1")
    assert (first.outcome, first.status_code, first.retry_after_s) == (Outcome.RETRY, 503, 2.0)
    second = dest.send(lab_bundle(), message_id="m-1")
    assert second.outcome is Outcome.SENT, second.error
    assert_lab_result_stored_once(fhir)


def test_resend_after_the_second_transaction_failed(fhir: FhirTestServer) -> None:
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
