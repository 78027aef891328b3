"""What a message is searched by: its patients' identifiers and its orders' numbers, read where it is mapped.

A message's search keys are ``(kind, value)`` pairs, kind ``mrn`` (a patient identifier) or ``accession``
(an accession, filler or placer order number). They are taken from what the mapping process has in memory
anyway, so the engine never parses a message a second time for them:

- from the mapped FHIR bundle, whatever the input kind (HL7 v2, DICOM, JSON, FHIR): every
  ``Patient.identifier`` value, and every identifier of an order or report (ServiceRequest,
  DiagnosticReport, ImagingStudy, MedicationRequest, Immunization) typed ``ACSN``, ``FILL`` or ``PLAC``
  (v2 table 0203) — so a DICOM study's Accession Number and an ORU's OBR-3 are the same kind;
- from the parsed HL7 v2 message when its mapping failed (no bundle): PID-3, ORC-2/3 and OBR-2/3, first
  component, unescaped — the same values the maps would have written.

Only processed messages have keys: one refused on receipt (unreadable, over a cap, a refused MSH) or kept as
a ``duplicate`` is never mapped (the ingest path parses nothing for search), and is found by its control id,
time or sender instead. A message reprocessed with another mapping keeps its earlier keys beside the new.

Values are plain here (patient data): they travel only from the mapping process to the engine over its pipe,
and the store keeps a keyed hash of each (``Store.pseudonym``), never the value. Surrounding blanks are
dropped; nothing else is normalised, so a search gives the value as the sender wrote it.
"""

from __future__ import annotations

from typing import Any

from engine import hl7v2

Key = tuple[str, str]

_ORDER_TYPES = frozenset({"ServiceRequest", "DiagnosticReport", "ImagingStudy", "MedicationRequest", "Immunization"})
_ORDER_NUMBERS = frozenset({"ACSN", "FILL", "PLAC"})
# engine.store.schema.KeyKind's values (not imported: mapping processes do not load the store's modules)
_MRN, _ACCESSION = "mrn", "accession"
#: a message with more keys than this (a batch-like ORU with thousands of orders) keeps the first ones
MAX_KEYS = 200


def _typed_as_order_number(identifier: dict[str, Any]) -> bool:
    codings = (identifier.get("type") or {}).get("coding") or ()
    return any(isinstance(c, dict) and c.get("code") in _ORDER_NUMBERS for c in codings)


def _add(out: dict[Key, None], kind: str, value: object) -> None:
    if isinstance(value, str) and len(out) < MAX_KEYS:
        value = value.strip()
        if value:
            out[(kind, value)] = None


def from_bundle(bundle: dict[str, Any]) -> tuple[Key, ...]:
    """The search keys of a mapped bundle (in order, without repeats)."""
    out: dict[Key, None] = {}
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            for ident in resource.get("identifier") or ():
                if isinstance(ident, dict):
                    _add(out, _MRN, ident.get("value"))
        elif rtype in _ORDER_TYPES:
            for ident in resource.get("identifier") or ():
                if isinstance(ident, dict) and _typed_as_order_number(ident):
                    _add(out, _ACCESSION, ident.get("value"))
    return tuple(out)


def from_hl7(message: hl7v2.Message) -> tuple[Key, ...]:
    """The search keys of an HL7 v2 message read as text: PID-3, ORC-2/3, OBR-2/3 (first components)."""
    out: dict[Key, None] = {}
    for seg in message.segments:
        if seg.name == "PID":
            for rep in seg.repetitions(3):
                _add(out, _MRN, seg.component(rep, 1))
        elif seg.name in ("ORC", "OBR"):
            for n in (2, 3):
                _add(out, _ACCESSION, seg.component(seg.field(n), 1))
    return tuple(out)
