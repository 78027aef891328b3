"""The public HL7 v2 corpus (``shared/corpus/hl7v2``) through ``transform(validation="full")``.

Every message of the corpus, of every type, either becomes a transaction bundle that fhir.resources R4B
validates and that keeps the transaction contract (deterministic fullUrls, conditional PUTs keyed on an
identifier *with* a system, no ids, no empty values, references that resolve inside the bundle), or is
refused with an error naming the field, the rule and the HL7 code — never a crash. The HL7 reader refuses
the messages in ``UNREADABLE`` (``^~\\&`` in MSH-2, robustness tests upstream).

The corpus runs as one channel would receive it (``CHANNEL``): an identifier sent without an assigning
authority takes the sending facility MSH-4 as its authority, else the channel's own. Without such a
default, a message either maps exactly as before or is refused with HL7 101 naming the empty authority
component (PID-3.4, PV1-19.4, OBR-3.2…): a conditional update keyed on a value without a system would
match another facility's records.

How our bundles compare with the Microsoft FHIR-Converter's snapshots, fact by fact, is measured by
``interlink corpus`` (``engine/transform/conformance.py``, ``docs/conformance.md``); the counts of this
file are printed by ``test_pass_counts``.
"""

from __future__ import annotations

import csv
from collections import Counter
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
LFH = "linuxforhealth-hl7v2-fhir-converter"
MS = "microsoft-fhir-converter"

#: How the corpus channel fills a missing assigning authority (two LFH messages have no MSH-4).
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")
#: Messages the HL7 reader refuses: MSH-2 written as ``^~\\&`` (robustness tests upstream), and two IG
#: samples that declare ASCII in MSH-18 but hold a UTF-8 U+FFFD in IN1 (present in the source page).
UNREADABLE = {
    f"{LFH}/sample_unix.hl7",
    f"{LFH}/sample_win.hl7",
    "hl7-v2-to-fhir-ig/test_conversions_ORM_O01.hl7",
    "hl7-v2-to-fhir-ig/test_conversions_OML_O21.hl7",
}


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
        request = e["request"]
        if request["method"] == "POST":  # `write: create`: a conditional create on the same search
            assert request["url"] == r["resourceType"] and request["ifNoneExist"].startswith("identifier=")
            search = f"{r['resourceType']}?{request['ifNoneExist']}"
        else:
            assert request["method"] == "PUT"
            search = request["url"]
        assert search.startswith(f"{r['resourceType']}?identifier=")
        system, _, value = search.split("=", 1)[1].partition("|")
        assert system and value, "a conditional update keyed on an identifier without a system"
        assert any(i.get("system") for i in r["identifier"])
        assert "id" not in r
        assert _walk(r) == []
        assert all(ref in urls for ref in _references(r) if ref.startswith("urn:uuid:"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.key for s in SAMPLES])
def test_message_maps_or_is_refused_clearly(mappings: MappingSet, sample: Sample) -> None:
    got = _run(mappings, sample)
    if sample.key in UNREADABLE:
        assert isinstance(got, HL7Error)
    elif isinstance(got, TransformError):
        assert got.code and (got.field or got.rule), "a refusal names the field or the rule"
    else:
        assert isinstance(got, dict), f"refused: {got}"
        check_shape(got)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.key for s in SAMPLES])
def test_without_a_default_authority_identities_lacking_one_are_refused(mappings: MappingSet, sample: Sample) -> None:
    if sample.key in UNREADABLE:
        return
    with_default, without = _run(mappings, sample), _run(mappings, sample, None)
    if isinstance(without, TransformError) and not isinstance(with_default, TransformError):
        assert without.code == "101" and without.rule
        assert without.field and without.field.rsplit(".", 1)[-1] in ("2", "4", "9"), without.field
    elif isinstance(without, dict):
        check_shape(without)
        assert isinstance(with_default, dict)


def test_pass_counts(mappings: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()
    for s in SAMPLES:
        got = _run(mappings, s)
        outcomes["mapped" if isinstance(got, dict) else type(got).__name__] += 1
    with capsys.disabled():
        print(f"\ncorpus: {len(SAMPLES)} messages, {dict(outcomes)}")
    assert sum(outcomes.values()) == len(SAMPLES)
    assert outcomes["HL7Error"] + outcomes["EncodingError"] == len(UNREADABLE)
