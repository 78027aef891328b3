"""Tests of engine.destinations, and the synthetic lab bundle they deliver."""

from __future__ import annotations

import uuid
from typing import Any

SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
LOINC = "http://loinc.org"
_NS = uuid.UUID("6f1d0c52-3b7e-4c36-9a51-0f7d9c1e2a10")


def full_url(resource_type: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{resource_type}|{value}')}"


def entry(resource: dict[str, Any], value: str) -> dict[str, Any]:
    """A conditional-update entry keyed on the resource's business identifier."""
    kind = resource["resourceType"]
    resource = {**resource, "identifier": [{"system": SYSTEM, "value": value}]}
    return {
        "fullUrl": full_url(kind, value),
        "resource": resource,
        "request": {"method": "PUT", "url": f"{kind}?identifier={SYSTEM}|{value}"},
    }


def lab_bundle(observations: int = 8, *, report_first: bool = False, key: str = "1") -> dict[str, Any]:
    """Patient, Encounter, ``observations`` Observations and a DiagnosticReport citing them (synthetic)."""
    patient = full_url("Patient", f"MRN-{key}")
    encounter = full_url("Encounter", f"VN-{key}")
    obs = [
        entry(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "valueQuantity": {"value": 90 + n, "unit": "mg/dL"},
            },
            f"OBS-{key}-{n}",
        )
        for n in range(observations)
    ]
    report = entry(
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "24323-8"}]},
            "subject": {"reference": patient},
            "encounter": {"reference": encounter},
            "result": [{"reference": o["fullUrl"]} for o in obs],
        },
        f"RPT-{key}",
    )
    first = [
        entry({"resourceType": "Patient", "name": [{"family": "Testperson", "given": ["Alex"]}]}, f"MRN-{key}"),
        entry(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": patient},
            },
            f"VN-{key}",
        ),
    ]
    entries = [report, *first, *obs] if report_first else [*first, *obs, report]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
