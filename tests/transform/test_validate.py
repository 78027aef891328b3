"""fhir.resources R4B validation: failures name the resource type and element path, never the value."""

from __future__ import annotations

import pytest

from engine.errors import TransformError
from engine.transform.validate import validate_bundle


def bundle(resource: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6b6d5bcd-3b0c-5b6c-9d53-2f1c3c5a1a01",
                "resource": resource,
                "request": {"method": "PUT", "url": "Observation?identifier=x|1"},
            }
        ],
    }


def test_valid_bundle_passes() -> None:
    validate_bundle(bundle({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "valueQuantity": {"value": "4,41-SECRET"},
            },
            "Observation.valueQuantity.value",
        ),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "referenceRange": [{"low": {"value": "SECRET"}}],
            },
            "Observation.referenceRange[0].low.value",
        ),
        ({"resourceType": "Patient", "birthDate": "SECRET-13-45"}, "Patient.birthDate"),
        ({"resourceType": "Patient", "bogus": "SECRET"}, "Patient.bogus"),
    ],
)
def test_failures_name_type_and_path(resource: dict, where: str) -> None:
    with pytest.raises(TransformError) as exc:
        validate_bundle(bundle(resource))
    assert where in str(exc.value) and exc.value.code == "207"
    assert "SECRET" not in str(exc.value)


def test_unknown_resource_type_and_bad_bundle_shell() -> None:
    with pytest.raises(TransformError, match=r"entry\[0\]: unknown resource type"):
        validate_bundle(bundle({"resourceType": "Nonsense"}))
    broken = bundle({"resourceType": "Patient"})
    broken["entry"][0]["request"]["method"] = 7
    with pytest.raises(TransformError, match=r"Bundle\.entry\[0\]\.request\.method"):
        validate_bundle(broken)
