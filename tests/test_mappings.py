"""Every mapping's sibling test cases (``mappings/**/*.tests.yaml``, every input kind), one pytest case each."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.transform import MappingSet, load_mappings
from engine.transform.testing import ALL_KINDS, MappingTestCase, collect_mapping_tests, run_case

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
CASES = collect_mapping_tests([MAPPINGS], ALL_KINDS)


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


def _maps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(MAPPINGS)) for p in folder.glob("*.yaml") if ".tests" not in p.name)


def _untested(maps: list[str]) -> list[str]:
    tested = {str(Path(c.file).relative_to(MAPPINGS)).removesuffix(".tests.yaml") for c in CASES}
    return [m for m in maps if m.removesuffix(".yaml") not in tested]


def test_every_message_map_has_sibling_tests() -> None:
    maps = _maps(MAPPINGS / "hl7v2" / "messages")
    assert maps, "no message maps found"
    assert _untested(maps) == []


def test_every_dicom_map_has_sibling_tests() -> None:
    """The DICOM maps are few and each one small: every message, segment and datatype map is tested."""
    maps = [m for tier in ("messages", "segments", "datatypes") for m in _maps(MAPPINGS / "dicom" / tier)]
    assert len(maps) >= 12, maps
    assert _untested(maps) == []
    assert {c.kind for c in CASES if "/dicom/" in c.file} == {"dicom"}


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.file).name}:{c.line}" for c in CASES])
def test_mapping_case(mappings: MappingSet, case: MappingTestCase) -> None:
    result = run_case(mappings, case)
    assert result.passed, f"{case.file}:{case.line} {case.name}\n  " + "\n  ".join(result.failures)
