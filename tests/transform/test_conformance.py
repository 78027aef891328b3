"""``interlink corpus``: our bundles compared with a peer's expected bundles on key facts.

The comparison itself (instants, subsets, pairing by code, a refused message, listed departures) on small
hand-made bundles; the command end to end on a corpus folder made in tmp_path (values only in the report
file, never in the printed summary); and the real corpus, every message accounted for.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import hl7v2
from engine.cli import app
from engine.transform import MappingSet, load_mappings
from engine.transform.conformance import CHANNEL, Departure, compare, compare_corpus, read_departures

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
SAMPLE = MAPPINGS / "hl7v2" / "samples" / "oru_r01_cbc.hl7"
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2"


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}


def facts(ours: dict | None, theirs: dict) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {}
    for name, _x, _y, ok in compare(ours, theirs):
        out.setdefault(name, []).append(ok)
    return out


def test_date_times_compare_as_instants_dates_as_written() -> None:
    ours = bundle({"resourceType": "Encounter", "period": {"start": "1989-08-18T11:26:00+02:15"}})
    theirs = bundle({"resourceType": "Encounter", "period": {"start": "1989-08-18T14:41:00+05:30"}})
    assert facts(ours, theirs)["Encounter.period.start"] == [True]
    other = bundle({"resourceType": "Encounter", "period": {"start": "1989-08-18T14:41:00+02:15"}})
    assert facts(ours, other)["Encounter.period.start"] == [False]
    p = bundle({"resourceType": "Patient", "birthDate": "1962-03-20"})
    assert facts(p, bundle({"resourceType": "Patient", "birthDate": "1962-03"}))["Patient.birthDate"] == [False]


def test_identifiers_and_names_ours_a_subset_of_theirs() -> None:
    theirs = bundle(
        {
            "resourceType": "Patient",
            "identifier": [{"value": "A"}, {"value": "B"}],
            "name": [{"family": "DOE", "given": ["JO"]}, {"family": "ROE"}],
        }
    )
    ours = bundle(
        {"resourceType": "Patient", "identifier": [{"value": "A"}], "name": [{"family": "DOE", "given": ["JO"]}]}
    )
    got = facts(ours, theirs)
    assert got["Patient.identifier"] == [True] and got["Patient.name"] == [True]
    ours["entry"][0]["resource"]["identifier"].append({"value": "C"})
    assert facts(ours, theirs)["Patient.identifier"] == [False]


def test_resources_pair_by_code_and_a_missing_one_disagrees_on_each_fact() -> None:
    def obs(code: str, value: float) -> dict:
        return {
            "resourceType": "Observation",
            "code": {"coding": [{"code": code}]},
            "status": "final",
            "valueQuantity": {"value": value, "unit": "g/dL"},
        }

    ours = bundle(obs("B", 2), obs("A", 1))
    theirs = bundle(obs("A", 1), obs("B", 2.0), obs("C", 3))
    got = facts(ours, theirs)
    assert got["count.Observation"] == [False]
    assert got["Observation.value"] == [True, True, False]  # B and A paired by code; C is ours to miss
    assert got["Observation.code"] == [True, True, False]


def test_reference_range_as_text_reads_like_bounds() -> None:
    ours = bundle(
        {
            "resourceType": "Observation",
            "code": {"text": "x"},
            "referenceRange": [{"low": {"value": 4.3}, "high": {"value": 6.2}}],
        }
    )
    theirs = bundle({"resourceType": "Observation", "code": {"text": "x"}, "referenceRange": [{"text": "4.3 to 6.2"}]})
    assert facts(ours, theirs)["Observation.referenceRange"] == [True]


def test_a_refused_message_disagrees_on_every_fact_of_theirs() -> None:
    theirs = bundle({"resourceType": "Patient", "gender": "female", "birthDate": "1962-03-20"})
    assert facts(None, theirs) == {"count.Patient": [False], "Patient.birthDate": [False], "Patient.gender": [False]}


def test_the_departures_table_of_the_docs_is_read() -> None:
    deps = read_departures(ROOT / "docs" / "conformance.md")
    assert Departure("*ADT-A04-01.hl7", "Encounter.period.end", deps[0].rule) in deps
    assert all(d.rule for d in deps)


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


def _corpus(tmp_path: Path, mappings: MappingSet) -> Path:
    """A one-message corpus whose expected bundle differs from ours in the birth date and one value."""
    folder = tmp_path / "corpus"
    folder.mkdir(parents=True)
    (folder / "cbc.hl7").write_bytes(SAMPLE.read_bytes())
    ours = mappings.transform(hl7v2.Message.parse(SAMPLE.read_text()), validation="off", identifiers=CHANNEL)
    theirs = copy.deepcopy(ours)
    for e in theirs["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Patient":
            r["birthDate"] = "1950-01-01"
    obs = [e["resource"] for e in theirs["entry"] if e["resource"]["resourceType"] == "Observation"]
    obs[0]["valueQuantity"]["value"] = 99.5
    (folder / "cbc.expected.json").write_text(json.dumps(theirs))
    return folder


def test_compare_corpus_counts_each_disagreement(tmp_path: Path, mappings: MappingSet) -> None:
    report = compare_corpus(_corpus(tmp_path, mappings), mappings)
    wrong = sorted(f.fact for f in report.facts if not f.agree)
    assert wrong == ["Observation.value", "Patient.birthDate"]
    assert report.overall() == pytest.approx(1 - 2 / len(report.facts))
    listed = [Departure("*cbc.hl7", "Patient.birthDate", "a rule")]
    again = compare_corpus(_corpus(tmp_path / "b", mappings), mappings, departures=listed)
    assert again.overall() == pytest.approx(1 - 1 / (len(again.facts) - 1))


def test_a_departure_may_name_the_resources_it_explains_by_their_pairing_key(
    tmp_path: Path, mappings: MappingSet
) -> None:
    folder = _corpus(tmp_path, mappings)
    theirs = json.loads((folder / "cbc.expected.json").read_text())
    code = next(e["resource"] for e in theirs["entry"] if e["resource"]["resourceType"] == "Observation")["code"]
    key = code["coding"][0]["code"]
    other = [Departure("*cbc.hl7", "Observation(not-this-code).*", "a rule")]
    assert not any(f.departure for f in compare_corpus(folder, mappings, departures=other).facts)
    named = [Departure("*cbc.hl7", f"Observation({key}).*", "a rule")]
    explained = [f.fact for f in compare_corpus(folder, mappings, departures=named).facts if f.departure]
    assert explained == ["Observation.value"]
    # A resource only the peer makes: its facts and the count are explained by a row naming it.
    theirs["entry"].append({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "extra"}}})
    (folder / "cbc.expected.json").write_text(json.dumps(theirs))
    extra = [Departure("*cbc.hl7", "Observation(extra).*", "a rule")]
    report = compare_corpus(folder, mappings, departures=extra)
    assert sorted(f.fact for f in report.facts if f.departure) == [
        "Observation.code",
        "Observation.status",
        "count.Observation",
    ]
    assert [f.fact for f in report.facts if not f.agree and not f.departure] == [
        "Patient.birthDate",
        "Observation.value",
    ]


def test_command_prints_counts_only_and_writes_values_to_the_report(tmp_path: Path, mappings: MappingSet) -> None:
    folder = _corpus(tmp_path, mappings)
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(f"mappings_dir: {MAPPINGS}\nchannels_dir: {ROOT / 'channels'}\n")
    out = tmp_path / "report.md"
    result = CliRunner().invoke(app, ["corpus", str(folder), "--report", str(out), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "ORU^R01" in result.stdout and "agreement" in result.stdout
    for value in ("1950-01-01", "1962-03-20", "EVERYWOMAN", "99.5"):
        assert value not in result.stdout
    text = out.read_text()
    assert "Patient.birthDate" in text and "1950-01-01" in text and "99.5" in text
    strict = CliRunner().invoke(
        app, ["corpus", str(folder), "--report", str(out), "--config", str(cfg), "--min-agreement", "100"]
    )
    assert strict.exit_code == 1


@pytest.mark.skipif(not (CORPUS / "manifest.csv").is_file(), reason="HL7 v2 corpus not present")
def test_real_corpus_every_message_accounted_for(
    mappings: MappingSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = compare_corpus(CORPUS, mappings, departures=read_departures(ROOT / "docs" / "conformance.md"))
    with (CORPUS / "manifest.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(report.outcomes) == len(rows)
    assert sum(o.compared for o in report.outcomes) == sum(1 for r in rows if r["expected"].endswith(".json"))
    assert {o.status for o in report.outcomes} <= {"mapped", "refused", "unreadable", "no-map"}
    report.write(tmp_path / "report.md")
    with capsys.disabled():
        print("\n" + report.summary())


def test_message_type_is_read_behind_a_byte_order_mark(tmp_path: Path, mappings: MappingSet) -> None:
    """27 corpus files start with a UTF-8 BOM: their type was reported as "?" before."""
    folder = tmp_path / "bom"
    folder.mkdir()
    (folder / "cbc.hl7").write_bytes(b"\xef\xbb\xbf" + SAMPLE.read_bytes())
    report = compare_corpus(folder, mappings)
    assert [o.message_type for o in report.outcomes] == ["ORU^R01"]


def test_our_names_and_addresses_may_hold_fewer_parts_than_theirs() -> None:
    ours = bundle(
        {
            "resourceType": "Patient",
            "name": [{"family": "DOE", "given": ["ADAM", "A"]}],
            "address": [{"line": ["1000", "Ste. 123"], "city": "Ann Arbor", "postalCode": "99999"}],
        }
    )
    theirs = bundle(
        {
            "resourceType": "Patient",
            "name": [{"family": "DOE", "given": ["ADAM", "A", "Addsm"]}],
            "address": [{"line": ["1000", "Hospital Lane", "Ste. 123"], "city": "Ann Arbor ", "postalCode": "99999"}],
        }
    )
    got = facts(ours, theirs)
    assert got["Patient.name"] == [True] and got["Patient.address"] == [True]
    other = bundle(
        {"resourceType": "Patient", "address": [{"line": ["1000"], "city": "Detroit", "postalCode": "99999"}]}
    )
    assert facts(other, theirs)["Patient.address"] == [False]
