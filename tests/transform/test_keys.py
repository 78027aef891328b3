"""Search keys (engine/transform/keys.py): taken where each kind of message is mapped, carried over the mapping
processes' pipe, stored by the pipeline as keyed hashes in the outcome's transaction, and found by search."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from engine.config.channel import Channel
from engine.errors import TransformError
from engine.pipeline import Pipeline
from engine.sources.dicom_study import read_instance, study_document
from engine.store import MessageStatus, NewMessage, Store
from engine.store.objects import ObjectStore
from engine.store.schema import KeyKind, message_keys
from engine.store.search import MessageQuery, search
from engine.transform import MappingSet, keys, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.pool import Job, Mapped, _decode_replies, _encode_reply, map_one
from tests.integration.dicom_data import make_study
from tests.integration.messages import adt, oru

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SAMPLES = MAPPINGS / "json" / "samples"


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def hl7(raw: bytes) -> Job:
    return Job(raw, "utf-8", None, "off", None, Identifiers(authority="HOSP"))


def test_kinds_are_the_stores() -> None:
    assert (KeyKind.mrn.value, KeyKind.accession.value) == (keys._MRN, keys._ACCESSION)


def test_oru_gives_the_patient_and_its_order_numbers(ms: MappingSet) -> None:
    m = map_one(ms, hl7(oru("K1", mrn="MRN-77", filler="FIL-5")))
    assert m.error is None
    assert set(m.keys) == {("mrn", "MRN-77"), ("accession", "PK1"), ("accession", "FIL-5")}


def test_adt_gives_the_patient(ms: MappingSet) -> None:
    m = map_one(ms, hl7(adt("K2", mrn="MRN-88")))
    assert m.error is None and m.keys == (("mrn", "MRN-88"),)


def test_an_hl7_message_in_error_gives_its_keys_from_the_text(ms: MappingSet) -> None:
    # no assigning authority and no channel default: the mapping refuses (HL7 101), the message is read
    raw = oru("K3", mrn="MRN-99", filler="FIL\\T\\9").replace(b"^^^HOSP^MR", b"")
    m = map_one(ms, Job(raw, "utf-8", None, "off", None, None))
    assert isinstance(m.error, TransformError)
    assert set(m.keys) == {("mrn", "MRN-99"), ("accession", "PK3"), ("accession", "FIL&9")}  # unescaped
    unreadable = map_one(ms, hl7(b"MSH|^~\\&|A\rP@D|broken\r"))
    assert unreadable.error is not None and unreadable.keys == ()


def test_a_dicom_study_gives_the_patient_and_its_accession_number(ms: MappingSet, tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects", fsync=False)
    docs = []
    for f in make_study(tmp_path / "in", 1, 2, patient="PAT-D1"):
        instance, error = read_instance(f, objects.put_file(f), "MODALITY")
        assert error is None and instance is not None
        docs.append(instance.document)
    m = map_one(ms, Job(study_document(docs, time.time())[0], "", None, "off", None, Identifiers(), "dicom"))
    assert m.error is None
    assert set(m.keys) == {("mrn", "PAT-D1"), ("accession", "ACC-1")}  # not the Study Instance UID


def test_a_json_event_gives_its_patient(ms: MappingSet) -> None:
    raw = (SAMPLES / "appointment_booked.json").read_bytes()
    ids = Identifiers(by_application={"sunrise-booking": "SUNRISE"})
    m = map_one(ms, Job(raw, "utf-8", None, "off", None, ids, "json"))
    assert m.error is None and ("mrn", "P-004211") in m.keys


def test_a_bundle_keeps_order_numbers_typed_so_and_no_more_than_the_cap() -> None:
    order = {"resourceType": "ServiceRequest", "identifier": [
        {"type": {"coding": [{"code": "PLAC"}]}, "value": "P1"},
        {"type": {"coding": [{"code": "PGN"}]}, "value": "G1"},
        {"value": "untyped"},
    ]}  # fmt: skip
    specimen = {"resourceType": "Specimen", "identifier": [{"type": {"coding": [{"code": "FILL"}]}, "value": "S"}]}
    patients = [{"resourceType": "Patient", "identifier": [{"value": f"M{i}"}, {"value": " "}]} for i in range(300)]
    found = keys.from_bundle({"entry": [{"resource": r} for r in (order, specimen, *patients)]})
    assert found[0] == ("accession", "P1") and len(found) == keys.MAX_KEYS
    assert ("accession", "S") not in found and ("accession", "G1") not in found


def test_keys_cross_the_mapping_process_pipe() -> None:
    replies = [
        Mapped(bundle=b"{}", source_time=1.5, keys=(("mrn", "A"), ("accession", "B"))),
        Mapped(empty=True),
        Mapped(error=TransformError("x", field="PID-3", code="101"), keys=(("mrn", "C"),)),
        Mapped(bundle=b"{}"),
    ]
    back = _decode_replies(b"".join(_encode_reply(m) for m in replies))
    assert [m.keys for m in back] == [(("mrn", "A"), ("accession", "B")), (), (("mrn", "C"),), ()]
    assert back[0].bundle == b"{}" and back[0].source_time == 1.5 and back[2].error is not None


def test_the_pipeline_stores_hashes_with_the_outcome_and_search_finds_them(ms: MappingSet, tmp_path: Path) -> None:
    channel = Channel.model_validate({
        "name": "lab", "source": {"type": "mllp", "port": 0}, "identifiers": {"authority": "HOSP"},
        "destinations": [{"name": "out", "type": "file", "path": str(tmp_path / "out.ndjson")}],
    })  # fmt: skip
    store = Store(f"sqlite:///{tmp_path}/s.db")
    pipeline = Pipeline(store, ms, [channel])
    try:
        good, bad = store.insert_messages([
            NewMessage("lab", oru("P1", mrn="MRN-SECRET-1", filler="ACC-SECRET-2")),
            NewMessage("lab", oru("P2", mrn="MRN-SECRET-1", birth="19801399")),  # refused by the mapping: error
        ])  # fmt: skip
        decision = pipeline.process_many([good.id, bad.id])
        assert decision.processed[good.id].status == MessageStatus.transformed
        assert decision.processed[bad.id].status == MessageStatus.error
        assert [r.id for r in search(store, MessageQuery(mrn="MRN-SECRET-1")).rows] == [bad.id, good.id]
        assert [r.id for r in search(store, MessageQuery(accession="ACC-SECRET-2")).rows] == [good.id]
        with store.work.connect() as conn:
            stored = list(conn.execute(select(message_keys)))
        assert {r.message_id for r in stored} == {good.id, bad.id}
        # no plain value outside the content store: every other table, every text column
        plain = (b"MRN-SECRET", b"ACC-SECRET")
        with store.work.connect() as conn:
            dump = b"".join(
                orjson.dumps([str(v) for v in row])
                for table in ("messages", "message_keys", "deliveries", "attempts", "writes")
                for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
            )
        assert not any(p in dump for p in plain)
    finally:
        pipeline.close()
        store.close()
