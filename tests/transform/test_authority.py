"""No conditional update keyed on an identifier without a system (issue 5, defect 1).

An identity sent without an assigning authority (PID-3.4, PV1-19.4, OBR-3.2 / OBR-2.2, OBX-21.2) takes
the channel's default for the sender, resolved like a sent CX-4; derived identities follow their parent;
without a default the message is refused naming the empty component, never a value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine import hl7v2
from engine.errors import TransformError
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.bundle import conditional_url

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NORTH = "urn:interlink:id:NORTHHOSP"


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def msg(*segments: str, msh3: str = "PAS", msh4: str = "NORTH", msh9: str = "ADT^A01") -> hl7v2.Message:
    msh = f"MSH|^~\\&|{msh3}|{msh4}|EHR|G|20240101120000||{msh9}|C1|P|2.5.1"
    return hl7v2.Message.parse("\r".join([msh, *segments]) + "\r")


def adt(pid3: str = "777^^^^MR", pv1_19: str = "V9", **kw: str) -> hl7v2.Message:
    return msg(f"PID|1||{pid3}||DOE^JOHN||19700101|M", f"PV1|1|I|W^1^A||||||||||||||||{pv1_19}", **kw)


def oru(obr2: str = "", obr3: str = "F1", obx21: str = "", **kw: str) -> hl7v2.Message:
    obr = ["OBR", "1", obr2, obr3, "2345-7^Glucose^LN", "", "", "202401011030"] + [""] * 18
    obr[25] = "F"
    obx = f"OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F||||||||||{obx21}"
    return msg(
        "PID|1||P1^^^GENHOSP^MR||DOE^JOHN||19700101|M",
        "OBX|1|NM|29463-7^Body weight^LN||72|kg|||||F|||20240101090000",  # an observation of the patient
        "|".join(obr),
        obx,
        msh9="ORU^R01",
        **kw,
    )


def urls(bundle: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in bundle["entry"]:
        out.setdefault(e["resource"]["resourceType"], []).append(e["request"]["url"])
    return out


def of(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


# -- the config ------------------------------------------------------------------------------------


def test_config_is_strict_and_says_whether_a_default_exists() -> None:
    assert not Identifiers().declares_default
    assert Identifiers(authority="urn:oid:1.2.3").declares_default
    assert Identifiers(facility_as_authority=True).declares_default
    assert Identifiers(by_facility={"NORTH": "NORTHHOSP"}).declares_default
    for bad in ({"authorty": "X"}, {"authority": "two words"}, {"by_facility": {" ": "X"}}, {"authority": ""}):
        with pytest.raises(ValidationError):
            Identifiers.model_validate(bad)


def test_sender_lookup_order() -> None:
    ids = Identifiers(
        by_application={"PAS": "PASNUM"},
        by_facility={"NORTH": "NORTHHOSP", "1.2.3.4": "BYOID"},
        facility_as_authority=True,
        authority="CHANNEL",
    )

    def hd(msh3: str, msh4: str) -> tuple[str | None, str | None, str | None] | None:
        return ids.authority_for(adt(msh3=msh3, msh4=msh4).header)

    assert hd("PAS", "NORTH") == ("PASNUM", None, None)  # application first
    assert hd("LIS", "NORTH") == ("NORTHHOSP", None, None)  # then facility, by namespace
    assert hd("LIS", "X^1.2.3.4^ISO") == ("BYOID", None, None)  # … or by universal ID
    assert hd("LIS", "SOUTH^2.16.1^ISO") == ("SOUTH", "2.16.1", "ISO")  # then MSH-4 itself (opt-in)
    assert hd("LIS", '""') == ("CHANNEL", None, None)  # HL7 null: no facility, the channel's authority
    assert Identifiers(by_facility={"NORTH": "N"}).authority_for(adt(msh4="SOUTH").header) is None


# -- the transform ---------------------------------------------------------------------------------


def test_a_defaulted_authority_gives_the_same_identity_as_a_sent_one(ms: MappingSet) -> None:
    sent = ms.transform(adt("777^^^NORTHHOSP^MR", "V9^^^NORTHHOSP"), validation="full")
    defaulted = ms.transform(adt(), validation="full", identifiers=Identifiers(by_facility={"NORTH": "NORTHHOSP"}))
    assert (
        urls(defaulted)
        == urls(sent)
        == {
            "Patient": [f"Patient?identifier={NORTH}|777"],
            "Encounter": [f"Encounter?identifier={NORTH}|V9"],
        }
    )
    assert [e["fullUrl"] for e in defaulted["entry"]] == [e["fullUrl"] for e in sent["entry"]]
    # The identity identifier carries the system: filled in place, not a second system-less copy.
    assert of(defaulted, "Patient")[0]["identifier"] == of(sent, "Patient")[0]["identifier"]
    assert [i.get("system") for i in of(defaulted, "Encounter")[0]["identifier"]] == [NORTH]


def test_only_the_identity_takes_the_default(ms: MappingSet) -> None:
    b = ms.transform(adt("777^^^^MR~555^^^^PI"), validation="full", identifiers=Identifiers(authority="NORTHHOSP"))
    assert [(i.get("system"), i["value"]) for i in of(b, "Patient")[0]["identifier"]] == [(NORTH, "777"), (None, "555")]


def test_the_default_resolves_like_cx_4_oid_uri_and_site_table(ms: MappingSet, tmp_path: Path) -> None:
    def patient_url(m: MappingSet, ids: Identifiers, msh4: str = "NORTH") -> str:
        return urls(m.transform(adt(msh4=msh4), validation="off", identifiers=ids))["Patient"][0]

    assert patient_url(ms, Identifiers(authority="2.16.840.1.113883.3.72")) == (
        "Patient?identifier=urn:oid:2.16.840.1.113883.3.72|777"
    )
    assert patient_url(ms, Identifiers(authority="https://north.example/mrn")) == (
        "Patient?identifier=https://north.example/mrn|777"
    )
    assert patient_url(ms, Identifiers(facility_as_authority=True), "NORTH^2.16.840.1.9^ISO") == (
        "Patient?identifier=urn:oid:2.16.840.1.9|777"
    )
    site = tmp_path / "site" / "hl7v2" / "codesystems"
    site.mkdir(parents=True)
    (site / "identifier-systems.yaml").write_text(
        textwrap.dedent(
            """\
            description: Our MRN authority.
            merge: true
            map:
              NORTHHOSP: https://north.example/fhir/sid/mrn
            """
        )
    )
    with_site = load_mappings(MAPPINGS, overlays=[tmp_path / "site"])
    assert patient_url(with_site, Identifiers(by_application={"PAS": "NORTHHOSP"})) == (
        "Patient?identifier=https://north.example/fhir/sid/mrn|777"
    )


def test_order_numbers_obx_21_and_derived_identities(ms: MappingSet) -> None:
    ids = Identifiers(by_facility={"NORTH": "NORTHHOSP"})
    b = ms.transform(oru(), validation="full", identifiers=ids)
    assert urls(b)["DiagnosticReport"] == [f"DiagnosticReport?identifier={NORTH}|F1"]
    # Derived identities follow their parent: the report's (defaulted) and the patient's (sent) system.
    assert urls(b)["Observation"] == [
        "Observation?identifier=urn:interlink:id:GENHOSP|P1/29463-7/20240101090000",
        f"Observation?identifier={NORTH}|F1/2345-7",
    ]
    assert of(b, "DiagnosticReport")[0]["identifier"] == [
        {
            "system": NORTH,
            "value": "F1",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]},
        }
    ]
    placer = ms.transform(oru(obr2="PL1", obr3=""), validation="off", identifiers=ids)
    assert urls(placer)["DiagnosticReport"] == [f"DiagnosticReport?identifier={NORTH}|PL1"]
    obx21 = ms.transform(oru(obx21="OBX77"), validation="full", identifiers=ids)
    assert urls(obx21)["Observation"][1] == f"Observation?identifier={NORTH}|OBX77"


@pytest.mark.parametrize(
    ("message", "field", "rule"),
    [
        (adt(), "PID-3.4", "ADT_A01 patient"),
        (adt("777^^^NORTHHOSP^MR"), "PV1-19.4", "ADT_A01 encounter"),
        (oru(), "OBR-3.2", "ORU_R01 report"),
        (oru(obr2="PL1", obr3=""), "OBR-2.2", "ORU_R01 report"),
        (oru(obr3="F1^LAB", obx21="OBX77"), "OBX-21.2", "ORU_R01 observation"),
    ],
    ids=["PID-3", "PV1-19", "OBR-3", "OBR-2", "OBX-21"],
)
def test_without_a_default_the_message_is_refused_naming_the_field(
    ms: MappingSet, message: hl7v2.Message, field: str, rule: str
) -> None:
    for ids in (None, Identifiers(), Identifiers(by_facility={"SOUTH": "SOUTHHOSP"})):
        with pytest.raises(TransformError) as exc:
            ms.transform(message, validation="off", identifiers=ids)
        e = exc.value
        assert (e.field, e.code, e.rule) == (field, "101", rule)
        assert str(e).startswith(f"{field}: assigning authority is empty and the channel declares no default")
        for value in ("777", "V9", "F1", "PL1", "OBX77", "NORTH", "PAS", "DOE"):
            assert value not in str(e)


def test_a_conditional_url_is_never_built_without_a_system() -> None:
    assert conditional_url("Patient", "urn:oid:1.2", "7|7") == "Patient?identifier=urn:oid:1.2|7%5C%7C7"
    with pytest.raises(ValueError, match="needs an identifier system"):
        conditional_url("Patient", "", "777")
