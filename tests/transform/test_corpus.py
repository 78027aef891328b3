"""The public HL7 v2 corpus (``shared/corpus/hl7v2``) through ``transform(validation="full")``.

Every ORU^R01 and ADT^A01/A03/A04/A08 message of the corpus must either become a transaction bundle that
fhir.resources R4B validates, or be refused with a clear error naming the field. The refusals are listed
below (``REJECTED``) with their reason, so a change in behaviour shows up as a failing test. Currently:
29 messages, 18 mapped, 9 refused by a mapping rule, 2 refused by the HL7 reader.

The corpus runs as one channel would receive it (``CHANNEL``): an identifier sent without an assigning
authority takes the sending facility MSH-4 as its authority, else the channel's own. Without such a
default the five messages in ``NO_AUTHORITY`` are refused, naming the empty component: a conditional
update keyed on a value without a system would match another facility's records.

Where the Microsoft FHIR-Converter ships an expected output we compare key facts: the patient's first
name (family, and our given names a prefix of theirs), birth date, gender, identifier values (ours a
subset of theirs), Observation count, codes and values, DiagnosticReport codes, Encounter class and
period (as instants: their snapshots render times in other offsets). Deliberate differences from MS:

* bundle: we emit a ``transaction`` with conditional ``PUT Type?identifier=…`` and ``urn:uuid`` fullUrls
  derived from business identifiers, no resource ids; MS emits a ``batch`` of ``PUT Type/<id>``;
* scope: we make Patient, Encounter, DiagnosticReport and Observation only (no MessageHeader, Provenance,
  Practitioner, Organization, Location, Specimen, ServiceRequest, Account, RelatedPerson, Coverage…),
  and no Observations from OBX/PDA in ADT messages; MS also adds names and identifiers to the Patient
  from NK1, IN1, GT1 and similar segments, which we do not;
* rules MS relaxes: an empty OBR-25 is an error (as the IG says; MS writes ``unknown``); an Encounter
  needs a visit number (PV1-19) to be identified; OBX value types we have no rule for (ED, RP) refuse the
  message rather than drop the value; an OBX without OBX-3 is refused (Observation.code is required);
* MS fills Encounter.period.end in ADT-A04-01 although PV1-45 is empty; we compare ``end`` only when
  we produce one.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine import hl7v2
from engine.errors import HL7Error, TransformError
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2"
TYPES = {"ORU^R01", "ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08"}
LFH = "linuxforhealth-hl7v2-fhir-converter"
MS = "microsoft-fhir-converter"

#: Messages refused by a mapping rule → the field named (and why).
REJECTED = {
    f"{MS}/ADT01-28.hl7": "PV1-19",  # no visit number: the Encounter cannot be identified
    f"{MS}/ADT04-251.hl7": "PV1-19",
    f"{MS}/LAB-ORU-1.hl7": "OBR-25",  # the second OBR has no result status (IG: error)
    f"{MS}/LAB-ORU-2.hl7": "OBR-25",
    f"{MS}/ORU-R01-01.hl7": "OBX-11",  # an ED result without status or code (IG: OBX-11 and OBX-3 required)
    f"{LFH}/ORU-multiline-short-mixed.hl7": "OBX-3",  # text OBX without an observation identifier
    f"{LFH}/ORU-multiline-short.hl7": "OBX-3",
    f"{LFH}/extracted-from-tests/FHIRConverterTest.test_patient_encounter.hl7": "PV1-2",  # class "ff"
    f"{LFH}/extracted-from-tests/Hl7ORUMessageTest.test_ORU_r01_without_status.hl7": "OBR-25",
}
#: Mapped with the channel's default authority; refused without one (an identity without CX-4 / EI-2).
NO_AUTHORITY = {
    f"{MS}/ADT04-23.hl7": "PID-3.4",
    f"{MS}/ADT04-28.hl7": "PV1-19.4",  # PID-3 has an authority, the visit number has none
    f"{MS}/ORU-R01-RMGEAD.hl7": "PID-3.4",
    f"{LFH}/extracted-from-tests/HL7ADTMessageTest.testAdtA03AllSegmentsAndMultipleGroups.hl7": "PID-3.4",
    f"{LFH}/extracted-from-tests/HL7ConditionFHIRConversionTest."
    "validateEncounterMultipleDiagnosesTestingMultipleDiagnosisAndReasonReferences.hl7": "PID-3.4",
}
#: How the corpus channel fills a missing assigning authority (two LFH messages have no MSH-4).
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")
#: Messages the HL7 reader refuses (MSH-2 written as ``^~\\&``, a robustness test upstream).
UNREADABLE = {f"{LFH}/sample_unix.hl7", f"{LFH}/sample_win.hl7"}


@dataclass(frozen=True)
class Sample:
    key: str
    path: Path
    expected: Path | None
    message_type: str


def _samples() -> list[Sample]:
    manifest = CORPUS / "manifest.csv"
    if not manifest.is_file():
        return []
    out = []
    with manifest.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            mt = f"{row['msg_type']}^{row['trigger']}"
            if mt not in TYPES:
                continue
            folder = CORPUS / row["peer"]
            expected = folder / row["expected"] if row["expected"] and row["peer"] == MS else None
            out.append(Sample(f"{row['peer']}/{row['file']}", folder / row["file"], expected, mt))
    return out


SAMPLES = _samples()
pytestmark = pytest.mark.skipif(not SAMPLES, reason="HL7 v2 corpus (../shared/corpus/hl7v2) not present")


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(ROOT / "mappings")


def _run(ms: MappingSet, sample: Sample, identifiers: Identifiers | None = CHANNEL) -> dict[str, Any] | Exception:
    try:
        message = hl7v2.Message.parse(hl7v2.decode(sample.path.read_bytes()))
        return ms.transform(message, validation="full", identifiers=identifiers)
    except (TransformError, HL7Error) as exc:
        return exc


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _walk(v: Any, path: str = "") -> list[str]:
    """Paths of empty values anywhere in v."""
    bad = []
    if isinstance(v, dict):
        for k, x in v.items():
            bad += [f"{path}.{k}"] if _empty(x) else _walk(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            bad += [f"{path}[{i}]"] if _empty(x) else _walk(x, f"{path}[{i}]")
    return bad


def _references(v: Any) -> list[str]:
    if isinstance(v, dict):
        out = [v["reference"]] if isinstance(v.get("reference"), str) else []
        return out + [r for x in v.values() for r in _references(x)]
    if isinstance(v, list):
        return [r for x in v for r in _references(x)]
    return []


def check_shape(bundle: dict[str, Any]) -> None:
    """The transaction contract of docs/architecture.md."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for e in bundle["entry"]:
        r = e["resource"]
        assert e["fullUrl"].startswith("urn:uuid:") and len(e["fullUrl"]) == 45
        assert e["request"]["method"] == "PUT"
        assert e["request"]["url"].startswith(f"{r['resourceType']}?identifier=")
        system, _, value = e["request"]["url"].split("=", 1)[1].partition("|")
        assert system and value, "a conditional update keyed on an identifier without a system"
        assert any(i.get("system") for i in r["identifier"])
        assert "id" not in r
        assert _walk(r) == []
        assert all(ref in urls for ref in _references(r) if ref.startswith("urn:uuid:"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.key for s in SAMPLES])
def test_message_maps_or_is_refused_clearly(mappings: MappingSet, sample: Sample) -> None:
    got = _run(mappings, sample)
    if sample.key in REJECTED:
        assert isinstance(got, TransformError), f"expected a refusal naming {REJECTED[sample.key]}"
        assert got.field == REJECTED[sample.key] and got.rule and got.code
    elif sample.key in UNREADABLE:
        assert isinstance(got, HL7Error)
    else:
        assert isinstance(got, dict), f"refused: {got}"
        check_shape(got)


def test_without_a_default_authority_identities_lacking_one_are_refused(mappings: MappingSet) -> None:
    refused = {}
    for s in SAMPLES:
        if s.key in REJECTED or s.key in UNREADABLE:
            continue
        got = _run(mappings, s, None)
        if isinstance(got, TransformError):
            assert got.code == "101" and got.rule
            refused[s.key] = got.field
        else:
            assert isinstance(got, dict), f"{s.key}: {got}"
            check_shape(got)
    assert refused == NO_AUTHORITY


def test_pass_counts(mappings: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = Counter()
    for s in SAMPLES:
        got = _run(mappings, s)
        outcomes["mapped" if isinstance(got, dict) else type(got).__name__] += 1
    with capsys.disabled():
        print(f"\ncorpus: {len(SAMPLES)} messages, {dict(outcomes)}")
    assert outcomes["mapped"] == len(SAMPLES) - len(REJECTED) - len(UNREADABLE)


def _of(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _instant(s: str | None) -> Any:
    if s is None or len(s) <= 10:
        return s
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _obs_key(o: dict[str, Any]) -> tuple[Any, ...]:
    code = o.get("code", {}).get("coding", [{}])[0].get("code")
    if "valueQuantity" in o:
        return code, o["valueQuantity"].get("value")
    if "valueCodeableConcept" in o:
        return code, o["valueCodeableConcept"].get("coding", [{}])[0].get("code")
    return code, o.get("valueString")


COMPARED = [s for s in SAMPLES if s.expected is not None and s.key not in REJECTED]


@pytest.mark.parametrize("sample", COMPARED, ids=[s.key for s in COMPARED])
def test_key_facts_match_microsoft(mappings: MappingSet, sample: Sample) -> None:
    ours = _run(mappings, sample)
    assert isinstance(ours, dict)
    assert sample.expected is not None
    theirs = json.loads(sample.expected.read_text(encoding="utf-8"))

    (p,), (q,) = _of(ours, "Patient"), _of(theirs, "Patient")
    assert p["name"][0]["family"] == q["name"][0]["family"]
    given = p["name"][0].get("given", [])
    assert given == q["name"][0].get("given", [])[: len(given)]
    assert p.get("birthDate") == q.get("birthDate")
    assert p.get("gender") == q.get("gender")
    assert {i["value"] for i in p["identifier"]} <= {i.get("value") for i in q.get("identifier", [])}

    enc, theirs_enc = _of(ours, "Encounter"), _of(theirs, "Encounter")
    if enc:
        e, f = enc[0], theirs_enc[0]
        assert e["class"]["code"] == f["class"]["code"]
        assert _instant(e["period"]["start"]) == _instant(f["period"]["start"])
        if "end" in e["period"]:
            assert _instant(e["period"]["end"]) == _instant(f["period"]["end"])

    if sample.message_type == "ORU^R01":
        assert sorted(map(str, map(_obs_key, _of(ours, "Observation")))) == sorted(
            map(str, map(_obs_key, _of(theirs, "Observation")))
        )
        codes = [d["code"]["coding"][0]["code"] for d in _of(ours, "DiagnosticReport")]
        assert codes == [d["code"]["coding"][0]["code"] for d in _of(theirs, "DiagnosticReport")]
