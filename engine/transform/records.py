"""What the non-HL7 input kinds share: their values as HL7-escaped text, and the record a rule reads.

DICOM studies (``engine.transform.dicom``) and JSON events (``engine.transform.jsonevent``) reach the one
mapping runtime as records, subclasses of :class:`~engine.hl7v2.Segment`. Their values must be escaped
as HL7 text so every function, table and datatype map reads them unchanged; and a source path resolves
against the record the rule is in: the current one, else the nearest enclosing record of a segment entry.
"""

from __future__ import annotations

from typing import Any, TypeVar

from engine.hl7v2 import Segment
from engine.transform.paths import Env

R = TypeVar("R", bound=Segment)


def escape(text: str, *, components: bool) -> str:
    """``text`` as an HL7 field value: separators escaped; with ``components`` its ``^`` are kept."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("~", "\\R\\").replace("&", "\\T\\")
    return out if components else out.replace("^", "\\S\\")


def enclosing(env: Env, kind: type[R]) -> tuple[R | None, Any]:
    """The record of type ``kind`` a rule reads (the current one, else the first one of the nearest
    enclosing segment entry), and the scope where the search stopped (for a kind's own fallback)."""
    cur = env.cur
    if isinstance(cur, kind):
        return cur, env.scope
    scope = env.scope
    while scope is not None and getattr(scope, "entry", None) is not None:
        segs = scope.own.get(scope.entry.segment)
        if segs and isinstance(segs[0], kind):
            return segs[0], scope
        scope = scope.parent
    return None, scope
