"""HL7 v2 source paths in the notation integrators already use, compiled to small getter closures.

Segment paths (segment and message maps)::

    PID-3            first repetition of PID-3 (a field value: components separated by ^)
    PID-3[*]         every repetition            PID-3[2]   the second repetition
    PID-5.1          component 1 of the first repetition
    PID-3[*].4.1     sub-component 1 of component 4, in every repetition
    NTE[*]           every NTE segment of the current group      OBX          the OBX itself

Datatype paths (datatype maps) start with the map's datatype: ``CX.1``, ``CX.4.2``, or ``CX`` (the whole
value). A datatype map is applied to a field repetition (level 1) or to a component (level 2), so its
paths reach one or two levels deeper.

A getter takes an :class:`Env` and returns the raw (still escaped) non-empty values it selects; HL7's
explicit null ``""`` counts as empty. Values are unescaped only when they become FHIR primitives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.hl7v2 import Delimiters, Segment, unescape

_SEGMENT = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<segrep>\*|[1-9][0-9]*)\])?"
    r"(?:-(?P<field>[1-9][0-9]*)(?:\[(?P<rep>\*|[1-9][0-9]*)\])?"
    r"(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?)?$"
)
_DATATYPE = re.compile(r"^(?P<dt>[A-Z][A-Z0-9]{1,3})(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?$")

ALL = 0  # a repetition index meaning "every one"
NULL = '""'  # HL7 explicit null


class PathError(ValueError):
    """A path that does not parse or does not fit where it is used."""


class Env:
    """What a getter reads: the group scope, the current segment or datatype value, and run settings."""

    __slots__ = ("cur", "field", "memo", "parts", "run", "scope")

    def __init__(self, scope: Any, cur: Any, field: str, run: Any) -> None:
        self.scope = scope  # runtime.Instance: .find(name) -> list[Segment]
        self.cur = cur  # Segment (segment maps) or str (datatype maps)
        self.field = field  # HL7 field the current value came from, for errors ("PID-3")
        self.run = run  # runtime.Run: delimiters, timezone
        self.parts: list[str] | None = None  # datatype maps: cur split once into its parts
        self.memo: dict[Any, Any] | None = None  # conditions: first values already read


@dataclass(frozen=True, slots=True)
class SegmentPath:
    text: str
    segment: str
    seg_rep: int | None  # None: the first occurrence; ALL; or n (1-based)
    field: int | None
    rep: int | None
    component: int | None
    sub: int | None

    @property
    def level(self) -> int:
        """0 segment, 1 field repetition, 2 component, 3 sub-component."""
        if self.field is None:
            return 0
        return 1 if self.component is None else 2 if self.sub is None else 3

    @property
    def multiple(self) -> bool:
        return self.seg_rep == ALL or self.rep == ALL

    @property
    def label(self) -> str:
        """The HL7 field named in errors: ``OBX-5`` (or the segment name for a segment path)."""
        return self.segment if self.field is None else f"{self.segment}-{self.field}"


@dataclass(frozen=True, slots=True)
class DatatypePath:
    text: str
    datatype: str
    component: int | None
    sub: int | None

    def level(self, base: int) -> int:
        return base + (self.component is not None) + (self.sub is not None)


def _index(s: str | None) -> int | None:
    if s is None:
        return None
    return ALL if s == "*" else int(s)


def parse_segment_path(text: str) -> SegmentPath:
    m = _SEGMENT.match(text)
    if not m:
        raise PathError(f"not an HL7 path: {text!r} (expected e.g. PID-3, PID-5[*].1, OBX-5, NTE[*])")
    return SegmentPath(
        text,
        m["seg"],
        _index(m["segrep"]),
        int(m["field"]) if m["field"] else None,
        _index(m["rep"]),
        int(m["comp"]) if m["comp"] else None,
        int(m["sub"]) if m["sub"] else None,
    )


def parse_datatype_path(text: str, datatype: str) -> DatatypePath | None:
    """Parse ``CX.4.1`` for a map of datatype ``CX``; ``None`` when the path is not a datatype path."""
    m = _DATATYPE.match(text)
    if not m or m["dt"] != datatype:
        return None
    return DatatypePath(text, datatype, int(m["comp"]) if m["comp"] else None, int(m["sub"]) if m["sub"] else None)


Getter = Callable[[Env], list[Any]]


def separator(d: Delimiters, level: int) -> str:
    """The separator between the parts of a value at ``level`` (1: components, 2: sub-components)."""
    return d.component if level == 1 else d.subcomponent


def pick_part(raw: str, comp: int, sub: int | None, d: Delimiters) -> str:
    """Component ``comp`` (and sub-component ``sub``) of one raw repetition, ``""`` when absent."""
    parts = raw.split(d.component)
    raw = parts[comp - 1] if comp <= len(parts) else ""
    if sub is not None and raw:
        subs = raw.split(d.subcomponent)
        raw = subs[sub - 1] if sub <= len(subs) else ""
    return raw


def primitive(raw: str, level: int, d: Delimiters) -> str:
    """The first component / sub-component of a raw value, unescaped and trimmed."""
    if raw.isalnum():
        return raw
    if level == 1 and d.component in raw:
        raw = raw.split(d.component, 1)[0]
    if level <= 2 and d.subcomponent in raw:
        raw = raw.split(d.subcomponent, 1)[0]
    if d.escape in raw:
        raw = unescape(raw, d)
    return raw.strip()


def _pick(items: list[Any], index: int | None) -> list[Any]:
    if index == ALL:
        return items
    i = 0 if index is None else index - 1
    return [items[i]] if i < len(items) else []


EMPTY: list[Any] = []


def segment_getter(p: SegmentPath, current: str | None) -> Getter:
    """Compile a segment path. ``current`` names the segment a segment map is applied to (``env.cur``)."""
    seg, seg_rep, field, rep, comp, sub = p.segment, p.seg_rep, p.field, p.rep, p.component, p.sub
    own = seg == current and seg_rep is None
    whole_field = seg == "MSH" and field in (1, 2)

    def segments(env: Env) -> list[Segment]:
        if own:
            return [env.cur]
        return _pick(env.scope.find(seg), seg_rep)

    if field is None:
        return segments
    if own and rep is None and not whole_field:
        return _own_first(field, comp, sub)
    if own and rep == ALL and not whole_field:
        return _own_all(field, comp, sub)

    def get(env: Env) -> list[str]:
        out: list[str] = []
        d = env.run.d
        for s in segments(env):
            fields = s.fields
            raw = fields[field] if field < len(fields) else ""
            if not raw:
                continue
            reps = [raw] if whole_field else _pick(raw.split(d.repetition), rep)
            for r in reps:
                v = r
                if comp is not None:
                    v = pick_part(r, comp, sub, d)
                if v and v != NULL:
                    out.append(v)
        return out

    return get


def _own_all(field: int, comp: int | None, sub: int | None) -> Getter:
    """Every repetition of a field (or of one of its components) of the current segment."""

    def get(env: Env) -> list[str]:
        fields = env.cur.fields
        raw = fields[field] if field < len(fields) else ""
        if not raw:
            return EMPTY
        d = env.run.d
        if comp is None:
            if d.repetition not in raw:
                return EMPTY if raw == NULL else [raw]
            return [r for r in raw.split(d.repetition) if r and r != NULL]
        out: list[str] = []
        for r in raw.split(d.repetition):
            v = pick_part(r, comp, sub, d)
            if v and v != NULL:
                out.append(v)
        return out

    return get


class OwnRead:
    """The fast path: a field (or component) of the current segment's first repetition. Rules and
    conditions recognise it by type and fuse the read into their own closure (``own``); those that call
    it call ``fn`` (:func:`plain`), a closure: calling an instance of a Python class costs CPython 3.11
    its slow call path (``slot_tp_call``, 7 % of the 8-OBX ORU's mapping instructions when used)."""

    __slots__ = ("fn", "own")

    def __init__(self, field: int, comp: int | None, sub: int | None) -> None:
        self.own = (field, comp, sub)

        def read(env: Env) -> list[str]:
            raw = own_value(env.cur.fields, field, comp, sub, env.run.d)
            return [raw] if raw else EMPTY

        self.fn: Getter = read

    def __call__(self, env: Env) -> list[str]:
        return self.fn(env)


class ComponentRead:
    """A component (or sub-component) of a datatype value at level ``base``; rules recognise it by type and
    fuse the read (``component`` = (component, sub-component, base))."""

    __slots__ = ("component", "fn")

    def __init__(self, comp: int, sub: int | None, base: int) -> None:
        self.component = (comp, sub, base)

        def read(env: Env) -> list[str]:
            parts = env.parts
            if parts is None:
                d = env.run.d
                parts = env.parts = env.cur.split(d.component if base == 1 else d.subcomponent)
            if comp > len(parts):
                return EMPTY
            v = parts[comp - 1]
            if sub is not None and v:
                subs = v.split(env.run.d.subcomponent)
                v = subs[sub - 1] if sub <= len(subs) else ""
            return [v] if v and v != NULL else EMPTY

        self.fn: Getter = read

    def __call__(self, env: Env) -> list[str]:
        return self.fn(env)


def plain(get: Getter) -> Getter:
    """The getter as a plain function (a closure is called faster than an :class:`OwnRead` instance)."""
    return get.fn if isinstance(get, OwnRead | ComponentRead) else get


def _own_first(field: int, comp: int | None, sub: int | None) -> Getter:
    """The fast path: a field (or component) of the current segment's first repetition."""
    return OwnRead(field, comp, sub)


def own_value(fields: list[str], field: int, comp: int | None, sub: int | None, d: Delimiters) -> str:
    """The raw value :func:`_own_first` selects, ``""`` when empty (for closures that fuse the read)."""
    raw = fields[field] if field < len(fields) else ""
    if not raw:
        return raw
    if d.repetition in raw:
        raw = raw.split(d.repetition, 1)[0]
    if comp is not None:
        raw = pick_part(raw, comp, sub, d)
    return "" if raw == NULL else raw


def datatype_getter(p: DatatypePath, base: int) -> Getter:
    """Compile a datatype path for a value at level ``base`` (1 repetition, 2 component)."""
    comp, sub = p.component, p.sub
    if p.level(base) > 3:
        raise PathError(f"{p.text} reaches below a sub-component when {p.datatype} is a component")

    if comp is None:

        def whole(env: Env) -> list[str]:
            v = env.cur
            return [v] if v and v != NULL else EMPTY

        return whole

    return ComponentRead(comp, sub, base)


def relative_getter(comp: int | None, sub: int | None) -> Getter:
    """A path inside the item being filtered by ``where`` (``PID-3.5`` while iterating ``PID-3[*]``)."""
    return datatype_getter(DatatypePath("", "", comp, sub), 1)
