"""A result's ServiceRequest is written create-only: it never overwrites the order message's, whichever comes first.

ORU^R01 maps the report's order (OBR) to a ServiceRequest with ``write: create``: the bundle entry is
``POST ServiceRequest`` + ``ifNoneExist`` on the order's identity. Against Medplum's router
(tests/fhir_server): the ORM's ServiceRequest survives the ORU, and an ORU before its ORM makes the
ServiceRequest that the ORM then updates in place (one resource, the report based on it either way).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import hl7v2
from engine.destinations import FhirConfig, FhirDestination, Outcome
from engine.transform import MappingSet, load_mappings
from tests.fhir_server.launch import FhirTestServer

pytestmark = pytest.mark.integration

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"

ORM = (
    "MSH|^~\\&|EHR|GENHOSP|LABSYS|CITYLAB|20240101090000||ORM^O01|O-1|P|2.5.1\r"
    "PID|1||P100^^^GENHOSP^MR||DOE^JOHN||19700101|M\r"
    "ORC|NW|ORD9^EHR|||SC||||20240101090000|||1234^ORDERING^DOC\r"
    "OBR|1|ORD9^EHR||24323-8^Panel^LN|R||20240101090000\r"
    "NTE|1||fasting sample\r"
)
ORU = (
    "MSH|^~\\&|LABSYS|CITYLAB|EHR|GENHOSP|20240101120000||ORU^R01|R-1|P|2.5.1\r"
    "PID|1||P100^^^GENHOSP^MR||DOE^JOHN||19700101|M\r"
    "OBR|1|ORD9^EHR|F9^CITYLAB|24323-8^Panel^LN|||202401011030||||||||||||||||||F\r"
    "OBX|1|NM|2345-7^Glucose^LN||5.1|mmol/L|||||F\r"
)


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


@pytest.fixture
def dest(fhir: FhirTestServer) -> Iterator[FhirDestination]:
    d = FhirDestination(FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url, timeout_s=10))
    yield d
    d.close()


def _deliver(ms: MappingSet, dest: FhirDestination, raw: str, message_id: str) -> dict[str, Any]:
    bundle = ms.transform(hl7v2.Message.parse(raw), validation="full")
    result = dest.send(bundle, message_id=message_id)
    assert result.outcome is Outcome.SENT, result.error
    return bundle


def test_the_result_never_overwrites_the_order(
    fhir: FhirTestServer, dest: FhirDestination, mappings: MappingSet
) -> None:
    _deliver(mappings, dest, ORM, "m-orm")
    (before,) = fhir.search("ServiceRequest")
    assert before["status"] == "active" and before["note"][0]["text"] == "fasting sample"
    bundle = _deliver(mappings, dest, ORU, "m-oru")
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    assert entry["request"]["method"] == "POST" and entry["request"]["ifNoneExist"].endswith("|ORD9")
    (after,) = fhir.search("ServiceRequest")
    assert after == before  # same id, same version, the ORM's content (status, requester, note) intact
    (report,) = fhir.search("DiagnosticReport")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{before['id']}"}]


def test_a_result_before_its_order_makes_the_request_the_order_then_updates(
    fhir: FhirTestServer, dest: FhirDestination, mappings: MappingSet
) -> None:
    _deliver(mappings, dest, ORU, "m-oru")
    (made,) = fhir.search("ServiceRequest")
    assert made["status"] == "unknown"
    _deliver(mappings, dest, ORM, "m-orm")
    (updated,) = fhir.search("ServiceRequest")
    assert (updated["id"], updated["status"]) == (made["id"], "active")
    (report,) = fhir.search("DiagnosticReport")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{made['id']}"}]
