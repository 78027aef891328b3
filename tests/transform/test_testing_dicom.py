"""The sibling-test runner knows input kinds: DICOM cases name instances (a file, a folder, a list), run
through the worker's own DICOM path, and fail precisely (wrong facts, the wrong error, an unreadable path)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.transform import MappingSet, load_mappings
from engine.transform.mappingset import OTHER_KINDS
from engine.transform.testing import DicomCaseSpec, MappingTestResult, collect_mapping_tests, run_case

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SAMPLES = MAPPINGS / "dicom" / "samples"


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    """The DICOM maps alone under an empty HL7 set (compiling every HL7 map takes seconds)."""
    empty = MappingSet({}, [MAPPINGS], "UTC")
    empty.kinds["dicom"] = load_mappings(MAPPINGS, kind="dicom", limits=OTHER_KINDS["dicom"])
    return empty


def run(ms: MappingSet, tmp_path: Path, cases: str) -> dict[str, MappingTestResult]:
    """Run the DICOM cases of one tests file written under a scratch mapping root."""
    path = tmp_path / "dicom" / "messages" / "zz.tests.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("tests:\n" + textwrap.indent(textwrap.dedent(cases), "  "))
    collected = collect_mapping_tests([tmp_path], ("dicom",))
    assert {c.kind for c in collected} == {"dicom"}
    return {c.name: run_case(ms, c) for c in collected}


def test_dicom_cases_are_collected_as_dicom() -> None:
    """(tests/test_mappings.py runs them.)"""
    dicom = collect_mapping_tests([MAPPINGS], ("dicom",))
    assert len(dicom) >= 20 and all(isinstance(c.case, DicomCaseSpec) and "/dicom/" in c.file for c in dicom)


def test_a_file_a_folder_and_a_list_are_one_study_each(ms: MappingSet, tmp_path: Path) -> None:
    results = run(
        ms,
        tmp_path,
        f"""\
        - name: folder
          message: {SAMPLES / "ct_chest"}
          expect: [{{path: ImagingStudy.numberOfInstances, equals: 4}}]
        - name: list
          message: [{SAMPLES / "ct_chest" / "s1-i1.dcm"}, {SAMPLES / "ct_chest" / "s2-i2.dcm"}]
          expect: [{{path: ImagingStudy.series.numberOfInstances, equals: [1, 1]}}]
        - name: file
          message: {SAMPLES / "mr_qualifiers.dcm"}
          count: {{Patient: 1, ImagingStudy: 1}}
        """,
    )
    assert {n: r.failures for n, r in results.items()} == {"folder": [], "list": [], "file": []}


def test_wrong_facts_and_wrong_errors_fail_with_the_place(ms: MappingSet, tmp_path: Path) -> None:
    results = run(
        ms,
        tmp_path,
        f"""\
        - name: wrong count and value
          message: {SAMPLES / "ct_chest"}
          count: {{ImagingStudy: 2}}
          expect: [{{path: ImagingStudy.numberOfSeries, equals: 3}}]
        - name: expected a refusal
          message: {SAMPLES / "ct_chest"}
          error: {{field: PatientID}}
        - name: refused, not expected
          message: {SAMPLES / "no_study_uid.dcm"}
        - name: refused elsewhere
          message: {SAMPLES / "no_study_uid.dcm"}
          error: {{field: "(0008,0018)", code: unreadable}}
        - name: a sender without a default
          message: {SAMPLES / "mr_no_issuer.dcm"}
          calling_ae: MODALITY
        - name: the sender's default
          message: {SAMPLES / "mr_no_issuer.dcm"}
          calling_ae: MODALITY
          identifiers: {{by_application: {{MODALITY: GENHOSP}}}}
        - name: missing
          message: nowhere/at-all.dcm
        """,
    )
    failures = {n: r.failures for n, r in results.items()}
    assert failures["wrong count and value"] == [
        "count ImagingStudy: expected 2, got 1",
        "ImagingStudy.numberOfSeries: expected 3, got [2]",
    ]
    assert failures["expected a refusal"] == ["expected the message to be rejected, but it was mapped"]
    assert failures["refused, not expected"] == ["rejected: StudyInstanceUID is missing"]
    assert failures["refused elsewhere"] == [
        "error field: expected (0008,0018), got (0020,000D) (StudyInstanceUID is missing)",
        "error code: expected unreadable, got invalid (StudyInstanceUID is missing)",
    ]
    assert failures["a sender without a default"][0].startswith("rejected: PatientID: assigning authority is empty")
    assert "LOCAL-77" not in failures["a sender without a default"][0]  # the place, never the value
    assert failures["the sender's default"] == []
    assert failures["missing"] == ["cannot read test instances nowhere/at-all.dcm (no such file or folder)"]
    assert not any(r.passed for n, r in results.items() if n != "the sender's default")
