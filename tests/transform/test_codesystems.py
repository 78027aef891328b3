"""The v2 tables the IG concept maps use, as data files (``mappings/hl7v2/codesystems/``).

Every table the issue lists has a file naming it (``source: HL7nnnn``; 0396 is ``coding-systems``); every
file compiles, writes an absolute system URI and maps to codes its FHIR element accepts; a code a
``keep`` table does not list stays a coding in the v2 table's own system (never dropped, never given an
invented URL); and a CWE whose coding-system name is unknown keeps its code and text without a system.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine import hl7v2
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.library import Library, read_sources
from engine.transform.tables import Table

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
FOLDER = MAPPINGS / "hl7v2" / "codesystems"

#: The tables issue 6 lists (0396, the coding-system names, is ``coding-systems.yaml``).
LISTED = [
    "0001",
    "0002",
    "0004",
    "0005",
    "0007",
    "0038",
    "0063",
    "0074",
    "0076",
    "0078",
    "0080",
    "0085",
    "0103",
    "0112",
    "0119",
    "0123",
    "0125",
    "0127",
    "0128",
    "0136",
    "0162",
    "0163",
    "0189",
    "0190",
    "0200",
    "0201",
    "0203",
    "0204",
    "0278",
    "0280",
    "0322",
    "0323",
    "0326",
]

#: FHIR code systems whose codes are closed: a table writing to one must use only these codes.
CLOSED = {
    "http://hl7.org/fhir/request-status": {
        "draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown",
    },
    "http://hl7.org/fhir/appointmentstatus": {
        "proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow", "entered-in-error",
        "checked-in", "waitlist",
    },
    "http://hl7.org/fhir/request-priority": {"routine", "urgent", "asap", "stat"},
    "http://hl7.org/fhir/event-status": {
        "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown",
    },
    "http://hl7.org/fhir/reaction-event-severity": {"mild", "moderate", "severe"},
    "http://hl7.org/fhir/allergy-intolerance-criticality": {"low", "high", "unable-to-assess"},
}  # fmt: skip


def _files() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(FOLDER.glob("*.yaml"))}


@pytest.fixture(scope="module")
def tables() -> dict[str, Table]:
    sources = read_sources([MAPPINGS])
    library = Library(sources)
    return {n: library.table(n, s.where()) for n, s in sources.items() if s.kind == "codesystems"}


@pytest.mark.parametrize("number", LISTED)
def test_every_listed_table_has_a_file(number: str) -> None:
    sources = {spec.get("source") for spec in _files().values()}
    assert f"HL7{number}" in sources, f"no code-system map reads HL7 table {number}"


def test_coding_system_names_table_0396_exists() -> None:
    spec = _files()["coding-systems"]
    assert spec["map"]["LN"] == "http://loinc.org" and spec["map"]["CVX"] == "http://hl7.org/fhir/sid/cvx"


@pytest.mark.parametrize("name", sorted(_files()))
def test_each_table_names_its_source_and_writes_an_absolute_system(name: str, tables: dict[str, Table]) -> None:
    spec = _files()[name]
    table = tables[name]
    if spec.get("source"):
        assert spec["source"][3:] in name, "the file name starts with the table number it reads"
    if table.system is None:
        return  # a plain look-up table (coding-systems, identifier-systems)
    assert table.system.startswith(("http://", "https://", "urn:oid:", "urn:ietf:", "urn:iso:"))
    allowed = CLOSED.get(table.system)
    for code in spec["map"]:
        coding = table.coding(str(code))
        assert coding and coding["code"]
        assert coding.get("system", table.system).startswith(("http", "urn:"))
        if allowed is not None and coding.get("system") == table.system:
            assert coding["code"] in allowed, f"{name}: {code} → {coding['code']} is not a {table.system} code"


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("0038-order-status", "CA", "revoked"),
        ("0038-order-status", "CM", "completed"),
        ("0119-order-control-status", "NW", "active"),
        ("0119-order-control-status", "HD", "on-hold"),
        ("0278-appointment-status", "Booked", "booked"),
        ("0278-appointment-status", "Noshow", "noshow"),
        ("0280-referral-priority", "S", "stat"),
        ("0322-immunization-status", "RE", "not-done"),
        ("0322-immunization-status", "CP", "completed"),
        ("0323-immunization-status", "D", "entered-in-error"),
        ("0128-reaction-severity", "SV", "severe"),
    ],
)
def test_ig_concept_maps(tables: dict[str, Table], name: str, code: str, expected: str) -> None:
    assert tables[name].code(code) == expected


def test_ethnic_group_becomes_a_cdc_code(tables: dict[str, Table]) -> None:
    assert tables["0189-ethnic-group"].coding("H") == {
        "system": "urn:oid:2.16.840.1.113883.6.238",
        "code": "2135-2",
        "display": "Hispanic or Latino",
    }
    assert tables["0189-ethnic-group"].coding("U")["system"] == "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"


@pytest.mark.parametrize("name", [n for n, s in sorted(_files().items()) if s.get("unmapped") == "keep"])
def test_keep_tables_keep_a_local_code_in_the_v2_tables_system(name: str, tables: dict[str, Table]) -> None:
    number = _files()[name]["source"][3:]
    coding = tables[name].coding("ZZLOCAL")
    assert coding == {"system": f"http://terminology.hl7.org/CodeSystem/v2-{number}", "code": "ZZLOCAL"}


def test_drop_tables_drop_and_error_tables_refuse(tables: dict[str, Table]) -> None:
    from engine.transform.tables import Unmapped

    assert tables["0278-appointment-status"].code("Blocked") is None
    with pytest.raises(Unmapped):
        tables["0322-immunization-status"].code("XX")


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


def test_an_unknown_coding_system_name_keeps_the_code_without_an_invented_system(mappings: MappingSet) -> None:
    text = (MAPPINGS / "hl7v2" / "samples" / "oru_r01_cbc.hl7").read_text(encoding="utf-8")
    segments = hl7v2.split_segments(text)
    obx = next(i for i, s in enumerate(segments) if s.startswith("OBX|"))
    fields = segments[obx].split("|")
    fields[3] = "X-1^Local glucose panel^99ZLAB"
    segments[obx] = "|".join(fields)
    bundle = mappings.transform(
        hl7v2.Message.parse("\r".join(segments)), validation="full", identifiers=Identifiers(authority="LAB")
    )
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs[0]["code"]["coding"] == [{"code": "X-1", "display": "Local glucose panel"}]
