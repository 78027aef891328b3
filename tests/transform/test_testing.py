"""The sibling-test runner reports failures precisely (and never passes a case it could not run)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from engine.transform import load_mappings
from engine.transform.testing import run_mapping_tests, values_at

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
MSG = "\r".join(
    [
        "MSH|^~\\&|A|F|B|G|20240101||ADT^A01|1|P|2.5.1",
        "PID|1||M1^^^H^MR||DOE^JANE||19800101|F",
        "PV1|1|I|W||||||||||||||||V1^^^H^VN",
    ]
)


def case(name: str, message: str, extra: str = "") -> str:
    lines = "\n".join("      " + seg for seg in message.split("\r"))
    return f"  - name: {name}\n    message: |\n{lines}\n" + textwrap.indent(textwrap.dedent(extra), "    ")


def site_with(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    (root / "hl7v2" / "messages" / "ZZ_extra.tests.yaml").write_text(text)
    return root


def results_of(root: Path) -> dict[str, list[str]]:
    return {r.name: r.failures for r in run_mapping_tests(root) if "ZZ_extra" in r.file}


def test_failures_are_reported(tmp_path: Path) -> None:
    bad_date = MSG.replace("19800101", "19801301")
    root = site_with(
        tmp_path,
        "tests:\n"
        + case(
            "right",
            MSG,
            """\
            count: {Patient: 1, Encounter: 1}
            expect:
              - {path: Patient.birthDate, equals: "1980-01-01"}
              - {path: Encounter.subject.reference, refers_to: Patient}
            """,
        )
        + case(
            "wrong",
            MSG,
            """\
            count: {Patient: 2}
            expect:
              - {path: Patient.birthDate, equals: "1980-01-02"}
              - {path: Patient.gender, contains: male}
              - {path: Patient.deceasedBoolean, exists: true}
              - {path: Encounter.subject.reference, refers_to: Encounter}
              - {path: Patient.gender}
            """,
        )
        + case("expected an error", MSG, "error: {field: PID-7}\n")
        + case("unexpected error", bad_date)
        + case("wrong error", bad_date, 'error: {field: PID-8, code: "101"}\n')
        + "  - name: missing file\n    message: nowhere.hl7\n",
    )
    got = results_of(root)
    assert got["right"] == []
    assert got["wrong"][:4] == [
        "count Patient: expected 2, got 1",
        "Patient.birthDate: expected '1980-01-02', got ['1980-01-01']",
        "Patient.gender: expected to contain 'male', got ['female']",
        "Patient.deceasedBoolean: expected some value, got []",
    ]
    assert got["wrong"][4].startswith("Encounter.subject.reference: expected references to Encounter entries")
    assert got["wrong"][5] == "Patient.gender: a fact needs equals, contains, exists or refers_to"
    assert got["expected an error"] == ["expected the message to be rejected, but it was mapped"]
    assert got["unexpected error"][0].startswith("rejected: PID-7:")
    assert [f.split(":")[0] for f in got["wrong error"]] == ["error field", "error code"]
    assert "cannot read test message nowhere.hl7" in got["missing file"][0]


def test_broken_test_file_is_a_failed_result(tmp_path: Path) -> None:
    root = site_with(tmp_path, "tests:\n  - name: x\n    mesage: y\n")
    (result,) = [r for r in run_mapping_tests(load_mappings(root)) if "ZZ_extra" in r.file]
    assert not result.passed and "unknown field" in result.failures[0]


def test_values_at() -> None:
    b = {
        "entry": [
            {
                "fullUrl": "u1",
                "resource": {"resourceType": "Observation", "code": {"coding": [{"code": "a"}, {"code": "b"}]}},
            },
            {"fullUrl": "u2", "resource": {"resourceType": "Observation", "code": {"coding": [{"code": "c"}]}}},
        ]
    }
    assert values_at(b, "Observation.code.coding.code") == ["a", "b", "c"]
    assert values_at(b, "Observation[1].code.coding.code") == ["c"]
    assert values_at(b, "Observation.code.coding[1].code") == ["b"]
    assert values_at(b, "Bundle.entry.fullUrl") == ["u1", "u2"]
    assert values_at(b, "Patient.name") == []


def test_a_case_uses_its_own_default_authority_else_the_runners(tmp_path: Path) -> None:
    from engine.transform.authority import Identifiers

    bare = MSG.replace("M1^^^H^MR", "M1^^^^MR")
    fact = '  - {path: Patient.identifier.system, equals: "urn:interlink:id:%s"}\n'
    own = "identifiers: {authority: OWN}\nexpect:\n" + fact % "OWN"
    given = "expect:\n" + fact % "GIVEN"
    root = site_with(tmp_path, "tests:\n" + case("own", bare, own) + case("given", bare, given))
    runner = Identifiers(authority="GIVEN")
    got = {r.name: r.failures for r in run_mapping_tests(root, identifiers=runner) if "ZZ_extra" in r.file}
    assert got == {"own": [], "given": []}
    without = results_of(root)
    assert without["own"] == [] and without["given"][0].startswith("rejected: PID-3.4: assigning authority is empty")
