"""Every mapping's sibling test cases (``mappings/**/*.tests.yaml``), one pytest case each."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.transform import MappingSet, load_mappings
from engine.transform.testing import MappingTestCase, collect_mapping_tests, run_case

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
CASES = collect_mapping_tests([MAPPINGS])


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


def test_every_message_map_has_sibling_tests() -> None:
    maps = sorted(p.stem for p in (MAPPINGS / "hl7v2" / "messages").glob("*.yaml") if ".tests" not in p.name)
    tested = {Path(c.file).name.removesuffix(".tests.yaml") for c in CASES}
    assert maps, "no message maps found"
    assert [m for m in maps if m not in tested] == []


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.file).name}:{c.line}" for c in CASES])
def test_mapping_case(mappings: MappingSet, case: MappingTestCase) -> None:
    result = run_case(mappings, case)
    assert result.passed, f"{case.file}:{case.line} {case.name}\n  " + "\n  ".join(result.failures)
