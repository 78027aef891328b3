"""The ADT, BAR and DFT messages of the public corpus (``shared/corpus/hl7v2``) through their message maps.

Every corpus message of these types is mapped with full FHIR validation, as a channel whose default
assigning authority is the sending facility would (``CHANNEL``), or refused for a reason listed in
``REFUSED`` (the field named). For each trigger the test checks what the trigger means in FHIR — the
Encounter status it sets, merges that retire a Patient (``active: false``, ``link`` replaced-by / replaces),
an identifier change found by the old identifier — and that nothing a cancel or delete sends creates a
second record or a DELETE: every entry is a conditional ``PUT`` and every identity is unique.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import hl7v2
from engine.errors import HL7Error, TransformError
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2"
MS = "microsoft-fhir-converter"
LFH = "linuxforhealth-hl7v2-fhir-converter"
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")

#: Refused messages → the field named (and why).
REFUSED = {
    f"{MS}/ADT-A41-02.hl7": "PV1-19",  # two patients' PV1 carry the same visit number
    f"{MS}/BAR-P02-02.hl7": "PV1-19",  # idem
    f"{MS}/BAR-P12-01.hl7": "OBX-5",  # repeated RP values (OBX-Observation: one OBX, one value of that type)
    # a visit group with neither visit number nor admit time: its charges and coverage hang on the visit
    f"{LFH}/extracted-from-tests/Hl7DFTMessageTest.testResourceCreationFromDFT.hl7": "PV1-19",
}
UNREADABLE = {f"{LFH}/sample_unix.hl7", f"{LFH}/sample_win.hl7"}  # MSH-2 written as ^~\\&

#: Encounter status each trigger sets (None: by patient class or discharge, as sent).
STATUS = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "in-progress",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A13": "in-progress",
    "A14": "planned",
    "A15": "in-progress",
    "A16": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A29": "entered-in-error",
}


@dataclass(frozen=True)
class Sample:
    key: str
    path: Path
    trigger: str


def _samples() -> list[Sample]:
    manifest = CORPUS / "manifest.csv"
    if not manifest.exists():
        return []
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Sample(f"{r['peer']}/{r['file']}", CORPUS / r["peer"] / r["file"], f"{r['msg_type']}^{r['trigger']}")
        for r in rows
        if r["msg_type"] in ("ADT", "BAR", "DFT")
    ]


SAMPLES = _samples()
pytestmark = pytest.mark.skipif(not SAMPLES, reason="HL7 v2 corpus (../shared/corpus/hl7v2) not present")


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(ROOT / "mappings")


def _run(ms: MappingSet, sample: Sample) -> dict[str, Any] | Exception:
    try:
        message = hl7v2.Message.parse(hl7v2.decode(sample.path.read_bytes()))
        return ms.transform(message, validation="full", identifiers=CHANNEL)
    except (TransformError, HL7Error) as exc:
        return exc


def _of(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_every_type_of_this_family_has_corpus_messages_and_a_map(mappings: MappingSet) -> None:
    types = {s.trigger for s in SAMPLES}
    assert len(types) >= 30
    assert sorted(t for t in types if not mappings.has_mapping(t)) == []


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.key for s in SAMPLES])
def test_corpus_message_maps_to_what_its_trigger_means(mappings: MappingSet, sample: Sample) -> None:
    got = _run(mappings, sample)
    if sample.key in UNREADABLE:
        assert isinstance(got, HL7Error)
        return
    if sample.key in REFUSED:
        assert isinstance(got, TransformError), "expected a refusal"
        assert got.field is not None and got.field.startswith(REFUSED[sample.key])
        return
    assert isinstance(got, dict), f"refused: {got}"
    entries = got["entry"]
    assert {e["request"]["method"] for e in entries} == {"PUT"}  # cancels and deletes are updates, never DELETE
    assert len({e["request"]["url"] for e in entries}) == len(entries)  # one entry per record
    assert all("?identifier=" in e["request"]["url"] and "|" in e["request"]["url"] for e in entries)
    trigger = sample.trigger.split("^")[1]
    encounters = _of(got, "Encounter")
    if trigger in STATUS and encounters:
        assert {e["status"] for e in encounters} == {STATUS[trigger]}
    patients = _of(got, "Patient")
    if trigger in ("A34", "A40"):
        retired = [p for p in patients if p.get("active") is False]
        assert retired and len(retired) * 2 == len(patients)
        assert {lk["type"] for p in retired for lk in p["link"]} == {"replaced-by"}
        assert {lk["type"] for p in patients if p not in retired for lk in p["link"]} == {"replaces"}
    if trigger == "A47":
        assert all(any(i.get("use") == "old" for i in p["identifier"]) for p in patients)
    if trigger == "A29":
        assert [p.get("active") for p in patients] == [False]
    if trigger == "A60" and b"IAM|" in sample.path.read_bytes():  # SIU_12.hl7 is an SIU labelled ADT^A60
        assert _of(got, "AllergyIntolerance")
    if sample.trigger.startswith("DFT"):
        assert _of(got, "ChargeItem")
    for enc in encounters:
        for loc in enc.get("location", []):
            ref = loc["location"].get("reference")
            assert ref is None or ref in {e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Location"}


def test_a_resend_gives_the_same_bundle(mappings: MappingSet) -> None:
    for sample in SAMPLES:
        if sample.key in REFUSED or sample.key in UNREADABLE:
            continue
        assert _run(mappings, sample) == _run(mappings, sample), sample.key
