"""Tests of the FHIR test server wrapper: the Medplum behaviour the engine relies on, and what we add."""

from __future__ import annotations

import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fhir_server.launch import FhirServerError, FhirServerUnavailable, FhirTestServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(parts))}"


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def patient_entry(mrn: str, family: str = "Doe") -> dict[str, Any]:
    return {
        "fullUrl": urn("Patient", mrn),
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": mrn}],
            "name": [{"family": family}],
        },
        "request": {"method": "PUT", "url": f"Patient?identifier=urn:mrn|{mrn}"},
    }


def encounter_entry(visit: str, patient: str) -> dict[str, Any]:
    return {
        "fullUrl": urn("Encounter", visit),
        "resource": {
            "resourceType": "Encounter",
            "identifier": [{"system": "urn:visit", "value": visit}],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": patient},
        },
        "request": {"method": "PUT", "url": f"Encounter?identifier=urn:visit|{visit}"},
    }


def observation_entry(obs_id: str, patient: str, encounter: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:obs", "value": obs_id}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": patient},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    if encounter:
        resource["encounter"] = {"reference": encounter}
    return {
        "fullUrl": urn("Observation", obs_id),
        "resource": resource,
        "request": {"method": "PUT", "url": f"Observation?identifier=urn:obs|{obs_id}"},
    }


def visit_bundle(mrn: str, visit: str, observations: int) -> dict[str, Any]:
    """A Patient, an Encounter and Observations, all conditional PUTs linked by urn:uuid."""
    patient = patient_entry(mrn)
    encounter = encounter_entry(visit, patient["fullUrl"])
    obs = [observation_entry(f"{visit}-{i}", patient["fullUrl"], encounter["fullUrl"]) for i in range(observations)]
    return transaction(patient, encounter, *obs)


def post(server: FhirTestServer, path: str, body: Any) -> httpx.Response:
    return server.client.post(f"{server.base_url}/{path}", json=body, headers=FHIR_JSON)


def issue_text(response: httpx.Response) -> str:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(issue.get("details", {}).get("text", "") for issue in outcome["issue"])


@pytest.mark.integration
def test_conditional_put_transaction_twice_stores_one_of_each(fhir: FhirTestServer) -> None:
    bundle = visit_bundle("M1", "V1", observations=6)

    first = post(fhir, "", bundle)
    second = post(fhir, "", bundle)

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert [e["response"]["status"] for e in first.json()["entry"]] == ["201"] * 8
    assert [e["response"]["status"] for e in second.json()["entry"]] == ["200"] * 8
    assert fhir.count("Patient", identifier="urn:mrn|M1") == 1
    assert fhir.count("Encounter") == 1
    assert fhir.count("Observation") == 6
    first_ids = [e["resource"]["id"] for e in first.json()["entry"]]
    assert [e["resource"]["id"] for e in second.json()["entry"]] == first_ids


@pytest.mark.integration
def test_urn_uuid_references_are_rewritten_to_real_ids(fhir: FhirTestServer) -> None:
    response = post(fhir, "", visit_bundle("M2", "V2", observations=2))
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    patient_id, encounter_id = entries[0]["resource"]["id"], entries[1]["resource"]["id"]

    assert entries[0]["response"]["location"] == f"Patient/{patient_id}"
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{patient_id}"}
    observations = fhir.search("Observation", subject=f"Patient/{patient_id}")
    assert len(observations) == 2
    for obs in observations:
        assert obs["subject"]["reference"] == f"Patient/{patient_id}"
        assert obs["encounter"]["reference"] == f"Encounter/{encounter_id}"
    assert fhir.count("Observation", encounter=f"Encounter/{encounter_id}") == 2


@pytest.mark.integration
def test_if_none_exist_creates_once(fhir: FhirTestServer) -> None:
    entry = {
        "fullUrl": urn("Practitioner", "1"),
        "resource": {"resourceType": "Practitioner", "identifier": [{"system": "urn:npi", "value": "1"}]},
        "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=urn:npi|1"},
    }
    statuses = [post(fhir, "", transaction(entry)).json()["entry"][0]["response"]["status"] for _ in range(2)]
    direct = fhir.client.post(
        f"{fhir.base_url}/Practitioner",
        json=entry["resource"],
        headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:npi|1"},
    )

    assert statuses == ["201", "200"]
    assert direct.status_code == 200
    assert fhir.count("Practitioner") == 1


@pytest.mark.integration
def test_create_answers_201_with_location_and_etag(fhir: FhirTestServer) -> None:
    response = post(fhir, "Patient", {"resourceType": "Patient", "id": "mine", "gender": "female"})

    assert response.status_code == 201
    created = response.json()
    assert created["id"] != "mine"  # server-assigned, as Medplum does
    assert response.headers["location"] == f"{fhir.base_url}/Patient/{created['id']}"
    assert response.headers["etag"] == f'W/"{created["meta"]["versionId"]}"'
    assert response.headers["content-type"].startswith("application/fhir+json")


@pytest.mark.integration
def test_conditional_references_resolve_or_fail(fhir: FhirTestServer) -> None:
    assert post(fhir, "", transaction(patient_entry("M3"))).status_code == 200
    patient_id = fhir.search("Patient", identifier="urn:mrn|M3")[0]["id"]

    resolved = post(fhir, "Observation", observation_entry("o1", "Patient?identifier=urn:mrn|M3")["resource"])
    missing = post(fhir, "Observation", observation_entry("o2", "Patient?identifier=urn:mrn|NONE")["resource"])

    assert resolved.status_code == 201, resolved.text
    assert resolved.json()["subject"]["reference"] == f"Patient/{patient_id}"
    assert missing.status_code == 400
    assert "did not match" in issue_text(missing)
    assert fhir.count("Observation") == 1


@pytest.mark.integration
def test_conditional_transaction_over_8_entries_is_refused(fhir: FhirTestServer) -> None:
    response = post(fhir, "", visit_bundle("M4", "V4", observations=7))

    assert response.status_code == 400
    assert "strict isolation" in issue_text(response)
    assert fhir.stats()["total"] == 0


@pytest.mark.integration
def test_conditional_references_count_for_strict_isolation(fhir: FhirTestServer) -> None:
    entries = [observation_entry(f"c{i}", "Patient?identifier=urn:mrn|M5") for i in range(9)]
    for entry in entries:
        entry["request"] = {"method": "POST", "url": "Observation"}

    response = post(fhir, "", transaction(*entries))

    assert response.status_code == 400
    assert "strict isolation" in issue_text(response)


@pytest.mark.integration
def test_unconditional_transaction_may_exceed_8_entries(fhir: FhirTestServer) -> None:
    entries = [
        {"resource": {"resourceType": "Patient", "gender": "other"}, "request": {"method": "POST", "url": "Patient"}}
        for _ in range(20)
    ]

    response = post(fhir, "", transaction(*entries))

    assert response.status_code == 200, response.text
    assert fhir.count("Patient") == 20


@pytest.mark.integration
def test_more_than_50_updates_are_refused(fhir: FhirTestServer) -> None:
    def updates(n: int) -> dict[str, Any]:
        return transaction(
            *(
                {
                    "resource": {"resourceType": "Patient", "id": f"p{i}"},
                    "request": {"method": "PUT", "url": f"Patient/p{i}"},
                }
                for i in range(n)
            )
        )

    refused = post(fhir, "", updates(51))
    assert refused.status_code == 400
    assert "more update operations than allowed" in issue_text(refused)
    assert fhir.count("Patient") == 0
    assert post(fhir, "", updates(50)).status_code == 200
    assert fhir.count("Patient") == 50


@pytest.mark.integration
def test_invalid_resources_are_rejected(fhir: FhirTestServer) -> None:
    unknown = post(fhir, "Patient", {"resourceType": "Patient", "colour": "blue"})
    missing = post(fhir, "Observation", {"resourceType": "Observation", "status": "final"})

    assert unknown.status_code == 400
    assert "colour" in issue_text(unknown)
    assert missing.status_code == 400
    assert missing.json()["issue"][0]["expression"] == ["Observation.code"]
    assert fhir.stats()["total"] == 0


@pytest.mark.integration
def test_failed_transaction_leaves_nothing_behind(fhir: FhirTestServer) -> None:
    assert post(fhir, "", transaction(patient_entry("M6", family="Before"))).status_code == 200
    bad_obs = observation_entry("bad", urn("Patient", "M6"))
    bad_obs["resource"]["colour"] = "blue"
    changed = patient_entry("M6", family="After")
    changed["resource"]["identifier"].append({"system": "urn:other", "value": "X6"})

    response = post(fhir, "", transaction(changed, observation_entry("ok", urn("Patient", "M6")), bad_obs))

    assert response.status_code == 400
    assert "colour" in issue_text(response)
    assert fhir.count("Observation") == 0
    (patient,) = fhir.search("Patient", identifier="urn:mrn|M6")
    assert patient["name"] == [{"family": "Before"}]
    assert fhir.count("Patient", identifier="urn:other|X6") == 0  # the index was rolled back too
    assert fhir.stats()["rollbacks"] == 1


@pytest.mark.integration
def test_duplicate_identity_in_one_transaction_fails_whole(fhir: FhirTestServer) -> None:
    twin = patient_entry("M7")
    twin["fullUrl"] = urn("Patient", "M7", "twin")

    response = post(fhir, "", transaction(patient_entry("M7"), twin))

    assert response.status_code == 400
    assert fhir.count("Patient") == 0


@pytest.mark.integration
def test_injected_503_with_retry_after_then_recovery(fhir: FhirTestServer) -> None:
    fhir.fail_next(503, count=2, retry_after=1)
    first = fhir.client.get(f"{fhir.base_url}/Patient")
    second = post(fhir, "Patient", {"resourceType": "Patient"})
    third = fhir.client.get(f"{fhir.base_url}/Patient")

    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert first.headers["retry-after"] == "1"
    assert first.json()["resourceType"] == "OperationOutcome"
    stats = fhir.stats()
    assert stats["injected_failures"] == 2
    assert stats["total"] == 0  # the failed POST never reached the repository


@pytest.mark.integration
def test_injected_failure_with_custom_body_and_no_retry_after(fhir: FhirTestServer) -> None:
    fhir.fail_next(
        429, body={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "throttled"}]}
    )
    response = fhir.client.get(f"{fhir.base_url}/Patient")

    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert response.json()["issue"][0]["code"] == "throttled"
    assert fhir.client.get(f"{fhir.base_url}/Patient").status_code == 200


@pytest.mark.integration
def test_unknown_search_parameter_is_refused(fhir: FhirTestServer) -> None:
    search = fhir.client.get(f"{fhir.base_url}/Patient", params={"identifer": "urn:mrn|1"})
    entry = patient_entry("M8")
    entry["request"]["url"] = "Patient?identifer=urn:mrn|M8"
    conditional = post(fhir, "", transaction(entry))
    chained = fhir.client.get(f"{fhir.base_url}/Observation", params={"subject.identifier": "urn:mrn|1"})

    assert search.status_code == 400
    assert "Unknown search parameter: identifer" in issue_text(search)
    assert conditional.status_code == 400
    assert chained.status_code == 400
    assert fhir.count("Patient") == 0


@pytest.mark.integration
def test_search_helpers_page_and_count(fhir: FhirTestServer) -> None:
    entries = [observation_entry(f"p{i}", "Patient/abc") for i in range(25)]
    for entry in entries:
        entry["request"] = {"method": "POST", "url": "Observation"}
    assert post(fhir, "", transaction(*entries)).status_code == 200

    page = fhir.client.get(f"{fhir.base_url}/Observation", params={"subject": "Patient/abc", "_count": 10}).json()

    assert len(page["entry"]) == 10
    assert page["total"] == 25
    assert len(fhir.search("Observation", subject="Patient/abc", _count=10)) == 25
    assert len(fhir.search("Observation", identifier="urn:obs|p7")) == 1
    assert fhir.count("Observation", identifier="p7") == 1
    assert fhir.count("Observation", subject="Patient/other") == 0
    assert fhir.count("Observation", status="final") == 25
    stats = fhir.stats()
    assert stats["scanned_searches"] == 1  # only the status search scanned; the others used the index
    assert stats["indexed_searches"] >= 6


@pytest.mark.integration
def test_search_follows_pages_beyond_the_1000_cap(fhir: FhirTestServer) -> None:
    entries = [
        {"resource": {"resourceType": "Patient", "gender": "other"}, "request": {"method": "POST", "url": "Patient"}}
        for _ in range(1005)
    ]
    assert post(fhir, "", transaction(*entries)).status_code == 200

    first = fhir.client.get(f"{fhir.base_url}/Patient", params={"_count": 5000}).json()

    assert len(first["entry"]) == 1000
    assert any(link["relation"] == "next" for link in first["link"])
    patients = fhir.search("Patient", _count=5000)
    assert len({p["id"] for p in patients}) == 1005
    assert len(fhir.search("Patient")) == 1005  # default page size 20, all pages followed


@pytest.mark.integration
def test_concurrent_conditional_creates_make_one_resource(fhir: FhirTestServer) -> None:
    body = {"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "A"}]}
    headers = {**FHIR_JSON, "If-None-Exist": "identifier=urn:org|A"}

    def create(_: int) -> int:
        with httpx.Client() as client:
            return client.post(f"{fhir.base_url}/Organization", json=body, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(create, range(16)))

    assert statuses == [200] * 15 + [201]
    assert fhir.count("Organization") == 1


@pytest.mark.integration
def test_update_history_and_if_match(fhir: FhirTestServer) -> None:
    created = post(fhir, "Patient", {"resourceType": "Patient", "gender": "male"}).json()
    url = f"{fhir.base_url}/Patient/{created['id']}"
    changed = {**created, "gender": "female"}

    stale = fhir.client.put(url, json=changed, headers={**FHIR_JSON, "If-Match": 'W/"nope"'})
    fresh = fhir.client.put(url, json=changed, headers={**FHIR_JSON, "If-Match": f'W/"{created["meta"]["versionId"]}"'})
    history = fhir.client.get(f"{url}/_history").json()

    assert stale.status_code == 412
    assert fresh.status_code == 200
    assert [e["resource"]["gender"] for e in history["entry"]] == ["female", "male"]
    assert fhir.read("Patient", created["id"])["gender"] == "female"


@pytest.mark.integration
def test_bad_input_never_crashes(fhir: FhirTestServer) -> None:
    bad = [
        fhir.client.post(f"{fhir.base_url}/Patient", content=b"{not json", headers=FHIR_JSON),
        fhir.client.post(f"{fhir.base_url}/Patient", content=b"[1, 2]", headers=FHIR_JSON),
        fhir.client.post(f"{fhir.base_url}/", content=b'{"resourceType": "Bundle", "type": "nonsense"}'),
        fhir.client.post(f"{fhir.base_url}/", content=b'{"resourceType": "Bundle", "type": "transaction"}'),
        fhir.client.get(f"{fhir.base_url}/Patient", params={"_count": "many"}),
        fhir.client.post(f"{fhir.root_url}/$admin/fail", content=b"{"),
    ]

    assert [r.status_code for r in bad] == [400] * len(bad)
    assert fhir.client.get(f"{fhir.base_url}/NoSuchType/1").status_code in (400, 404)
    assert fhir.health()


@pytest.mark.integration
def test_reset_empties_everything(fhir: FhirTestServer) -> None:
    assert post(fhir, "", visit_bundle("M9", "V9", observations=1)).status_code == 200
    fhir.fail_next(500, count=5)
    assert fhir.stats()["resources"] == {"Patient": 1, "Encounter": 1, "Observation": 1}

    fhir.reset()

    assert fhir.stats()["total"] == 0
    assert fhir.count("Patient", identifier="urn:mrn|M9") == 0  # index emptied too; no injected failure left
    assert post(fhir, "", visit_bundle("M9", "V9", observations=1)).json()["entry"][0]["response"]["status"] == "201"


@pytest.mark.integration
def test_admin_helpers_report_server_errors(fhir: FhirTestServer) -> None:
    with pytest.raises(FhirServerError, match="Unknown search parameter"):
        fhir.search("Patient", nonsense="1")
    with pytest.raises(FhirServerError, match="400"):
        fhir.fail_next(42)


def test_start_without_node_raises_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    with pytest.raises(FhirServerUnavailable, match="node and npm"):
        FhirTestServer(directory=tmp_path).start()
