"""Every OBX-2 value type through the real mappings (ORU^R01, full FHIR validation).

Each value type of HL7 table 0125 either becomes the value the IG's OBX[Observation] map names, with
nothing lost (precision, offset, escapes, bytes), or refuses the whole message naming the field — never
an Observation without its value and never a report missing one of its results.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from engine import hl7v2
from engine.errors import TransformError
from engine.transform import MappingSet, load_mappings

ROOT = Path(__file__).resolve().parents[2]
HEAD = (
    "MSH|^~\\&|LABSYS|CITYLAB|EHR|GENHOSP|20240101120000||ORU^R01|V1|P|2.5.1\r"
    "PID|1||P100^^^GENHOSP^MR||DOE^JOHN||19700101|M\r"
    "OBR|1||F100^CITYLAB|11502-2^Lab report^LN|||202401011030||||||||||||||||||F\r"
)
VALUE_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value"


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(ROOT / "mappings")


def obx(value_type: str, value: str, units: str = "", status: str = "F") -> str:
    return f"OBX|1|{value_type}|1234-5^Test^LN||{value}|{units}|||||{status}\r"


def run(ms: MappingSet, *segments: str, timezone: str = "UTC") -> dict[str, Any]:
    bundle = ms.transform(hl7v2.Message.parse(HEAD + "".join(segments)), validation="full", timezone=timezone)
    return bundle


def observations(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def one(ms: MappingSet, *segments: str, timezone: str = "UTC") -> dict[str, Any]:
    (o,) = observations(run(ms, *segments, timezone=timezone))
    return o


def refused(ms: MappingSet, *segments: str) -> TransformError:
    with pytest.raises(TransformError) as info:
        run(ms, *segments)
    return info.value


# --- numbers --------------------------------------------------------------------------------------


def test_nm_with_ucum_units(mappings: MappingSet) -> None:
    o = one(mappings, obx("NM", "7.25", "mmol/L^millimole per liter^UCUM"))
    assert o["valueQuantity"] == {
        "value": 7.25,
        "unit": "millimole per liter",
        "code": "mmol/L",
        "system": "http://unitsofmeasure.org",
    }


@pytest.mark.parametrize("value", ["positive", "1,5", "12..3", "--1", "1e5"])
def test_nm_that_is_not_a_number_refuses_the_message_naming_obx5(mappings: MappingSet, value: str) -> None:
    err = refused(mappings, obx("NM", value))
    assert (err.field, err.code) == ("OBX-5", "102")
    assert value not in str(err)  # the error names the place, never the value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<^0.10", {"valueQuantity": {"comparator": "<", "value": 0.1}}),
        (">=^5", {"valueQuantity": {"comparator": ">=", "value": 5}}),
        ("^10^-^20", {"valueRange": {"low": {"value": 10}, "high": {"value": 20}}}),
        ("^1^:^160", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 160}}}),
        ("^1^/^2", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}}),
        ("^2^+", {"valueString": "2 +"}),
    ],
)
def test_sn_comparator_range_ratio_and_text(mappings: MappingSet, value: str, expected: dict[str, Any]) -> None:
    o = one(mappings, obx("SN", value))
    for key, want in expected.items():
        got = o[key]
        assert got == want if isinstance(want, str) else {k: got[k] for k in want} == want


def test_sn_comparator_fhir_cannot_hold_is_refused(mappings: MappingSet) -> None:
    assert refused(mappings, obx("SN", "<>^5")).field == "OBX-5"


def test_nr_is_a_range(mappings: MappingSet) -> None:
    assert one(mappings, obx("NR", "3.5^7"))["valueRange"] == {"low": {"value": 3.5}, "high": {"value": 7}}


def test_cq_quantity_with_units(mappings: MappingSet) -> None:
    o = one(mappings, obx("CQ", "250^mL&milliliter&UCUM"))
    assert o["valueQuantity"] == {"value": 250, "unit": "mL", "code": "mL", "system": "http://unitsofmeasure.org"}


def test_mo_and_cp_are_money_in_iso_4217(mappings: MappingSet) -> None:
    mo = one(mappings, obx("MO", "12.50^USD"))["valueQuantity"]
    assert mo == {"value": 12.5, "unit": "USD", "code": "USD", "system": "urn:iso:std:iso:4217"}
    cp = one(mappings, obx("CP", "99.95&EUR^UP"))["valueQuantity"]
    assert (cp["value"], cp["code"]) == (99.95, "EUR")
    assert refused(mappings, obx("MO", "5^dollars")).field == "OBX-5"


# --- text and escapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("value_type", ["ST", "TX", "FT"])
def test_text_escapes_are_resolved(mappings: MappingSet, value_type: str) -> None:
    raw = "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f caf\\XC3A9\\ na\\XEF\\ve"
    o = one(mappings, obx(value_type, raw))
    assert o["valueString"] == "a|b^c&d~e\\f café naïve"


def test_ft_formatting_becomes_plain_text_lines(mappings: MappingSet) -> None:
    raw = "\\H\\IMPRESSION\\N\\:\\.br\\No acute findings.\\.sp 2\\\\.in+4\\Signed."
    assert one(mappings, obx("FT", raw))["valueString"] == "IMPRESSION:\nNo acute findings.\n\nSigned."


def test_repeated_text_is_joined_by_lines(mappings: MappingSet) -> None:
    assert one(mappings, obx("TX", "line one~line two~"))["valueString"] == "line one\nline two"


def test_a_huge_sp_count_is_capped(mappings: MappingSet) -> None:
    assert one(mappings, obx("FT", "a\\.sp 99999999\\b"))["valueString"].count("\n") == 100


# --- codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_type", ["CE", "CWE", "CNE", "CF"])
def test_coded_values(mappings: MappingSet, value_type: str) -> None:
    o = one(mappings, obx(value_type, "3092008^Staphylococcus aureus^SCT^STAU^Staph^L"))
    codings = o["valueCodeableConcept"]["coding"]
    assert codings[0] == {"code": "3092008", "display": "Staphylococcus aureus", "system": "http://snomed.info/sct"}
    assert codings[1]["code"] == "STAU"


# --- dates and times keep the precision and offset sent -------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "value", "key", "expected"),
    [
        ("DT", "2024", "valueDateTime", "2024"),
        ("DT", "202406", "valueDateTime", "2024-06"),
        ("DT", "20240612", "valueDateTime", "2024-06-12"),
        ("DTM", "202406121430", "valueDateTime", "2024-06-12T14:30:00-04:00"),
        ("DTM", "20240612143015.25+0530", "valueDateTime", "2024-06-12T14:30:15.25+05:30"),
        ("TS", "20240112143015-0800", "valueDateTime", "2024-01-12T14:30:15-08:00"),
        ("TM", "1430", "valueTime", "14:30:00"),
        ("TM", "143015", "valueTime", "14:30:15"),
    ],
)
def test_dates_and_times(mappings: MappingSet, value_type: str, value: str, key: str, expected: str) -> None:
    assert one(mappings, obx(value_type, value), timezone="America/New_York")[key] == expected


@pytest.mark.parametrize("value", ["19991340", "20240230", "2024061"])
def test_impossible_dates_refuse_naming_obx5(mappings: MappingSet, value: str) -> None:
    err = refused(mappings, obx("DT", value))
    assert (err.field, err.code) == ("OBX-5", "102")


def test_dr_is_a_period(mappings: MappingSet) -> None:
    o = one(mappings, obx("DR", "20240101^20240131"))
    assert o["valuePeriod"] == {"start": "2024-01-01", "end": "2024-01-31"}


# --- ED and RP: attachments -----------------------------------------------------------------------


def attachment(o: dict[str, Any]) -> dict[str, Any]:
    (ext,) = o["extension"]
    assert ext["url"] == VALUE_EXT
    return ext["valueAttachment"]


def test_ed_base64_is_kept_byte_for_byte(mappings: MappingSet) -> None:
    payload = bytes(range(256)) * 3  # every byte value, including those that base64 maps to + and /
    data = base64.b64encode(payload).decode()
    att = attachment(one(mappings, obx("ED", f"LAB^application^pdf^Base64^{data}")))
    assert att["contentType"] == "application/pdf"
    assert att["data"] == data
    assert base64.b64decode(att["data"]) == payload


@pytest.mark.parametrize(
    ("value", "content_type", "payload"),
    [
        ("^IM^JPEG^Hex^FFD8FFE000", "image/jpeg", bytes.fromhex("FFD8FFE000")),
        ("^TEXT^^A^Hello\\T\\goodbye", "text/plain", b"Hello&goodbye"),
        ("^AP^PDF^Base64^JVBERi0xLjQK", "application/pdf", b"%PDF-1.4\n"),
    ],
)
def test_ed_hex_text_and_subtype_media_types(
    mappings: MappingSet, value: str, content_type: str, payload: bytes
) -> None:
    att = attachment(one(mappings, obx("ED", value)))
    assert att["contentType"] == content_type
    assert base64.b64decode(att["data"]) == payload


@pytest.mark.parametrize(
    "value",
    ["^AP^PDF^Base64^JVBERi0*xLjQK", "^AP^PDF^Base64^JVBERi0xLjQ", "^IM^JPEG^Hex^FFD8F", "^AP^PDF^uuencode^abc"],
)
def test_broken_ed_refuses_the_whole_report(mappings: MappingSet, value: str) -> None:
    err = refused(mappings, obx("NM", "5.4", "mmol/L"), obx("ED", value))
    assert (err.field, err.code) == ("OBX-5", "102")
    assert "Observation" in (err.rule or "") or "OBX" in (err.rule or "")


def test_rp_is_a_url_attachment(mappings: MappingSet) -> None:
    o = one(mappings, obx("RP", "https://pacs.example.org/view?study=1\\T\\series=2^PACS^IM^JPEG"))
    assert attachment(o) == {"url": "https://pacs.example.org/view?study=1&series=2", "contentType": "image/jpeg"}


# --- repetitions and unmapped types ---------------------------------------------------------------


def test_repeated_numbers_become_components(mappings: MappingSet) -> None:
    o = one(mappings, obx("NM", "60~120", "/min^per minute^UCUM"))
    assert "valueQuantity" not in o
    assert [c["valueQuantity"]["value"] for c in o["component"]] == [60, 120]
    assert {c["code"]["coding"][0]["code"] for c in o["component"]} == {"1234-5"}
    assert o["component"][0]["code"]["coding"][0]["system"] == "http://loinc.org"


def test_repeated_codes_become_components(mappings: MappingSet) -> None:
    o = one(mappings, obx("CWE", "A^Alpha^L~B^Beta^L"))
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in o["component"]] == ["A", "B"]
    assert "valueCodeableConcept" not in o


def test_a_repeated_ed_is_refused_rather_than_half_mapped(mappings: MappingSet) -> None:
    err = refused(mappings, obx("ED", "^AP^PDF^Base64^JVBERi0xLjQK~^AP^PDF^Base64^JVBERi0xLjQK"))
    assert err.field == "OBX-5"


@pytest.mark.parametrize(
    "value_type", ["NA", "MA", "AD", "XAD", "PN", "XPN", "CN", "XCN", "XTN", "TN", "CX", "EI", "ZZ"]
)
def test_value_types_without_a_rule_refuse_the_message(mappings: MappingSet, value_type: str) -> None:
    err = refused(mappings, obx("NM", "5.4", "mmol/L"), obx(value_type, "1^2^3"))
    assert (err.field, err.code) == ("OBX-2", "102")


def test_a_value_without_a_value_type_is_refused(mappings: MappingSet) -> None:
    assert refused(mappings, obx("", "5.4")).field == "OBX-2"


def test_no_value_is_fine_when_the_status_says_why(mappings: MappingSet) -> None:
    o = one(mappings, obx("NM", "", status="X"))
    assert o["dataAbsentReason"]["coding"][0]["code"] == "cannot-be-obtained"


def test_every_0125_type_is_either_mapped_or_refused(mappings: MappingSet) -> None:
    """The whole table: no value type leaves a report with an Observation that lost its value."""
    samples = {
        "AD": "1 Main St",
        "CE": "A^Alpha^L",
        "CF": "A^Alpha^L",
        "CK": "123^4^M10",
        "CN": "123^DOE^JOHN",
        "CNE": "A^Alpha^L",
        "CP": "10&USD",
        "CQ": "5^mg",
        "CWE": "A^Alpha^L",
        "CX": "123^^^H",
        "DR": "20240101^20240102",
        "DT": "20240101",
        "DTM": "20240101101010",
        "ED": "^TEXT^^A^hello",
        "EI": "X1^H",
        "FT": "text",
        "ID": "Y",
        "IS": "Y",
        "MA": "1^2",
        "MO": "5^USD",
        "NA": "1^2",
        "NM": "5",
        "NR": "1^2",
        "PN": "DOE^JOHN",
        "RP": "http://x.example/a",
        "SN": "^5",
        "ST": "text",
        "TM": "1010",
        "TN": "555-1234",
        "TS": "20240101101010",
        "TX": "text",
        "XAD": "1 Main St",
        "XCN": "1^DOE",
        "XON": "Org",
        "XPN": "DOE^JOHN",
        "XTN": "555-1234",
    }
    values = ("valueQuantity", "valueRange", "valueRatio", "valueString", "valueCodeableConcept")
    values += ("valueDateTime", "valueTime", "valuePeriod", "extension", "component")
    for value_type, value in samples.items():
        try:
            o = one(mappings, obx(value_type, value))
        except TransformError as exc:
            assert exc.field == "OBX-2", value_type
            continue
        assert any(k in o for k in values), value_type
