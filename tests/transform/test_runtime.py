"""Segment groups, scopes and references at run time (ORU structure, notes, several patients, errors)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from engine import hl7v2
from engine.errors import TransformError
from engine.transform import MappingSet, load_mappings

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
MSH = "MSH|^~\\&|LAB|F|EHR|G|20240101120000||ORU^R01|1|P|2.5.1"


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def obr(n: int, filler: str, status: str = "F") -> str:
    fields = ["OBR", str(n), "", f"{filler}^LAB", "2345-7^Glucose^LN", "", "", "202401011030"] + [""] * 18
    fields[25] = status
    return "|".join(fields)


def run(ms: MappingSet, *segments: str) -> dict:
    return ms.transform(hl7v2.Message.parse("\r".join([MSH, *segments])), validation="full")


def of(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def url_of(bundle: dict, resource: dict) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource)


def test_notes_belong_to_their_segment(ms: MappingSet) -> None:
    b = run(
        ms,
        "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M",
        "NTE|1||patient note",
        obr(1, "F1"),
        "NTE|1||report note",
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F",
        "NTE|1||first~second line",
        "NTE|2||third",
        "OBX|2|NM|2339-0^Glucose^LN||5.5|mmol/L|||||F",
    )
    o1, o2 = of(b, "Observation")
    assert [n["text"] for n in o1["note"]] == ["first\nsecond line", "third"]
    assert "note" not in o2


def test_several_patients_each_with_their_reports(ms: MappingSet) -> None:
    b = run(
        ms,
        "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M",
        obr(1, "F1"),
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F",
        "PID|2||P2^^^H^MR||ROE^JANE||19800101|F",
        obr(1, "F2"),
        "OBX|1|NM|2345-7^Glucose^LN||6.1|mmol/L|||||F",
    )
    p1, p2 = of(b, "Patient")
    r1, r2 = of(b, "DiagnosticReport")
    o1, o2 = of(b, "Observation")
    assert r1["subject"]["reference"] == url_of(b, p1) == o1["subject"]["reference"]
    assert r2["subject"]["reference"] == url_of(b, p2) == o2["subject"]["reference"]
    assert r1["result"] == [{"reference": url_of(b, o1)}]
    assert r2["result"] == [{"reference": url_of(b, o2)}]


def test_one_pv1_per_patient(ms: MappingSet) -> None:
    with pytest.raises(TransformError) as exc:
        run(
            ms,
            "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M",
            "PV1|1|I|W||||||||||||||||V1^^^H^VN",
            "PV1|2|I|W||||||||||||||||V2^^^H^VN",
            obr(1, "F1"),
        )
    assert (exc.value.field, exc.value.code) == ("PV1", "100")


def test_two_reports_with_one_identity_are_refused(ms: MappingSet) -> None:
    with pytest.raises(TransformError) as exc:
        run(ms, "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M", obr(1, "F1"), obr(2, "F1", status="P"))
    assert (exc.value.field, exc.value.code) == ("OBR-3", "205")


def test_one_report_sent_twice_identically_is_one_entry(ms: MappingSet) -> None:
    b = run(ms, "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M", obr(1, "F1"), obr(1, "F1"))
    kinds = [e["resource"]["resourceType"] for e in b["entry"]]
    assert kinds.count("DiagnosticReport") == 1 and len(kinds) == len({e["fullUrl"] for e in b["entry"]})


def test_placer_number_identifies_a_report_without_filler(ms: MappingSet) -> None:
    line = obr(1, "X").replace("|X^LAB|", "||").replace("OBR|1||", "OBR|1|PL9^EHR|")
    b = run(ms, "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M", line)
    assert b["entry"][1]["request"]["url"] == "DiagnosticReport?identifier=urn:interlink:id:EHR|PL9"


def test_encounter_is_optional_in_oru(ms: MappingSet) -> None:
    b = run(ms, "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M", "PV1|1|O|LAB", obr(1, "F1"))
    assert of(b, "Encounter") == [] and "encounter" not in of(b, "DiagnosticReport")[0]


def write(root: Path, rel: str, text: str) -> None:
    p = root / "hl7v2" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))


@pytest.fixture
def custom(tmp_path: Path) -> MappingSet:
    """A message map using `before`, `omit`, entry `reject` and entry identity, over the shipped maps."""
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    write(
        root,
        "messages/ORU_R30.yaml",
        """\
        description: Test map exercising entry options.
        accepts: [ORU^R30]
        resources:
          patient:
            segment: PID
            use: PID-Patient
            omit: [telecom, address]
            reject:
              - when: {equals: {PID-8: X}}
                field: PID-8
                message: sex X is not accepted here
          early:
            each: OBX
            before: [OBR]
            use: OBX-Observation
            identity:
              - {from: OBX-21, use: EI-Identifier}
              - {from: OBX-3, use: EI-Identifier}
            rules:
              subject: {ref: patient}
        """,
    )
    return load_mappings(root)


def msg(*segments: str) -> hl7v2.Message:
    return hl7v2.Message.parse("\r".join(["MSH|^~\\&|L|F|E|G|20240101||ORU^R30|1|P|2.5.1", *segments]))


def test_entry_options(custom: MappingSet) -> None:
    b = custom.transform(
        msg(
            "PID|1||P1^^^H^MR||DOE^JOHN||19700101|M|||1 MAIN ST^^TOWN||555-1234",
            "OBX|1|NM|8867-4^Heart rate^LN||72|/min|||||F",
            obr(1, "F1"),
            "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F",
        ),
        validation="full",
    )
    (p,) = of(b, "Patient")
    (o,) = of(b, "Observation")  # only the OBX before the OBR
    assert "telecom" not in p and "address" not in p
    assert o["code"]["coding"][0]["code"] == "8867-4" and o["subject"]["reference"] == url_of(b, p)
    # EI.2 of a CWE is its text: the identity system is built from it (and %-encoded once more in the URL)
    assert b["entry"][1]["request"]["url"] == "Observation?identifier=urn:interlink:id:Heart%2520rate|8867-4"
    with pytest.raises(TransformError) as exc:
        custom.transform(msg("PID|1||P1^^^H^MR||DOE^JOHN||19700101|X"))
    assert (exc.value.field, exc.value.code, exc.value.message) == ("PID-8", "102", "sex X is not accepted here")
