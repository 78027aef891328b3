"""What of a peer's OperationOutcome may leave the content store: issue severities, codes and element paths.

EHRs echo what they were sent. ``diagnostics`` and ``details`` are free text; ``expression`` and
``location`` often carry search values (``Patient?identifier=…|MRN``), FHIRPath literals
(``name.where(family='…')``), comparisons (``identifier[0].value = 12345``) or trailing text. The whole
response stays in the content table (kind ``response``); the one-line reason built here is what logs,
stored errors and the CLI show, so it is built from an allow-list, never by masking what looks risky:

- a severity is one of the four IssueSeverity codes and a code one of the IssueType codes, else ``?``;
- an element path is kept only as far as the FHIR R4 model confirms it: a resource type first, then
  element names of the type reached so far, ``[n]`` indexes, ``[x]`` after a choice element, and the
  FHIRPath functions below with their arguments shown as ``…`` (a type name given to ``ofType``, ``as``
  or ``is`` is checked and kept). At the first thing that is not one of these (a space, ``=``, ``?``,
  ``/``, ``|``, ``:``, a quote, a literal, a name the model does not know) the path is cut and ends in
  ``…``; a path that does not start with a resource type is ``…`` entirely;
- ``diagnostics``, ``details``, ``text`` and extensions are never read.

So ``Patient.name.where(family='X').given`` reads ``Patient.name.where(…).given``, ``Patient?identifier=
urn:oid:1.2|123`` reads ``Patient…``, and ``Patient.identifier[0].value = 12345`` reads
``Patient.identifier[0].value…``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MASK = "…"
MAX_ISSUES = 3
MAX_PATHS = 3
_MAX_PATH_CHARS = 300  # longer input is cut there before reading (and so ends in …)

SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
#: http://hl7.org/fhir/R4/valueset-issue-type.html
ISSUE_TYPES = frozenset(
    {
        "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
        "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found",
        "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict",
        "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
    }
)  # fmt: skip

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_INDEX = re.compile(r"\[[0-9]{1,6}\]")
_SAME = "same"  # the function's result has the type of its input
#: FHIRPath functions kept in a path (arguments masked), and the type of what they return (None: unknown).
_FUNCTIONS: dict[str, str | None] = {
    "where": _SAME,
    "first": _SAME,
    "last": _SAME,
    "single": _SAME,
    "tail": _SAME,
    "skip": _SAME,
    "take": _SAME,
    "distinct": _SAME,
    "extension": "Extension",
    "resolve": None,
    "exists": "boolean",
    "empty": "boolean",
    "not": "boolean",
    "all": "boolean",
    "hasValue": "boolean",
    "count": "integer",
}
_TYPE_FUNCTIONS = frozenset({"ofType", "as", "is"})


def outcome_reason(body: bytes) -> str | None:
    """The reason for a response body that is an OperationOutcome (see :func:`issues_reason`), else None."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return None
    return issues_reason(data)


def issues_reason(outcome: dict[str, Any]) -> str:
    """``OperationOutcome error invalid at Patient.birthDate; …`` for at most three issues."""
    parts = []
    issues = outcome.get("issue")
    for issue in issues[:MAX_ISSUES] if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        text = f"{_allowed(issue.get('severity'), SEVERITIES)} {_allowed(issue.get('code'), ISSUE_TYPES)}"
        paths = issue.get("expression") or issue.get("location")
        if isinstance(paths, list) and paths:
            shown = list(dict.fromkeys(element_path(p) for p in paths[:MAX_PATHS]))
            text += " at " + ", ".join(shown)
        parts.append(text)
    return "OperationOutcome " + "; ".join(parts) if parts else "OperationOutcome"


def _allowed(value: object, known: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in known else "?"


def element_path(text: object) -> str:
    """The part of ``text`` that the FHIR model confirms is an element path, ending in ``…`` if cut."""
    if not isinstance(text, str):
        return MASK
    from engine.transform import fhirmodel  # the FHIR model is loaded only when an outcome is read

    s = text[:_MAX_PATH_CHARS]
    first = _NAME.match(s)
    if first is None or not fhirmodel.is_resource(first.group()):
        return MASK
    out = [first.group()]
    kind: str | None = first.group()
    choice = False
    pos = first.end()
    while pos < len(s):
        index = _INDEX.match(s, pos)
        if index is not None:
            out.append(index.group())
            pos = index.end()
            continue
        if choice and s.startswith("[x]", pos):
            out.append("[x]")
            pos += 3
            continue
        name = _NAME.match(s, pos + 1) if s[pos] == "." else None
        if name is None:
            break
        after = name.end()
        if after < len(s) and s[after] == "(":
            close = _closing(s, after)
            called = None if close is None else _call(name.group(), s[after + 1 : close], kind, fhirmodel)
            if close is None or called is None:
                break
            shown, kind = called
            out.append("." + shown)
            pos = close + 1
            choice = False
            continue
        child = _child(kind, name.group(), fhirmodel)
        if child is None:
            break
        kind, choice = child
        out.append("." + name.group())
        pos = after
    return "".join(out) + (MASK if pos < len(text) else "")


def _closing(s: str, start: int) -> int | None:
    """Position of the ``)`` closing the ``(`` at ``start`` (quoted literals skipped), or None."""
    depth = 0
    quote = ""
    i = start
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _call(name: str, args: str, kind: str | None, fhirmodel: Any) -> tuple[str, str | None] | None:
    """(how the call is shown, the type it returns) for a known function; None for any other."""
    if name in _TYPE_FUNCTIONS:
        arg = args.strip()
        if fhirmodel.is_model(arg) or arg in fhirmodel.PRIMITIVES:
            return f"{name}({arg})", ("boolean" if name == "is" else arg)
        return f"{name}({MASK})", None
    if name not in _FUNCTIONS:
        return None
    result = _FUNCTIONS[name]
    return f"{name}({MASK if args.strip() else ''})", (kind if result == _SAME else result)


def _child(kind: str | None, name: str, fhirmodel: Any) -> tuple[str | None, bool] | None:
    """(type of element ``name`` of ``kind``, whether it is a choice element), or None when not confirmed."""
    if kind is None:
        return None
    if kind in fhirmodel.PRIMITIVES:
        return ("Extension", False) if name == "extension" else ("string", False) if name == "id" else None
    if not fhirmodel.is_model(kind):
        return None
    element = fhirmodel.element(kind, name)
    if element is not None:
        return element.type, False
    # a choice element named without its type (Observation.value): valueQuantity, valueString, … exist
    prefix = len(name)
    if any(n.startswith(name) and len(n) > prefix and n[prefix].isupper() for n in fhirmodel.element_names(kind)):
        return None, True
    return None
