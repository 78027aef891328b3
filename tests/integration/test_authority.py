"""Issue 5, defect 1, end to end: a PID-3 (or PV1-19) sent without an assigning authority never replaces
another facility's record at the EHR.

The Medplum FHIR test server already holds a Patient and an Encounter that another facility registered
under its own systems with MRN 777 and visit number V777. An ADT^A01 arrives over MLLP with
``PID-3 = 777^^^^MR`` and ``PV1-19 = V777``, no authority. Before the fix the bundle carried
``PUT Patient?identifier=777``, which matched the other facility's Patient and replaced it wholesale.
Now the engine either keys the update on the channel's default authority (a separate Patient, the other
one untouched) or, when the channel declares no default, refuses the message naming PID-3.4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import hl7v2
from engine.sources.mllp_client import send
from tests.fhir_server.launch import FhirTestServer
from tests.integration.harness import EngineProcess, wait_until

pytestmark = pytest.mark.integration

OTHER_MRN = "urn:oid:2.16.840.1.113883.3.999.1"  # the other facility's MRN system
OTHER_VN = "urn:oid:2.16.840.1.113883.3.999.2"  # … and its visit numbers
DEFAULT = "urn:interlink:id:HOSP"  # the harness channels' `identifiers: {authority: HOSP}`

ADT = (
    "MSH|^~\\&|PAS|HOSP|EHR|HOSP|20240301101500+0000||ADT^A01^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A01|20240301101500+0000\r"
    "PID|1||777^^^^MR||NEWCOMER^NINA||19900101|F\r"
    "PV1|1|I|WARD1^101^A^HOSP||||||||||||||||V777|||||||||||||||||||||||||20240301100000+0000\r"
)


def register_elsewhere(fhir: FhirTestServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The other facility's Patient (MRN 777) and Encounter (V777), as the server stored them."""
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": OTHER_MRN, "value": "777"}],
        "name": [{"family": "ELSEWHERE", "given": ["OLGA"]}],
        "birthDate": "1950-05-05",
    }
    r = fhir.client.post(f"{fhir.base_url}/Patient", json=patient)
    assert r.status_code == 201, r.text
    stored_patient = r.json()
    encounter = {
        "resourceType": "Encounter",
        "identifier": [{"system": OTHER_VN, "value": "V777"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{stored_patient['id']}"},
    }
    r = fhir.client.post(f"{fhir.base_url}/Encounter", json=encounter)
    assert r.status_code == 201, r.text
    return stored_patient, r.json()


def assert_unchanged(fhir: FhirTestServer, before: dict[str, Any]) -> None:
    now = fhir.read(before["resourceType"], before["id"])
    assert now["meta"]["versionId"] == before["meta"]["versionId"], (
        f"the other facility's {now['resourceType']} changed"
    )
    for key in ("identifier", "name", "birthDate", "status", "subject"):
        assert now.get(key) == before.get(key)


def final_status(engine: EngineProcess) -> tuple[str, str | None]:
    store = engine.store()
    try:
        [row] = store.list_messages(limit=10)
        return row.status, row.error
    finally:
        store.close()


def ack(reply: bytes) -> tuple[str, hl7v2.Message]:
    msg = hl7v2.Message.parse(reply.decode())
    msa = msg.first("MSA")
    assert msa is not None
    return msa.field(1), msg


def test_with_a_channel_default_a_separate_patient_is_made_and_the_other_is_untouched(
    tmp_path: Path, fhir: FhirTestServer
) -> None:
    patient, encounter = register_elsewhere(fhir)
    with EngineProcess(tmp_path / "engine", fhir_base_url=fhir.base_url) as engine:
        for cid in ("A1", "A2"):  # a resend changes nothing either
            [reply] = send("127.0.0.1", engine.adt_port, [ADT.format(cid=cid).encode()], timeout_s=30)
            assert ack(reply)[0] == "AA"
        wait_until(
            lambda: engine.store().status_counts().get(("adt", "sent"), 0) == 2, 30, f"delivery ({engine.tail()})"
        )

    assert_unchanged(fhir, patient)
    assert_unchanged(fhir, encounter)
    assert fhir.count("Patient", identifier="777") == 2 and fhir.count("Encounter", identifier="V777") == 2
    (ours,) = fhir.search("Patient", identifier=f"{DEFAULT}|777")
    assert ours["id"] != patient["id"] and ours["name"][0]["family"] == "NEWCOMER"
    assert ours["identifier"] == [
        {
            "system": DEFAULT,
            "value": "777",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical record number",
                    }
                ]
            },
        }
    ]
    (visit,) = fhir.search("Encounter", identifier=f"{DEFAULT}|V777")
    assert visit["id"] != encounter["id"] and visit["subject"]["reference"] == f"Patient/{ours['id']}"


def test_without_a_default_the_message_is_refused_naming_pid_3_4(tmp_path: Path, fhir: FhirTestServer) -> None:
    patient, encounter = register_elsewhere(fhir)
    engine = EngineProcess(tmp_path / "engine", fhir_base_url=fhir.base_url)
    channel_file = engine.workdir / "channels" / "adt.yaml"
    channel = yaml.safe_load(channel_file.read_text())
    channel.pop("identifiers", None)
    channel_file.write_text(yaml.safe_dump(channel))
    requests_before = fhir.stats()["requests"]
    with engine:
        [reply] = send("127.0.0.1", engine.adt_port, [ADT.format(cid="R1").encode()], timeout_s=30)
        status, error = final_status(engine)
    assert fhir.stats()["requests"] == requests_before  # nothing was sent to the EHR
    code, nak = ack(reply)
    assert code == "AE"  # the adt channel answers after mapping
    err = nak.first("ERR")
    assert err is not None and "PID^1^3^1^4" in err.field(2)
    assert status == "error" and error is not None and error.startswith("PID-3.4: assigning authority is empty")
    assert "777" not in reply.decode() and "777" not in error and "NEWCOMER" not in error
    assert_unchanged(fhir, patient)
    assert_unchanged(fhir, encounter)
    assert fhir.count("Patient") == 1 and fhir.count("Encounter") == 1
