"""JSON input for the one mapping compiler and runtime: an event as records, and JSON source paths.

The runtime reads a message as an ordered list of named records (HL7 segments). A JSON event (a webhook
body, ``application/json``) becomes, in document order:

    MSH        routing facts: MSH-3 the event's top-level ``source`` (CloudEvents' attribute: the sending
               application, for ``identifiers: by_application``), MSH-9 the event type (the value at the
               channel's ``event_type:`` path, default ``type``: what a JSON message map ``accepts``)
    EVENT      the root object
    <path>     one record per JSON object inside it, named by its path from the root with ``[*]`` for
               each array it sits in: ``patient``, ``appointment.practitioner``, ``readings[*]``,
               ``readings[*].device``

so a message map selects ``segment: patient`` (the only one) or ``each: "readings[*]"`` (one resource per
item), and a segment map (``segment: "readings[*]"``) reads one such object. Source paths
(``mappings/json/``) are dotted keys, read from the record the map is applied to, or from the root with
``$.``:

    status                 a key of the current object           $.patient.id    from the root
    given[*]               every item of an array                given[2]        the second (1-based, as
                                                                                 HL7's PID-3[2])
    given                  an array without an index: its first item (as an HL7 field's first repetition)
    readings[*]            objects: the records themselves, for ``use:`` of a segment map that reads them
                           (a path is read as records when it names the ``segment:`` of a segment map)

Keys are ``[A-Za-z_][A-Za-z0-9_-]*``. Values reach rules as text, escaped like an HL7 field with no
components, so every function, table and ``when:`` works on them unchanged: a string as sent; a number
as its exact JSON text (``98.60`` stays ``98.60``, ``12345678901234567890`` is not rounded: the body is
parsed with the number hooks of :mod:`json`, never through a float); ``true``/``false``; ``null`` and
``""`` are absent. A path that finds an object or array where a value is expected refuses the event
(code 102) naming the path (``$.readings[*].value``), never a value. Datatype maps of the JSON folder read
one value (``datatype: ID``, path ``ID`` is the value itself); ``where:`` filters are not available.

Hostile input: the body is held to the mapping set's :class:`~engine.transform.limits.Limits` before and
while it is read — ``max_bytes`` (body size), ``max_repetitions`` (items of one array), ``max_segments``
(objects, i.e. records) — and to :data:`MAX_DEPTH` levels of nesting; over a cap it is refused (207)
naming the cap and the JSON path where it was exceeded. No expression language, no ``eval``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.errors import TransformError
from engine.hl7v2 import DEFAULT_DELIMITERS, Message, Segment
from engine.transform import json_functions  # noqa: F401  (registers the JSON functions in the closed registry)
from engine.transform.limits import Limits
from engine.transform.paths import ALL, EMPTY, Env, Getter, PathError
from engine.transform.records import enclosing, escape

__all__ = ["MAX_DEPTH", "JsonNotation", "Number", "Record", "event_message", "read_event"]

#: Deepest nesting of objects and arrays read. Measured: a realistic event nests 3-5 levels; the json
#: module's C reader itself stops near 1,000 (RecursionError, refused here too) — well before that, a map
#: could never name a path so deep.
MAX_DEPTH = 64

ROOT = "EVENT"
_D = DEFAULT_DELIMITERS
_KEY = r"[A-Za-z_][A-Za-z0-9_-]*"
_STEP = re.compile(rf"^(?P<key>{_KEY})(?:\[(?P<index>\*|[1-9][0-9]*)\])?$")


class Number(str):
    """A JSON number as its exact text (``98.60``): never a float on the way in."""

    __slots__ = ()


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


class Record(Segment):
    """One JSON object of the event (``EVENT`` the root): the dict it reads from."""

    __slots__ = ("obj", "parent", "root")

    def __init__(self, name: str, obj: dict[str, Any], parent: Record | None) -> None:
        self._d = _D
        self.name = name
        self.fields = [name]
        self.obj = obj
        self.parent = parent
        self.root: dict[int, Record] = parent.root if parent is not None else {}  # id(object) → its record
        self.root[id(obj)] = self

    def __repr__(self) -> str:  # names only: never PHI
        return f"<Record {self.name}>"


def _refuse(message: str, where: str, code: str = "102") -> TransformError:
    return TransformError(message, field=where, rule="json", code=code)


def _over(cap: str, value: int, where: str) -> TransformError:
    return TransformError(f"over the cap {cap} = {value}", field=where, rule=f"limits.{cap}", code="207")


def read_event(raw: bytes, limits: Limits) -> dict[str, Any]:
    """The event's root object, numbers kept as :class:`Number` text. TransformError naming ``$`` (or the
    cap) when it is not a JSON object, too large or too deep."""
    if len(raw) > limits.max_bytes:
        raise _over("max_bytes", limits.max_bytes, "$")
    try:
        data = json.loads(raw.decode("utf-8-sig"), parse_float=Number, parse_int=Number, parse_constant=_no_constant)
    except RecursionError:
        raise _over("max_depth", MAX_DEPTH, "$") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise _refuse("the event is not JSON (UTF-8)", "$", "207") from None
    if not isinstance(data, dict):
        raise _refuse("an event is a JSON object", "$")
    return data


def _records(root: dict[str, Any], limits: Limits) -> list[Segment]:
    """EVENT and one record per object below it, in document order; caps checked on the way."""
    first = Record(ROOT, root, None)
    out: list[Segment] = [first]
    # (value, record name, JSON path for errors, depth, parent record)
    stack: list[tuple[Any, str, str, int, Record]] = [(v, k, f"$.{k}", 1, first) for k, v in reversed(root.items())]
    while stack:
        value, name, where, depth, parent = stack.pop()
        if depth > MAX_DEPTH:
            raise _over("max_depth", MAX_DEPTH, where)
        if isinstance(value, dict):
            rec = Record(name, value, parent)
            out.append(rec)
            if len(out) > limits.max_segments:
                raise _over("max_segments", limits.max_segments, where)
            stack.extend((v, f"{name}.{k}", f"{where}.{k}", depth + 1, rec) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            if len(value) > limits.max_repetitions:
                raise _over("max_repetitions", limits.max_repetitions, where)
            stack.extend((v, f"{name}[*]", f"{where}[*]", depth + 1, parent) for v in reversed(value))
    return out


def event_message(raw: bytes, limits: Limits, type_path: str = "type") -> Message:
    """The records of one JSON event (see the module docstring); its type read at ``type_path`` (dotted)."""
    root = read_event(raw, limits)
    found: Any = root
    for part in type_path.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    event_type = found if isinstance(found, str) and not isinstance(found, Number) else ""
    source = root.get("source")
    app = source if isinstance(source, str) and not isinstance(source, Number) else ""
    msh = Segment(f"MSH|^~\\&|{escape(app, components=False)}||||||{escape(event_type, components=False)}", _D)
    return Message([msh, *_records(root, limits)], _D)


_HL7_SPECIAL = re.compile(r"[\\|~&^]")


def _text(value: Any) -> str:
    """A scalar as HL7-escaped text ('' for null)."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    text = str(value)
    # measured: escaping every value was the largest cost of a 4-reading event; most values have nothing to escape
    return (escape(text, components=False) if _HL7_SPECIAL.search(text) else text).strip()


def _current(env: Env) -> Record | None:
    rec, _ = enclosing(env, Record)
    if rec is not None:
        return rec
    segs = env.run.segments if env.run is not None else []
    return segs[1] if len(segs) > 1 and isinstance(segs[1], Record) else None


def _parse(text: str) -> tuple[bool, list[tuple[str, int | None]]]:
    absolute = text.startswith("$.")
    body = text[2:] if absolute else text
    steps: list[tuple[str, int | None]] = []
    for part in body.split("."):
        m = _STEP.match(part)
        if not m:
            raise PathError(
                f"not a JSON path: {text!r} (expected e.g. status, patient.name.family, readings[*].value, "
                "given[2], $.patient.id)"
            )
        i = m["index"]
        steps.append((m["key"], None if i is None else ALL if i == "*" else int(i)))
    return absolute, steps


def _name(base: str, steps: list[tuple[str, int | None]]) -> str:
    """The record name a path reaches from a record named ``base`` (indices written as ``[*]``)."""
    parts = [k if i is None else f"{k}[*]" for k, i in steps]
    tail = ".".join(parts)
    return tail if base == ROOT else f"{base}.{tail}"


class JsonNotation:
    """Resolves JSON source paths for the compiler (``Resolver(notation=...)``).

    ``records``: the record names some segment map reads (its ``segment:``); a path that reaches one of
    them selects records (level 0), any other path selects values (level 1).
    """

    name = "json"

    def __init__(self, records: set[str]) -> None:
        self.records = records

    def resolve(self, text: str, current: str | None) -> tuple[Getter, int, str | None]:
        absolute, steps = _parse(text)
        base = ROOT if absolute or current is None else current
        name = _name(base, steps)
        label = text if absolute else f"$.{text}" if base == ROOT else f"$.{base}.{text}"
        records = name in self.records
        return _getter(absolute, steps, records, label), 0 if records else 1, label


def _getter(absolute: bool, steps: list[tuple[str, int | None]], records: bool, label: str) -> Getter:
    def get(env: Env) -> list[Any]:
        rec = _current(env)
        if rec is None:
            return EMPTY
        values: list[Any] = [env.run.segments[1].obj if absolute else rec.obj]
        for key, index in steps:
            found: list[Any] = []
            for v in values:
                x = v.get(key) if isinstance(v, dict) else None
                if x is None:
                    continue
                if isinstance(x, list):
                    found.extend(x if index == ALL else x[(index or 1) - 1 : (index or 1)])
                elif index in (None, ALL, 1):
                    found.append(x)
            values = found
            if not values:
                return EMPTY
        if records:
            index_of = rec.root
            return [index_of[id(v)] for v in values if isinstance(v, dict) and id(v) in index_of]
        out: list[str] = []
        for v in values:
            if isinstance(v, dict | list):
                raise _refuse("an object or array where a value is expected", label)
            t = _text(v)
            if t:
                out.append(t)
        return out

    return get
