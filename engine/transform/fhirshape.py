"""A fast, conservative check that a FHIR resource (JSON) is one the fhir.resources R4B models accept.

Contract: :func:`conforms` returning True means ``get_fhir_model_class(type).model_validate(resource)``
succeeds; False means "not proven" — the caller then validates with the models, which give the verdict
and the error. It is never more permissive than the models, only cheaper: it walks the keys a resource
has, with the element tables of ``fhirmodel`` (read once per type), where the models run Python
validators over every field of every element instance (``reject_null_complex_elements``, required and
choice checks). Measured (callgrind): full validation of the 8-OBX ORU^R01 bundle 10.6 M → 2.6 M
instructions; 662 of the 666 resources the corpus maps to are proven (the rest: base64 attachments).

What it checks, each at least as strictly as the models (``tests/transform/test_fhirshape.py`` holds the
two to agreement on the corpus bundles and on mutated ones):

* every key is an element of the type (by its JSON name; ``resourceType`` only at the root, equal to the
  type); no ``_element`` primitive extensions, no ``null``, no empty list, lists where the element
  repeats and only there; contained resources are not walked (not proven);
* required elements are present; at most one element of a choice (``value[x]``), one when required;
* primitives by their FHIR regular expression (the models' own patterns, matched in full) and Python type:
  strings non-empty; codes without leading, trailing or double spaces; integers in range; decimals as
  int/float whose text matches; date, dateTime, instant and time also parsed as calendar values (no leap
  second, at most 6 fractional digits, a time zone whenever a time is given). ``base64Binary``, ``xhtml``,
  ``uuid`` and ``integer64`` are left to the models.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

from engine.transform import fhirmodel

Check = Callable[[Any], bool]

_STRING = re.compile(r"[ \r\n\t\S]+")  # String: the models' pattern, matched in full (they search)
_CODE = re.compile(r"[^\s]+(?: [^\s]+)*")  # Code: single spaces only (the models allow any one \s)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")
_URI = re.compile(r"\S+")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?")
INT32 = (-(2**31), 2**31 - 1)


def _text(pattern: re.Pattern[str]) -> Check:
    match = pattern.fullmatch
    return lambda v: type(v) is str and match(v) is not None


def _calendar(v: str) -> bool:
    """A full date (and time) that exists; partial dates are proven by the pattern alone."""
    if len(v) < 10:
        return True
    try:
        if len(v) == 10:
            datetime.date.fromisoformat(v)
        else:
            datetime.datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
    except ValueError:
        return False
    return True


def _dates(pattern: re.Pattern[str]) -> Check:
    match = pattern.fullmatch
    return lambda v: type(v) is str and match(v) is not None and _calendar(v)


def _time(v: Any) -> bool:
    if type(v) is not str or _TIME.fullmatch(v) is None:
        return False
    try:
        datetime.time.fromisoformat(v)
    except ValueError:
        return False
    return True


def _integer(low: int) -> Check:
    return lambda v: type(v) is int and low <= v <= INT32[1]


def _decimal(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and _DECIMAL.fullmatch(str(v)) is not None


def _never(v: Any) -> bool:
    return False


PRIMITIVE_CHECKS: dict[str, Check] = {
    "string": _text(_STRING),
    "markdown": _text(_STRING),
    "code": _text(_CODE),
    "id": _text(_ID),
    "uri": _text(_URI),
    "url": _text(_URI),
    "canonical": _text(_URI),
    "oid": _text(_OID),
    "boolean": lambda v: type(v) is bool,
    "integer": _integer(INT32[0]),
    "unsignedInt": _integer(0),
    "positiveInt": _integer(1),
    "decimal": _decimal,
    "date": _dates(_DATE),
    "dateTime": _dates(_DATETIME),
    "instant": _dates(_INSTANT),
    "time": _time,
}


class Shape:
    """One model's elements by JSON name: (repeats, primitive check or None, complex type name)."""

    __slots__ = ("choices", "elements", "required")

    def __init__(self, model: str) -> None:
        self.elements: dict[str, tuple[bool, Check | None, str]] = {}
        for name in fhirmodel.element_names(model):
            el = fhirmodel.element(model, name)
            assert el is not None
            if el.primitive:
                self.elements[name] = (el.is_list, PRIMITIVE_CHECKS.get(el.type, _never), "")
            elif fhirmodel.is_resource(el.type) or el.type == "Resource":
                self.elements[name] = (el.is_list, _never, "")  # contained resources: left to the models
            else:
                self.elements[name] = (el.is_list, None, el.type)
        cls = fhirmodel.model_class(model)
        fields = cls.model_fields
        alias = {n: f.alias or n for n, f in fields.items()}
        required = {alias[n] for n, f in fields.items() if f.is_required()}
        blank = cls.model_construct()
        required.update(alias[n] for n, _ext in blank.get_required_fields())
        self.required = tuple(sorted(required))
        choices = []
        for names in blank.get_one_of_many_fields().values():
            extra = fields[names[0]].json_schema_extra
            needed = isinstance(extra, dict) and extra.get("one_of_many_required") is True
            choices.append((tuple(alias[n] for n in names), needed))
        self.choices = tuple(choices)


_shapes: dict[str, Shape | None] = {}
_lock = threading.Lock()


def shape(model: str) -> Shape | None:
    """The shape of a FHIR model by name (None: not a model fhirmodel knows)."""
    got = _shapes.get(model, _MISSING)
    if got is _MISSING:
        try:
            made: Shape | None = Shape(model) if fhirmodel.is_model(model) else None
        except (KeyError, AttributeError, TypeError, ValueError):
            made = None
        with _lock:
            got = _shapes[model] = made
    return got


_MISSING: Any = object()


def _fits(value: Any, model: str, root: str | None = None) -> bool:
    if type(value) is not dict:
        return False
    sh = _shapes.get(model) or shape(model)
    if sh is None:
        return False
    elements = sh.elements
    for k, v in value.items():
        spec = elements.get(k)
        if spec is None:
            if k == "resourceType" and root is not None and v == root:
                continue
            return False
        many, check, sub = spec
        if many:
            if type(v) is not list or not v:
                return False
            if check is not None:
                for x in v:
                    if not check(x):
                        return False
            else:
                for x in v:
                    if not _fits(x, sub):
                        return False
        elif check is not None:
            if not check(v):
                return False
        elif not _fits(v, sub):
            return False
    for r in sh.required:
        if r not in value:
            return False
    for names, needed in sh.choices:
        n = 0
        for c in names:
            if c in value:
                n += 1
        if n > 1 or (needed and n == 0):
            return False
    return True


def conforms(resource: dict[str, Any]) -> bool:
    """True when the resource certainly validates with its fhir.resources R4B model (see the module doc)."""
    rtype = resource.get("resourceType") if type(resource) is dict else None
    if type(rtype) is not str or not fhirmodel.is_resource(rtype):
        return False
    return _fits(resource, rtype, rtype)
