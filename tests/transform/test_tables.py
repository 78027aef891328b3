"""Code-system maps: codes, Codings and CodeableConcepts; unmapped codes by policy."""

from __future__ import annotations

import pytest

from engine.transform.tables import Table, TableFile, Unmapped, v2_system


def table(unmapped: str) -> Table:
    return Table(
        "0078-test",
        TableFile.model_validate(
            {
                "description": "test",
                "source": "HL70078",
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "unmapped": unmapped,
                "map": {"H": {"code": "H", "display": "High"}, "N": "N"},
            }
        ),
    )


def test_lookups_adapt_to_the_element() -> None:
    t = table("error")
    assert t.code("H") == "H"
    assert t.coding("H") == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "H",
        "display": "High",
    }
    assert t.concept("N") == {"coding": [{"system": t.system, "code": "N"}]}
    assert t.code("h") == "H"  # case-insensitive fallback


def test_results_are_fresh_objects() -> None:
    t = table("error")
    t.coding("H")["code"] = "changed"
    assert t.coding("H")["code"] == "H"


def test_unmapped_policy() -> None:
    with pytest.raises(Unmapped) as exc:
        table("error").code("ZZ")
    assert "ZZ" not in str(exc.value) and "0078-test" in str(exc.value)
    assert table("drop").coding("ZZ") is None
    assert table("keep").coding("ZZ") == {"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "ZZ"}
    assert table("keep").code("ZZ") == "ZZ"


def test_v2_system() -> None:
    assert v2_system("HL70001") == "http://terminology.hl7.org/CodeSystem/v2-0001"
    assert v2_system("LN") is None
