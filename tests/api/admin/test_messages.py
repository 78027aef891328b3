"""/api/v1/messages against a real engine: search (viewer, metadata only), detail (content for operators,
audited), ids by unique prefix, roles and 401, and a FHIR message found by its patient identifier end to end."""

from __future__ import annotations

import time

import orjson

from engine.store import AttemptRecord, DeliveryStatus, MessageStatus, NewMessage, ProcessResult, Store
from engine.store.access import AuditTrail
from tests.api.admin.conftest import AdminAPI
from tests.integration.harness import wait_until

HL7 = (
    b"MSH|^~\\&|LIS|LAB|EHR|HOSP|20240301101500||ORU^R01|CTRL-1|P|2.5.1\r"
    b"PID|1||MRN-SECRET-5^^^HOSP^MR||DOE^JANE\rOBR|1|P1|F1|GLU^Glucose\r"
)


def stored(store: Store, *, raw: bytes = HL7, mrn: str = "MRN-SECRET-5", control: str = "CTRL-1") -> str:
    """One processed HL7 message with a bundle, a failed then a successful attempt, and its MRN key."""
    [acc] = store.insert_messages(
        [NewMessage("lab", raw, message_type="ORU^R01", sender="LIS|LAB", control_id=control, charset="utf-8")]
    )
    bundle = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
    store.finish_processing([
        ProcessResult(acc.id, MessageStatus.transformed, bundle=bundle, destinations=("ehr",),
                      keys=(("mrn", store.pseudonym(mrn)),))
    ])  # fmt: skip
    t = time.time()
    store.record_attempt(acc.id, "ehr", AttemptRecord(1, t, 12.5, "retry", 503, "HTTP 503", b"REQ-1", b"busy"),
                         status=DeliveryStatus.retrying, next_attempt_at=t)  # fmt: skip
    time.sleep(0.01)
    t = time.time()
    store.record_attempt(acc.id, "ehr", AttemptRecord(2, t, 8.0, "sent", 200, None, None, b'{"ok": true}'),
                         status=DeliveryStatus.sent, next_attempt_at=t)  # fmt: skip
    return acc.id


def audit(api: AdminAPI, action: str) -> list:
    return AuditTrail(api.store).page(action=action).entries


def test_search_needs_a_token_and_gives_viewers_metadata_only(admin_api: AdminAPI) -> None:
    mid = stored(admin_api.store)
    assert admin_api.client(None).get("/api/v1/messages").status_code == 401
    assert admin_api.client(None).get(f"/api/v1/messages/{mid}").status_code == 401
    r = admin_api.client("viewer").get("/api/v1/messages", params={"mrn": "MRN-SECRET-5"})
    assert r.status_code == 200
    [m] = r.json()["messages"]
    assert m["id"] == mid and m["status"] == "sent" and m["control_id"] == "CTRL-1"
    assert m["deliveries"] == [{"destination": "ehr", "status": "sent"}]
    assert b"MRN-SECRET" not in r.content and b"DOE" not in r.content
    [entry] = audit(admin_api, "message.search")  # a patient was looked up: who, which messages, not the value
    assert (entry.actor, entry.target, entry.message_ids) == ("test-viewer", "mrn", (mid,))
    assert "MRN-SECRET" not in repr(entry)
    for params in ({"control_id": "CTRL-1"}, {"type": "ORU"}, {"channel": "lab", "status": "sent"},
                   {"since": "1h"}, {"sender": "LIS|LAB"}):  # fmt: skip
        assert [
            x["id"] for x in admin_api.client("viewer").get("/api/v1/messages", params=params).json()["messages"]
        ] == [mid]
    assert admin_api.client("viewer").get("/api/v1/messages", params={"mrn": "OTHER"}).json()["messages"] == []
    assert len(audit(admin_api, "message.search")) == 2  # only searches by a key are audited


def test_bad_parameters_are_400_naming_the_parameter(admin_api: AdminAPI) -> None:
    c = admin_api.client("viewer")
    for params, name in (({"limit": "500"}, "limit"), ({"limit": "x"}, "limit"), ({"cursor": "%%"}, "cursor"),
                         ({"since": "yesterday-ish"}, "since"), ({"status": "lost"}, "status")):  # fmt: skip
        r = c.get("/api/v1/messages", params=params)
        assert r.status_code == 400 and r.json()["detail"].startswith(name + ":"), (params, r.text)


def test_pages_by_cursor(admin_api: AdminAPI) -> None:
    ids = [stored(admin_api.store, control=f"P{i}") for i in range(5)]
    c = admin_api.client("viewer")
    seen: list[str] = []
    page = c.get("/api/v1/messages", params={"limit": 2}).json()
    seen += [m["id"] for m in page["messages"]]
    while page["next_cursor"]:
        stored(admin_api.store, control="LATE")  # newer than every page: never shifts the ones after
        page = c.get("/api/v1/messages", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [m["id"] for m in page["messages"]]
    assert seen == list(reversed(ids))


def test_detail_for_a_viewer_has_no_content_and_is_not_audited(admin_api: AdminAPI) -> None:
    mid = stored(admin_api.store)
    r = admin_api.client("viewer").get(f"/api/v1/messages/{mid}")
    assert r.status_code == 200
    body = r.json()
    assert "content" not in body and b"MRN-SECRET" not in r.content and b"REQ-1" not in r.content
    assert [(a["number"], a["outcome"], a["status_code"]) for a in body["attempts"]] == [
        (1, "retry", 503),
        (2, "sent", 200),
    ]
    assert "request" not in body["attempts"][0]
    assert body["deliveries"][0]["attempts"] == 2
    assert audit(admin_api, "message.read") == []


def test_detail_for_an_operator_shows_content_by_segment_and_is_audited(admin_api: AdminAPI) -> None:
    mid = stored(admin_api.store)
    r = admin_api.client("operator").get(f"/api/v1/messages/{mid[:12]}")  # a unique prefix
    assert r.status_code == 200
    body = r.json()
    raw = body["content"]["raw"]
    assert raw["format"] == "hl7v2" and raw["segments"][1] == "PID|1||MRN-SECRET-5^^^HOSP^MR||DOE^JANE"
    assert len(raw["segments"]) == 3
    assert body["content"]["transformed"]["resourceType"] == "Bundle"
    first, second = body["attempts"]
    assert first["request"] == {"text": "REQ-1"} and first["response"] == {"text": "busy"}
    assert second["request"] is None and second["response"] == {"json": {"ok": True}}  # the bundle itself was sent
    [entry] = audit(admin_api, "message.read")
    assert (entry.actor, entry.role, entry.message_ids) == ("test-operator", "operator", (mid,))
    assert entry.peer == "127.0.0.1"


def test_ids_by_prefix_unknown_and_ambiguous(admin_api: AdminAPI) -> None:
    store = admin_api.store
    store.insert_messages([NewMessage("lab", b"x", id="abcdef01" + "1" * 24),
                           NewMessage("lab", b"y", id="abcdef01" + "2" * 24)])  # fmt: skip
    c = admin_api.client("viewer")
    assert c.get("/api/v1/messages/abcdef011").json()["id"] == "abcdef01" + "1" * 24
    r = c.get("/api/v1/messages/abcdef01")
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert c.get("/api/v1/messages/abcdef019").status_code == 404
    assert c.get("/api/v1/messages/abc").status_code == 400


def test_a_fhir_message_is_found_by_its_patient_identifier(admin_api: AdminAPI) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "PAT-E2E-1"}],
               "name": [{"family": "Doe"}]}  # fmt: skip
    r = admin_api.client(None).post("/webhooks/events", content=orjson.dumps(patient),
                                    headers={"Content-Type": "application/fhir+json"})  # fmt: skip
    assert r.status_code == 202, r.text
    mid = r.json()["message_id"]
    c = admin_api.client("viewer")

    def found() -> bool:
        return [m["id"] for m in c.get("/api/v1/messages", params={"mrn": "PAT-E2E-1"}).json()["messages"]] == [mid]

    wait_until(found, 20, "the message found by its patient identifier")
    detail = admin_api.client("admin").get(f"/api/v1/messages/{mid}").json()
    assert detail["content"]["raw"] == {"format": "fhir", "json": patient}


def test_raw_views_by_kind(tmp_path) -> None:
    from engine.api.admin.messages import raw_view
    from engine.sources.dicom_study import read_instance, study_document
    from engine.store.objects import ObjectStore
    from tests.integration.dicom_data import make_study

    objects = ObjectStore(tmp_path / "objects", fsync=False)
    docs = []
    for f in make_study(tmp_path / "in", 1, 2, patient="PAT-V"):
        instance, error = read_instance(f, objects.put_file(f), "CT01")
        assert error is None and instance is not None
        docs.append(instance.document)
    study = raw_view(study_document(docs, 1.0)[0], "dicom", "")
    assert study["format"] == "dicom-study" and study["calling_ae"] == "CT01" and len(study["instances"]) == 2
    dataset = study["instances"][0]["dataset"]
    assert dataset["PatientID"] == "PAT-V" and dataset["AccessionNumber"] == "ACC-1" and "StudyInstanceUID" in dataset
    assert raw_view(docs[0], "dicom", "")["format"] == "dicom-instance"
    assert raw_view(b'{"type": "t"}', "json", "utf-8") == {"format": "json", "json": {"type": "t"}}
    assert raw_view(b"not json", "fhir", "utf-8") == {"format": "text", "text": "not json"}
    latin = raw_view(b"MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||1||M\xfcller\r", "hl7v2", "utf-8")
    assert latin["segments"][1] == "PID|1||1||Müller"  # decoded by its MSH-18, one string per segment
