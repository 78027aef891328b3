"""Code-system maps: HL7 v2 table values → FHIR codes (``mappings/hl7v2/codesystems/*.yaml``).

A table file names the v2 table it reads (``source: HL70001``), the FHIR code system it writes
(``system``), what to do with a code it does not list (``unmapped``) and the codes::

    description: Administrative sex (HL7 table 0001) → AdministrativeGender.
    source: HL70001
    system: http://hl7.org/fhir/administrative-gender
    unmapped: error          # error (TransformError 103 naming the field) | keep | drop
    map:
      F: female
      M: {code: male, display: Male}

``keep`` passes an unlisted code through unchanged, in the v2 table's own code system
(``http://terminology.hl7.org/CodeSystem/v2-0078`` for ``HL70078``). A rule reads a table with
``table: <file name>``; the output adapts to the target element: a ``code``/``string`` gets the code,
a ``Coding`` gets ``{system, code, display}``, a ``CodeableConcept`` gets ``{coding: [that]}``.
Tables without ``system`` are plain lookups used by functions (coding-system names → URIs).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.config.model import Model


class Concept(Model):
    """A FHIR concept a v2 code maps to."""

    code: str = Field(description="The FHIR code (or, for lookup tables, the value).")
    display: str | None = Field(None, description="Display text for the Coding.")
    system: str | None = Field(None, description="Code system, when it differs from the table's `system`.")


class TableFile(Model):
    """One code-system map file."""

    description: str = Field(description="What the table maps, and from which IG concept map.")
    source: str | None = Field(None, description="The v2 table read, as HL7 names it (HL70001).")
    system: str | None = Field(None, description="FHIR code system of the mapped codes.")
    unmapped: Literal["error", "keep", "drop"] = Field(
        "error", description="A code not listed: reject the message (error), pass it through (keep), or drop it."
    )
    merge: bool = Field(
        False, description="In an overlay: add to / override the entries of the table of the same name."
    )
    map: dict[str, str | Concept] = Field(description="v2 code → FHIR code (or concept).")


class Unmapped(LookupError):
    """A code the table does not list, with ``unmapped: error``."""


def v2_system(source: str | None) -> str | None:
    """``HL70078`` → ``http://terminology.hl7.org/CodeSystem/v2-0078``."""
    if source and source.upper().startswith("HL7") and source[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{source[3:].zfill(4)}"
    return None


class Table:
    """A compiled code-system map: dict look-ups returning fresh objects (callers may extend them)."""

    __slots__ = ("_codes", "_codings", "keep_system", "name", "system", "unmapped")

    def __init__(self, name: str, spec: TableFile) -> None:
        self.name = name
        self.system = spec.system
        self.unmapped = spec.unmapped
        self.keep_system = v2_system(spec.source)
        self._codes: dict[str, str] = {}
        self._codings: dict[str, dict[str, str]] = {}
        for key, entry in spec.map.items():
            c = Concept(code=entry) if isinstance(entry, str) else entry
            self._codes[key] = c.code
            coding = {"system": c.system or spec.system, "code": c.code, "display": c.display}
            self._codings[key] = {k: v for k, v in coding.items() if v}

    def __contains__(self, code: str) -> bool:
        return code in self._codes

    def _key(self, code: str) -> str | None:
        if code in self._codes:
            return code
        up = code.upper()
        return up if up in self._codes else None

    def code(self, code: str) -> str | None:
        key = self._key(code)
        if key is not None:
            return self._codes[key]
        return self._miss(code)

    def coding(self, code: str) -> dict[str, str] | None:
        key = self._key(code)
        if key is not None:
            return dict(self._codings[key])
        kept = self._miss(code)
        if kept is None:
            return None
        return {"system": self.keep_system, "code": kept} if self.keep_system else {"code": kept}

    def concept(self, code: str) -> dict[str, Any] | None:
        coding = self.coding(code)
        return {"coding": [coding]} if coding else None

    def _miss(self, code: str) -> str | None:
        if self.unmapped == "keep":
            return code
        if self.unmapped == "drop":
            return None
        raise Unmapped(f"code is not in table {self.name}")
