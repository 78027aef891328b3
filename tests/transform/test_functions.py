"""The closed function registry: identifier systems, coding systems, numbers, SN, ranges, telecom, units."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from engine.transform.dates import Invalid, zone
from engine.transform.functions import REGISTRY, local_system
from engine.transform.tables import Table, TableFile
from engine.transform.units import valid

RUN = SimpleNamespace(tz=zone("UTC"))
SYSTEMS = Table("ids", TableFile(description="t", map={"SSA": "http://hl7.org/fhir/sid/us-ssn"}))
CODES = Table("cs", TableFile(description="t", map={"LN": "http://loinc.org"}))


def call(name: str, value: Any = None, **args: Any) -> Any:
    return REGISTRY[name].impl(RUN, value, **args)


@pytest.mark.parametrize(
    ("ns", "uid", "utype", "system"),
    [
        ("SSA", None, None, "http://hl7.org/fhir/sid/us-ssn"),  # the site/registry table first
        ("LAB", "2.16.840.1.113883.3.72", "ISO", "urn:oid:2.16.840.1.113883.3.72"),
        (None, "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "UUID", "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        (None, "https://hospital.example.org/mrn", "URI", "https://hospital.example.org/mrn"),
        ("https://hospital.example.org/mrn", None, None, "https://hospital.example.org/mrn"),
        ("1.2.840.114350", None, None, "urn:oid:1.2.840.114350"),
        ("NIST MPI", None, None, "urn:interlink:id:NIST%20MPI"),
        ("1", None, None, "urn:interlink:id:1"),  # a single number is not an OID
        ("PERSONNEL", "9.8", "ISO", "urn:interlink:id:PERSONNEL"),  # 9.8 is not a valid OID
        (None, None, None, None),
    ],
)
def test_authority_system_policy(ns: str | None, uid: str | None, utype: str | None, system: str | None) -> None:
    got = call("authority_system", namespace=ns, universal_id=uid, universal_id_type=utype, systems=SYSTEMS)
    assert got == system


def test_local_system_is_deterministic_and_a_valid_uri() -> None:
    assert local_system("St. Mary's #2") == local_system("St. Mary's #2") == "urn:interlink:id:St.%20Mary%27s%20%232"


@pytest.mark.parametrize(
    ("name", "uri"),
    [
        ("LN", "http://loinc.org"),
        ("HL70078", "http://terminology.hl7.org/CodeSystem/v2-0078"),
        ("2.16.840.1.113883.6.1", "urn:oid:2.16.840.1.113883.6.1"),
        ("99LOCAL", None),
    ],
)
def test_coding_system(name: str, uri: str | None) -> None:
    assert call("coding_system", name, systems=CODES) == uri


@pytest.mark.parametrize(("v", "n"), [("4.41", 4.41), ("245", 245), ("-0.5", -0.5), ("+3", 3), (".5", 0.5)])
def test_decimal(v: str, n: float) -> None:
    assert call("decimal", v) == n


@pytest.mark.parametrize("v", ["high", "1,5", "1.2.3", "", "<5"])
def test_decimal_refuses_non_numbers(v: str) -> None:
    with pytest.raises(Invalid):
        call("decimal", v)


def test_sn() -> None:
    assert call("sn_quantity", [">=", "10"]) == {"comparator": ">=", "value": 10}
    assert call("sn_quantity", ["=", "10"]) == {"value": 10}
    assert call("sn_quantity", ["<0.10"]) == {"comparator": "<", "value": 0.1}  # sent without separators
    assert call("sn_range", ["", "10", "-", "20"]) == {"low": {"value": 10}, "high": {"value": 20}}
    assert call("sn_ratio", ["", "1", ":", "160"]) == {"numerator": {"value": 1}, "denominator": {"value": 160}}
    assert call("sn_text", ["", "2", "+"]) == "2 +"
    with pytest.raises(Invalid):
        call("sn_quantity", ["<>", "5"])


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("70-105", 70, 105), ("4.3 to 6.2", 4.3, 6.2), ("<5", None, 5), (">=10", 10, None), ("negative", None, None)],
)
def test_reference_range(text: str, low: float | None, high: float | None) -> None:
    got = call("reference_range", text)
    assert got["text"] == text
    assert got.get("low", {}).get("value") == low
    assert got.get("high", {}).get("value") == high


def test_xtn_value() -> None:
    assert call("xtn_value", ["", "PRN", "PH", "", "1", "555", "555-8473"]) == "+1 (555) 555-8473"
    assert call("xtn_value", ["", "NET", "Internet", "eve@example.org"]) == "eve@example.org"
    assert call("xtn_value", ["(555)555-2004"]) == "(555)555-2004"
    assert call("xtn_value", ["", "WPN", "PH", "", "", "", "5550190", "12"]) == "5550190 ext. 12"


def test_person_and_location_display() -> None:
    assert call("xcn_display", ["123", "SMITH", "JOHN", "A", "JR", "DR"]) == "DR JOHN A SMITH JR"
    assert call("pl_display", ["4W", "412", "B", "GENHOSP"]) == "4W, 412, B, GENHOSP"
    assert call("pl_display", ["4W", "", "", "", "", "", "", "", "Fourth floor west"]) == "Fourth floor west"


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("mg/dL", True),
        ("10*3/uL", True),
        ("{cells}/uL", True),
        ("mm[Hg]", True),
        ("%", True),
        ("[IU]/L", True),
        ("kg/m2", True),
        ("mL/min/{1.73_m2}", True),
        ("tera.l-1", False),
        ("beats/min", False),
        ("IU/L", False),
        ("mEq/L", False),
        ("million per microliter", False),
        ("", False),
    ],
)
def test_ucum_syntax(code: str, ok: bool) -> None:
    assert valid(code) is ok


def test_units_named_ucum_are_trusted() -> None:
    assert call("ucum_system", ["mEq/L", "", "UCUM"]) == "http://unitsofmeasure.org"
    assert call("ucum_code", ["beats/min", "", "ISO+"]) is None


def test_every_function_is_described() -> None:
    assert all(f.description and f.output for f in REGISTRY.values())
