"""What the FHIR R4 (fhir.resources R4B) models say about an element, for compile-time checks.

The compiler asks: does ``Observation.valueQuantity`` exist, is it a list, what type is it, which
resource types may a Reference point to, which codes does a required binding allow. The answers come from
the pydantic models of ``fhir.resources.R4B`` (whose core resources match R4), read once and cached.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

#: FHIR primitive types a produced primitive may be written to.
PRIMITIVE_TARGETS: dict[str, frozenset[str]] = {
    "string": frozenset({"string", "markdown", "code", "id"}),
    "code": frozenset({"code", "string"}),
    "uri": frozenset({"uri", "url", "canonical", "string"}),
    "date": frozenset({"date", "dateTime"}),
    "dateTime": frozenset({"dateTime"}),
    "instant": frozenset({"instant", "dateTime"}),
    "time": frozenset({"time"}),
    "decimal": frozenset({"decimal"}),
    "integer": frozenset({"integer", "decimal", "positiveInt", "unsignedInt"}),
    "boolean": frozenset({"boolean"}),
}
PRIMITIVES = frozenset(
    {
        "string",
        "markdown",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "date",
        "dateTime",
        "instant",
        "time",
        "decimal",
        "integer",
        "positiveInt",
        "unsignedInt",
        "integer64",
        "boolean",
        "base64Binary",
        "xhtml",
    }
)


@dataclass(frozen=True)
class Element:
    name: str
    type: str  # a primitive ("code", "dateTime") or a model name ("Identifier", "EncounterLocation")
    is_list: bool
    references: tuple[str, ...] = ()  # Reference: allowed resource types ("Resource" means any)
    codes: tuple[str, ...] = ()  # required binding codes, when the model lists them all

    @property
    def primitive(self) -> bool:
        return self.type in PRIMITIVES


def _unwrap(ann: Any) -> tuple[Any, bool]:
    """Strip Optional and List; return (inner annotation, is_list)."""
    is_list = False
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        elif origin in (list, typing.List):  # noqa: UP006
            is_list = True
            ann = typing.get_args(ann)[0]
        else:
            return ann, is_list


def _type_name(ann: Any) -> str | None:
    if typing.get_origin(ann) is typing.Annotated:
        meta = typing.get_args(ann)[1]
        name = type(meta).__name__
        return name[0].lower() + name[1:]
    if ann is bool:
        return "boolean"
    name = getattr(ann, "__name__", "")
    if name.endswith("Type"):
        return name[:-4]
    return None


@lru_cache(maxsize=1024)
def is_model(name: str) -> bool:
    """True for a FHIR resource, datatype or backbone element model name."""
    if not name or name in PRIMITIVES or not name[0].isupper():
        return False
    try:
        get_fhir_model_class(name)
    except (ValueError, AttributeError, ImportError):
        return False
    return True


@lru_cache(maxsize=256)
def is_resource(name: str) -> bool:
    """True for a resource type (Patient, Observation), False for datatypes and backbone elements."""
    from fhir.resources.R4B.resource import Resource

    return is_model(name) and issubclass(get_fhir_model_class(name), Resource)


@lru_cache(maxsize=4096)
def _elements(model: str) -> dict[str, Element]:
    cls = get_fhir_model_class(model)
    out: dict[str, Element] = {}
    for fname, f in cls.model_fields.items():
        name = f.alias or fname
        if name.startswith("_") or fname.endswith("__ext") or name == "fhir_comments":
            continue
        inner, is_list = _unwrap(f.annotation)
        tname = _type_name(inner)
        if tname is None:
            continue
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        refs = tuple(str(x) for x in extra.get("enum_reference_types") or ())  # type: ignore[union-attr]
        codes = tuple(str(x) for x in extra.get("enum_values") or ())  # type: ignore[union-attr]
        if "+" in codes:
            codes = ()
        out[name] = Element(name, tname, is_list, refs, codes)
    return out


def element(model: str, name: str) -> Element | None:
    """The element ``name`` of ``model`` (a resource, datatype or backbone element), or None."""
    return _elements(model).get(name)


def element_names(model: str) -> list[str]:
    return sorted(_elements(model))


def model_class(name: str) -> type[Any]:
    return get_fhir_model_class(name)


def accepts(produced: str, target: Element) -> bool:
    """Whether a value of FHIR type ``produced`` may be written to ``target``."""
    if target.primitive:
        return target.type in PRIMITIVE_TARGETS.get(produced, frozenset({produced}))
    return produced == target.type
