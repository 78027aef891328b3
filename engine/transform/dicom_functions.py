"""Named functions for DICOM values, added to the closed registry (``engine.transform.functions.REGISTRY``)
when the DICOM maps are compiled. Like every registered function they convert one value, raise
:class:`~engine.transform.dates.Invalid` (never naming the value) for one they cannot, and declare their
FHIR result type.

``oid_urn``            UI → ``urn:oid:<uid>`` (ImagingStudy identifier value, SOP class code)
``dicom_datetime``     DA with ``time`` (TM) and ``offset`` (TimezoneOffsetFromUTC) → dateTime
``pn_display``         PN → display text (prefix given middle family suffix)
``dicom_coding_system`` coding scheme designator (0008,0102) → code system URI (PS3.16 8.1)
"""

from __future__ import annotations

import re
from typing import Any

from engine.transform import dates
from engine.transform.dates import Invalid
from engine.transform.functions import REGISTRY, Function, Param

__all__ = ["FUNCTIONS"]

_UID = re.compile(r"^[0-2](?:\.(?:0|[1-9][0-9]*))+$")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^[+-]\d{4}$")

#: PS3.16 Table 8-1 (the designators seen in practice); others are written as urn:dicom:csd:<designator>
_SCHEMES = {
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "SCT": "http://snomed.info/sct",
    "SRT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://radlex.org",
    "RADLEX_PLAYBOOK": "http://www.radlex.org",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "C4": "http://www.ama-assn.org/go/cpt",
    "C5": "http://www.ama-assn.org/go/cpt",
}


def _oid_urn(run: Any, value: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise Invalid("not a DICOM UID")
    return f"urn:oid:{value}"


def _dicom_datetime(run: Any, value: str, time: str | None = None, offset: str | None = None) -> str:
    if len(value) != 8 or not value.isdecimal():
        raise Invalid("not a DICOM date (DA)")
    ts = value
    if time:
        m = _TIME.match(time.strip())
        if not m:
            raise Invalid("not a DICOM time (TM)")
        h, mi, s, frac = m.groups()
        ts += h + (mi or "00") + (s or "")
        if s and frac:
            ts += "." + frac[:4]
        if offset and _OFFSET.match(offset.strip()):
            ts += offset.strip()
    return dates.parse_ts(ts, run.tz)


def _pn_display(run: Any, parts: list[str]) -> str | None:
    # PN: 1 family, 2 given, 3 middle, 4 prefix, 5 suffix.
    def part(i: int) -> str:
        return parts[i - 1].strip() if i <= len(parts) else ""

    names = [part(i) for i in (4, 2, 3, 1, 5)]
    return " ".join(n for n in names if n) or None


def _dicom_coding_system(run: Any, value: str) -> str | None:
    designator = value.strip().upper()
    if not designator:
        return None
    if designator in _SCHEMES:
        return _SCHEMES[designator]
    if not re.match(r"^[A-Z0-9_.-]+$", designator):
        raise Invalid("not a coding scheme designator")
    return f"urn:dicom:csd:{designator.lower()}"


FUNCTIONS = (
    Function("oid_urn", _oid_urn, "primitive", "code", "UI → urn:oid:<uid>.", memo=True),
    Function(
        "dicom_datetime",
        _dicom_datetime,
        "primitive",
        "dateTime",
        "DA (+ time: TM, offset: TimezoneOffsetFromUTC) → FHIR dateTime, precision kept.",
        {"time": Param("path"), "offset": Param("path")},
    ),
    Function("pn_display", _pn_display, "parts", "string", "PN → display name (prefix given middle family suffix)."),
    Function(
        "dicom_coding_system",
        _dicom_coding_system,
        "primitive",
        "uri",
        "Coding scheme designator (0008,0102) → code system URI (PS3.16 Table 8-1; others urn:dicom:csd:).",
    ),
)

for _f in FUNCTIONS:
    REGISTRY.setdefault(_f.name, _f)
