"""JSON events through the one compiler: records, JSON paths, exact numbers, place-only errors, hostile input."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.errors import TransformError
from engine.hl7v2 import Message
from engine.transform import load_mappings
from engine.transform.authority import Identifiers
from engine.transform.json_functions import iso_to_ts
from engine.transform.jsonevent import JsonNotation, Number, Record, event_message
from engine.transform.limits import DEFAULT, Limits
from engine.transform.mappingset import MappingSet
from engine.transform.paths import Env, PathError
from engine.transform.pool import Job, map_one

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SAMPLES = MAPPINGS / "json" / "samples"
IDS = Identifiers(by_application={"sunrise-booking": "SUNRISE", "pulsewear-cloud": "PULSEWEAR"})


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> MappingSet:
    """The shipped JSON maps alone (an empty HL7 folder beside them): what the worker's for_kind('json') gives."""
    root = tmp_path_factory.mktemp("maps")
    (root / "hl7v2").mkdir()
    (root / "json").symlink_to(MAPPINGS / "json")
    return load_mappings(root)


def event(**extra: Any) -> bytes:
    doc = {"type": "t", "patient": {"id": "P1", "name": {"family": "Doe"}, "given": ["A", "B"]}, **extra}
    return orjson.dumps(doc)


def read(raw: bytes, path: str, current: str | None = None, records: set[str] | None = None) -> list[Any]:
    msg = event_message(raw, DEFAULT)
    get = JsonNotation(records or set()).resolve(path, current)[0]
    rec = next(s for s in msg.segments if s.name == (current or "EVENT"))
    return get(Env(None, rec, "", _Run(msg)))


class _Run:
    def __init__(self, msg: Message) -> None:
        self.segments = msg.segments


def test_records_in_document_order_named_by_path() -> None:
    raw = b'{"type":"x","source":"app","a":{"b":{"c":1}},"items":[{"v":1},{"v":2,"sub":[{"w":3}]}],"n":[1,2]}'
    msg = event_message(raw, DEFAULT)
    assert [s.name for s in msg.segments] == ["MSH", "EVENT", "a", "a.b", "items[*]", "items[*]", "items[*].sub[*]"]
    assert msg.header.field(9) == "x" and msg.header.field(3) == "app"
    assert all(isinstance(s, Record) for s in msg.segments[1:])


def test_paths_relative_absolute_indexed() -> None:
    raw = event(readings=[{"value": 1}, {"value": 2}], flag=True, off=False, nothing=None, empty="")
    assert read(raw, "patient.name.family") == ["Doe"]
    assert read(raw, "$.patient.given[*]") == ["A", "B"]
    assert read(raw, "patient.given[2]") == ["B"]
    assert read(raw, "patient.given") == ["A"]  # an array without an index: its first item
    assert read(raw, "readings[*].value") == ["1", "2"]
    assert read(raw, "flag") == ["true"] and read(raw, "off") == ["false"]
    assert read(raw, "nothing") == [] and read(raw, "empty") == [] and read(raw, "missing.deeper") == []
    assert read(raw, "given[*]", "patient") == ["A", "B"]  # relative to the record the map reads
    assert read(raw, "$.type", "patient") == ["t"]


def test_a_path_naming_a_segment_map_record_selects_records() -> None:
    raw = event(readings=[{"value": 1}, {"value": 2}])
    got = read(raw, "readings[*]", records={"readings[*]"})
    assert [r.name for r in got] == ["readings[*]", "readings[*]"]
    assert JsonNotation({"readings[*]"}).resolve("readings[*]", None)[1] == 0
    assert JsonNotation(set()).resolve("readings[*].value", None)[1] == 1


def test_hl7_delimiters_in_values_are_escaped_text() -> None:
    raw = event(note="a|b^c~d\\e&f")
    assert read(raw, "note") == ["a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"]


@pytest.mark.parametrize("bad", ["a..b", "a[0]", "a[x]", "1a", "$", "a b", "a[*]x"])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(PathError):
        JsonNotation(set()).resolve(bad, None)


def test_numbers_keep_their_exact_text() -> None:
    raw = b'{"type":"t","a":98.60,"b":12345678901234567890,"c":-0.000000000000000000001,"d":1e3}'
    msg = event_message(raw, DEFAULT)
    assert isinstance(msg.segments[1].obj["a"], Number)  # type: ignore[attr-defined]
    assert read(raw, "a") == ["98.60"]
    assert read(raw, "b") == ["12345678901234567890"]
    assert read(raw, "c") == ["-0.000000000000000000001"]
    assert read(raw, "d") == ["1e3"]


def test_an_object_where_a_value_is_expected_names_the_path_not_the_value() -> None:
    raw = event()
    with pytest.raises(TransformError) as e:
        read(raw, "patient.name")
    assert e.value.field == "$.patient.name" and "Doe" not in str(e.value)
    with pytest.raises(TransformError) as e:
        read(raw, "name", "patient")
    assert e.value.field == "$.patient.name"


@pytest.mark.parametrize(
    ("raw", "cap"),
    [
        (b"[" * 100 + b"]" * 100, None),  # not an object
        (b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", "limits.max_depth"),
        (b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "limits.max_depth"),  # the reader's own recursion
        (orjson.dumps({"a": list(range(1001))}), "limits.max_repetitions"),
        (orjson.dumps({"a": [{"x": i} for i in range(1000)] + [], "b": [{"y": i} for i in range(1000)]}), None),
        (b'{"a": NaN}', "json"),
        (b'{"a": 1', "json"),
        (b"\xff\xfe{}", "json"),
    ],
)
def test_hostile_input_is_refused_fast_naming_a_cap_or_place(raw: bytes, cap: str | None) -> None:
    limits = Limits(max_segments=1500)
    t0 = time.perf_counter()
    with pytest.raises(TransformError) as e:
        event_message(raw, limits)
    assert time.perf_counter() - t0 < 2
    assert e.value.field is not None and e.value.field.startswith("$")
    if cap:
        assert e.value.rule == cap
    assert e.value.code in ("102", "207")


def test_over_max_bytes_is_refused_before_reading() -> None:
    with pytest.raises(TransformError) as e:
        event_message(b'{"a":"' + b"x" * 2000 + b'"}', Limits(max_bytes=1000))
    assert e.value.rule == "limits.max_bytes"


@pytest.mark.parametrize(
    ("iso", "ts"),
    [
        ("2026-03-10T14:30:00-05:00", "20260310143000-0500"),
        ("2026-03-10T14:30Z", "202603101430+0000"),
        ("2026-03-10T14:30:00.125+01:00", "20260310143000.125+0100"),
        ("2026-03-10", "20260310"),
        ("2026-03", "202603"),
    ],
)
def test_iso_to_ts(iso: str, ts: str) -> None:
    assert iso_to_ts(iso) == ts


def job(raw: bytes, ids: Identifiers | None = IDS, **kw: Any) -> Job:
    return Job(raw, "utf-8", None, "full", None, ids, "json", **kw)


def bundle_of(maps: MappingSet, raw: bytes, **kw: Any) -> dict[str, Any]:
    mapped = map_one(maps, job(raw, **kw))
    assert mapped.error is None, mapped.error
    assert mapped.bundle is not None
    return orjson.loads(mapped.bundle)


def resources(b: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == rtype]


def test_appointment_booked_sample(maps: MappingSet) -> None:
    b = bundle_of(maps, (SAMPLES / "appointment_booked.json").read_bytes())
    (appt,) = resources(b, "Appointment")
    (patient,) = resources(b, "Patient")
    assert appt["status"] == "booked" and appt["start"] == "2026-03-10T14:30:00-05:00"
    assert [p["actor"].get("type") for p in appt["participant"]] == [None, "Practitioner", "Location"]
    urls = [e["request"]["url"] for e in b["entry"]]
    assert "Patient?identifier=urn:interlink:id:SUNRISE|P-004211" in urls
    assert patient["name"] == [{"family": "Rivera", "given": ["Ana", "Lucia"]}]


def test_device_reading_sample_keeps_the_number(maps: MappingSet) -> None:
    raw = (SAMPLES / "observation_recorded.json").read_bytes().replace(b'"value": 72,', b'"value": 72.50,')
    b = bundle_of(maps, raw)
    obs = resources(b, "Observation")
    assert len(obs) == 4
    assert obs[0]["valueQuantity"] == {
        "value": 72.5,
        "unit": "bpm",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    assert {o["meta"]["profile"][0] for o in obs} == {"http://hl7.org/fhir/StructureDefinition/vitalsigns"}
    assert [c["code"]["coding"][0]["code"] for c in obs[3]["component"]] == ["8480-6", "8462-4"]


def test_a_patient_without_a_system_is_refused_naming_the_path(maps: MappingSet) -> None:
    mapped = map_one(maps, job((SAMPLES / "appointment_booked.json").read_bytes(), ids=None))
    assert isinstance(mapped.error, TransformError)
    assert mapped.error.code == "101" and mapped.error.field == "$.patient.id"
    assert "P-004211" not in str(mapped.error)


def test_an_assigner_sent_with_the_patient_is_its_system(maps: MappingSet) -> None:
    doc = orjson.loads((SAMPLES / "appointment_booked.json").read_bytes())
    doc["patient"]["assigner"] = "2.16.840.1.113883.19.5"
    b = bundle_of(maps, orjson.dumps(doc), ids=Identifiers(authority="SUNRISE"))
    assert "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|P-004211" in [e["request"]["url"] for e in b["entry"]]


def test_unknown_event_type_and_unknown_kind_name_a_place(maps: MappingSet) -> None:
    mapped = map_one(maps, job(b'{"type": "invoice.paid", "patient": {"id": "SECRET-1"}}'))
    assert isinstance(mapped.error, TransformError) and mapped.error.field == "$.type"
    assert "invoice" not in str(mapped.error)
    doc = orjson.loads((SAMPLES / "observation_recorded.json").read_bytes())
    doc["readings"][1]["kind"] = "glucose-SECRET"
    mapped = map_one(maps, job(orjson.dumps(doc)))
    assert isinstance(mapped.error, TransformError) and mapped.error.field == "$.readings[*].kind"
    assert "SECRET" not in str(mapped.error)


def test_event_type_at_another_path(maps: MappingSet) -> None:
    doc = orjson.loads((SAMPLES / "appointment_booked.json").read_bytes())
    doc["meta"] = {"event": doc.pop("type")}
    b = bundle_of(maps, orjson.dumps(doc), event_type="meta.event")
    assert len(resources(b, "Appointment")) == 1


def test_the_pipeline_reads_the_type_at_the_channels_event_type_path(maps: MappingSet, tmp_path: Path) -> None:
    from engine.config.channel import Channel
    from engine.pipeline import Pipeline
    from engine.store import NewMessage, Store

    channel = Channel.model_validate({
        "name": "hooks",
        "source": {"type": "webhook", "auth": {"type": "none"}, "event_type": "meta.event"},
        "identifiers": {"authority": "SUNRISE"},
        "destinations": [{"name": "out", "type": "file", "path": str(tmp_path / "out.ndjson")}],
    })  # fmt: skip
    doc = orjson.loads((SAMPLES / "appointment_booked.json").read_bytes())
    doc["meta"] = {"event": doc.pop("type")}
    store = Store(f"sqlite:///{tmp_path}/s.db")
    pipeline = Pipeline(store, maps, [channel])
    try:
        [acc] = store.insert_messages([NewMessage("hooks", orjson.dumps(doc), kind="json", charset="utf-8")])
        pipeline.process(acc.id)
        assert store.message(acc.id).status == "transformed", store.message(acc.id).error
    finally:
        pipeline.close()
        store.close()
