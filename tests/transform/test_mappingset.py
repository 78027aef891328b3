"""The public API: choosing a map, the bundle contract, validation modes, purity and thread safety."""

from __future__ import annotations

import copy
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine import hl7v2
from engine.errors import TransformError
from engine.transform import MappingSet, load_mappings, mappingset

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SAMPLES = MAPPINGS / "hl7v2" / "samples"


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def sample(name: str) -> hl7v2.Message:
    return hl7v2.Message.parse(hl7v2.decode((SAMPLES / name).read_bytes()))


def adt(msh9: str, pv1_2: str = "I") -> hl7v2.Message:
    return hl7v2.Message.parse(
        f"MSH|^~\\&|A|F|B|G|20240101||{msh9}|1|P|2.5.1\r"
        "PID|1||M1^^^H^MR||DOE^JANE||19800101|F\r"
        f"PV1|1|{pv1_2}|W^1^A||||||||||||||||V1^^^H^VN\r"
    )


def test_message_types(ms: MappingSet) -> None:
    assert {"ORU^R01", "ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A28", "BAR^P01", "DFT^P03"} <= ms.message_types
    assert "ZZZ^Z01" not in ms.message_types


@pytest.mark.parametrize(
    ("mt", "ok"),
    [
        ("ORU^R01", True),
        ("ORU^R01^ORU_R01", True),
        ("ADT^A13^ADT_A01", True),
        ("ADT_A03", True),
        ("hl7v2/messages/ADT_A03.yaml", True),
        ("hl7v2/messages/ADT_A05.yaml", True),
        ("hl7v2/messages/ZZZ_Z01.yaml", False),
        ("ZZZ^Z01", False),
        ("ADT^A28^ADT_A05", True),
        ("ADT^Z99^ADT_A01", True),
        ("ADT^Z99^ADT_Z99", False),
    ],
)
def test_has_mapping(ms: MappingSet, mt: str, ok: bool) -> None:
    assert ms.has_mapping(mt) is ok


def test_structure_in_msh9_3_chooses_the_map(ms: MappingSet) -> None:
    bundle = ms.transform(adt("ADT^Z99^ADT_A01"), validation="full")  # a trigger without a map, ADT_A01 structure
    enc = bundle["entry"][1]["resource"]
    assert enc["resourceType"] == "Encounter" and enc["status"] == "in-progress"  # by class, not by trigger
    assert ms.mapping_for(adt("ADT^Z99^ADT_A01")) == "ADT_A01"


def test_mapping_by_name_or_path(ms: MappingSet) -> None:
    m = adt("ADT^A08")
    by_name = ms.transform(m, mapping="ADT_A03", validation="off")
    by_path = ms.transform(m, mapping="hl7v2/messages/ADT_A03.yaml", validation="off")
    assert by_name == by_path
    assert by_name["entry"][1]["resource"]["status"] == "finished"
    with pytest.raises(TransformError) as exc:
        ms.transform(m, mapping="ADT_A99")
    assert exc.value.code == "200"


def test_no_mapping_for_the_message_type(ms: MappingSet) -> None:
    with pytest.raises(TransformError) as exc:
        ms.transform(adt("ZZZ^Z01"))
    assert (exc.value.code, exc.value.field) == ("200", "MSH-9")
    assert "no mapping for message type ZZZ^Z01" in str(exc.value)


def test_validation_argument(ms: MappingSet) -> None:
    with pytest.raises(ValueError):
        ms.transform(adt("ADT^A01"), validation="sometimes")


def test_sampled_validation_checks_one_bundle_in_a_hundred(ms: MappingSet, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(mappingset, "validate_bundle", lambda b: calls.append(b))
    m = adt("ADT^A01")
    for _ in range(300):
        ms.transform(m, validation="sampled")
    assert len(calls) == 3
    for _ in range(5):
        ms.transform(m, validation="off")
    ms.transform(m, validation="full")
    assert len(calls) == 4


def test_bundle_contract(ms: MappingSet) -> None:
    bundle = ms.transform(sample("oru_r01_cbc.hl7"), validation="full")
    assert set(bundle) == {"resourceType", "type", "entry"}
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
    for e in bundle["entry"]:
        r = e["resource"]
        assert set(e) == {"fullUrl", "resource", "request"}
        assert e["fullUrl"].startswith("urn:uuid:") and "id" not in r
        request = e["request"]
        if request["method"] == "POST":  # the report's ServiceRequest, written create-only (`write: create`)
            assert r["resourceType"] == "ServiceRequest" and request["url"] == "ServiceRequest"
            search = f"ServiceRequest?{request['ifNoneExist']}"
        else:
            assert request["method"] == "PUT"
            search = request["url"]
        assert search.startswith(f"{r['resourceType']}?identifier=")
        system, value = search.split("=", 1)[1].split("|")
        assert any(i.get("system") == system and i["value"] == value for i in r["identifier"])


def test_pure_and_deterministic(ms: MappingSet) -> None:
    m = sample("oru_r01_cbc.hl7")
    before = [list(s.fields) for s in m.segments]
    first = ms.transform(m, validation="off")
    again = ms.transform(m, validation="off")
    assert first == again
    assert [list(s.fields) for s in m.segments] == before
    # Results handed out are not shared: changing one bundle leaves the next untouched.
    first["entry"][3]["resource"]["code"]["coding"][0]["code"] = "changed"
    assert ms.transform(m, validation="off") == again


def test_thread_safe(ms: MappingSet) -> None:
    names = ["oru_r01_cbc.hl7", "adt_a01.hl7", "adt_a03.hl7", "adt_a04.hl7", "adt_a08.hl7"]
    messages = [sample(n) for n in names] * 40
    expected = [copy.deepcopy(ms.transform(m, validation="off")) for m in messages]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda m: ms.transform(m, validation="off"), messages))
    assert got == expected


def test_default_timezone(ms: MappingSet) -> None:
    m = hl7v2.Message.parse(
        "MSH|^~\\&|A|F|B|G|20240101||ADT^A01|1|P|2.5.1\r"
        "PID|1||M1^^^H^MR||DOE^JANE||19800101|F\r"
        "PV1|1|I|W^1^A||||||||||||||||V1^^^H^VN|||||||||||||||||||||||||202401151030\r"
    )
    assert ms.transform(m)["entry"][1]["resource"]["period"]["start"] == "2024-01-15T10:30:00Z"
    paris = load_mappings(MAPPINGS, timezone="Europe/Paris")
    assert paris.transform(m)["entry"][1]["resource"]["period"]["start"] == "2024-01-15T10:30:00+01:00"
    per_call = ms.transform(m, timezone="Asia/Kolkata")
    assert per_call["entry"][1]["resource"]["period"]["start"] == "2024-01-15T10:30:00+05:30"


def write(root: Path, rel: str, text: str) -> None:
    p = root / "hl7v2" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))


def test_overlays_replace_or_merge(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write(
        site,
        "codesystems/0004-encounter-class.yaml",
        """\
        description: Site patient classes added to the base table.
        merge: true
        map:
          Z: {code: HH, display: home health}
        """,
    )
    write(
        site,
        "segments/PID-Patient.yaml",
        """\
        segment: PID
        target: Patient
        description: Site rule replacing the base gender rule only.
        merge: true
        rules:
          gender: {value: unknown}
        """,
    )
    write(
        site,
        "datatypes/XPN-HumanName.yaml",
        """\
        datatype: XPN
        target: HumanName
        description: Site name map replacing the base one.
        rules:
          text: XPN.1.1
        """,
    )
    ms = load_mappings(MAPPINGS, overlays=[site])
    bundle = ms.transform(adt("ADT^A01", pv1_2="Z"), validation="full")
    patient, enc = bundle["entry"][0]["resource"], bundle["entry"][1]["resource"]
    assert enc["class"]["code"] == "HH"
    assert patient["gender"] == "unknown"
    assert patient["birthDate"] == "1980-01-01"  # other base rules kept
    assert patient["name"] == [{"text": "DOE"}]  # XPN map replaced: no family/given


def test_validation_failure_names_resource_and_element_not_the_value(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write(
        site,
        "segments/PID-Patient.yaml",
        """\
        segment: PID
        target: Patient
        description: A careless site rule (code from free text).
        merge: true
        rules:
          gender: PID-8
        """,
    )
    ms = load_mappings(MAPPINGS, overlays=[site])
    m = hl7v2.Message.parse(
        "MSH|^~\\&|A|F|B|G|20240101||ADT^A01|1|P|2.5.1\r"
        "PID|1||M1^^^H^MR||DOE^JANE||19800101|SECRET  VALUE\r"
        "PV1|1|I|W^1^A||||||||||||||||V1^^^H^VN\r"
    )
    assert ms.transform(m, validation="off")["entry"][0]["resource"]["gender"] == "SECRET  VALUE"
    with pytest.raises(TransformError) as exc:
        ms.transform(m, validation="full")
    assert "Patient.gender" in str(exc.value) and exc.value.code == "207"
    assert "SECRET" not in str(exc.value)


def test_overlay_tests_run_with_base(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(MAPPINGS / "hl7v2" / "samples", site / "hl7v2" / "samples")
    ms = load_mappings(MAPPINGS, overlays=[site])
    assert ms.roots == [MAPPINGS, site]
