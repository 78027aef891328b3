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


def test_vocabulary_is_validated_once_and_errors_still_name_their_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.transform import validate

    monkeypatch.setattr(validate, "conforms", lambda r: False)  # the models' path (what fhirshape leaves)
    validate._cache.clear()
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "interpretation": [{"coding": [{"code": "H"}]}],
    }
    validate_bundle(bundle(obs))
    assert {t for t, _k in validate._cache} == {"CodeableConcept"} and len(validate._cache) == 2
    validate_bundle(bundle(obs))  # from the cache
    assert len(validate._cache) == 2
    bad_code = {**obs, "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "userSelected": "maybe"}]}}
    with pytest.raises(TransformError, match=r"Observation\.code\.coding\[0\]\.userSelected"):
        validate_bundle(bundle(bad_code))
    bad_status = {**obs, "status": " SECRET"}  # a code may not start with white space
    with pytest.raises(TransformError, match=r"Observation\.status") as exc:
        validate_bundle(bundle(bad_status))  # vocabulary cached, the rest still validated
    assert "SECRET" not in str(exc.value)


def test_patient_data_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.transform import validate

    monkeypatch.setattr(validate, "conforms", lambda r: False)  # the models' path (what fhirshape leaves)
    validate._cache.clear()
    validate_bundle(
        bundle(
            {
                "resourceType": "Patient",
                "name": [{"family": "DOE", "given": ["JANE"]}],
                "identifier": [{"system": "urn:x", "value": "MRN1"}],
                "address": [{"city": "SPRINGFIELD"}],
                "maritalStatus": {"coding": [{"code": "M"}]},
            }
        )
    )
    assert all(t in validate.VOCABULARY for t, _k in validate._cache)
    assert not any(b"DOE" in k or b"MRN1" in k or b"SPRINGFIELD" in k for _t, k in validate._cache)
