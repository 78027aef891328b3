"""The reason read from an OperationOutcome: codes, severities and model-confirmed element paths only."""

from __future__ import annotations

import orjson
import pytest

from engine.destinations.outcome import element_path, issues_reason, outcome_reason

SECRET = "ZQXSECRET4711"  # stands for anything a sender put in a message


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("Patient.birthDate", "Patient.birthDate"),
        ("Patient.name[0].given[1]", "Patient.name[0].given[1]"),
        ("Observation.valueQuantity.unit", "Observation.valueQuantity.unit"),
        ("Observation.value[x]", "Observation.value[x]"),
        ("Observation.value.ofType(Quantity).value", "Observation.value.ofType(Quantity).value"),
        ("Bundle.entry[3].resource.ofType(Patient).name[0]", "Bundle.entry[3].resource.ofType(Patient).name[0]"),
        ("Patient.birthDate.extension[0].url", "Patient.birthDate.extension[0].url"),
        ("Patient.name.where(given.exists()).family", "Patient.name.where(…).family"),
        ("Patient.name.first()", "Patient.name.first()"),
    ],
)
def test_element_paths_the_model_confirms_are_kept(path: str, shown: str) -> None:
    assert element_path(path) == shown


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        # FHIRPath literals and function arguments, quoted or not, however they nest
        (f"Patient.identifier.where(value='{SECRET}')", "Patient.identifier.where(…)"),
        (f"Patient.name.where(family={SECRET}).given", "Patient.name.where(…).given"),
        (f'Patient.name.where(family="{SECRET}")', "Patient.name.where(…)"),
        (f"Patient.where(x='a)b{SECRET}').name", "Patient.where(…).name"),
        (f"Patient.name.where(family='{SECRET})", "Patient.name…"),  # never closed
        (f"Patient.name.where(family=\\'{SECRET}\\')", "Patient.name…"),  # quote left open
        (f"Patient.extension('http://x.org/{SECRET}').value", "Patient.extension(…).value"),
        (f"Patient.ofType({SECRET})", "Patient.ofType(…)"),
        (f"Patient.birthDate.where($this = @1961-02-03).{SECRET}", "Patient.birthDate.where(…)…"),
        # search values, comparisons, separators, trailing text
        (f"Patient?identifier=urn:oid:1.2.3|{SECRET}", "Patient…"),
        (f"Patient.identifier[0].value = {SECRET}", "Patient.identifier[0].value…"),
        (f"Patient.identifier[0].value={SECRET}", "Patient.identifier[0].value…"),
        (f'Patient.name[0].family "{SECRET}"', "Patient.name[0].family…"),
        (f"Patient.telecom[0].value:{SECRET}", "Patient.telecom[0].value…"),
        (f"Patient.telecom[0].value|{SECRET}", "Patient.telecom[0].value…"),
        (f"Patient/{SECRET}/_history/1", "Patient…"),
        (f"Patient.name[0]\n{SECRET}", "Patient.name[0]…"),
        (f"Patient.name[0]\t{SECRET}", "Patient.name[0]…"),
        (f"Patient.name[{SECRET}]", "Patient.name…"),
        (f"Patient.name[-1].{SECRET}", "Patient.name…"),
        # a value shaped like a name is not an element of the model
        (SECRET, "…"),
        ("Smith", "…"),
        (f"Patient.{SECRET.lower()}", "Patient…"),
        (f"Patient.name.{SECRET}(1)", "Patient.name…"),
        (f"Observation.value.{SECRET.lower()}", "Observation.value…"),  # under a choice: type unknown
        (f"Bundle.entry[0].resource.{SECRET.lower()}", "Bundle.entry[0].resource…"),
        # not FHIRPath at all
        (f"/f:Patient/f:name[0]/f:family/@value='{SECRET}'", "…"),
        (f"Line[1] Col[{SECRET}]", "…"),
        (f" Patient.name {SECRET}", "…"),
        (f"name[0].family {SECRET}", "…"),
        ("", "…"),
        ("Patient." + "a" * 500, "Patient…"),
    ],
)
def test_anything_else_is_cut_or_masked(path: str, shown: str) -> None:
    assert element_path(path) == shown
    assert SECRET not in shown and SECRET.lower() not in shown


@pytest.mark.parametrize("value", [None, 17, 1.5, ["Patient.name"], {"path": "Patient.name"}, True])
def test_a_path_that_is_not_a_string_is_masked(value: object) -> None:
    assert element_path(value) == "…"


def test_only_known_severities_and_codes_are_named() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "business-rule", "expression": ["Patient.gender"]},
            {"severity": SECRET, "code": SECRET.lower(), "location": ["Patient.name"]},
            {"severity": "warning", "code": ["invalid"], "expression": "Patient.name"},
        ],
    }
    assert issues_reason(outcome) == (
        "OperationOutcome error business-rule at Patient.gender; ? ? at Patient.name; warning ?"
    )


def test_free_text_is_never_read() -> None:
    issue = {
        "severity": "error",
        "code": "invalid",
        "diagnostics": f"Patient {SECRET} born 1961-02-03",
        "details": {"text": SECRET, "coding": [{"system": "urn:x", "code": SECRET, "display": SECRET}]},
        "extension": [{"url": "urn:x", "valueString": SECRET}],
    }
    body = orjson.dumps({"resourceType": "OperationOutcome", "text": {"div": SECRET}, "issue": [issue]})
    assert outcome_reason(body) == "OperationOutcome error invalid"


def test_at_most_three_issues_and_three_distinct_paths_each() -> None:
    paths = ["Patient.name", "Patient.name", f"Patient?name={SECRET}", "Patient.gender"]
    issue = {"severity": "error", "code": "value", "expression": paths}
    reason = issues_reason({"issue": [issue] * 5})
    assert reason == "OperationOutcome " + "; ".join(["error value at Patient.name, Patient…"] * 3)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>", b"[]", b'{"resourceType": "Patient"}', b'{"resourceType": "OperationOutcome", "issue": 3}'],
)
def test_other_bodies(body: bytes) -> None:
    reason = outcome_reason(body)
    assert reason is None or reason == "OperationOutcome"
