"""Compile mapping rules to closures, checking every name against the FHIR models and the registries.

A compiled rule is ``rule(env) -> list`` of finished FHIR values; a step (``steps``) fills one element from
its rules; a :class:`CompiledMap` runs its steps into a fresh dict. Everything that can be checked before
a message arrives is checked here, and reported as ``file:line: message``: unknown elements, functions,
tables and maps, paths that do not parse or reach too deep, and values of the wrong FHIR type.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from engine.config.yamlfile import YamlDoc
from engine.errors import ConfigError
from engine.hl7v2 import Delimiters, unescape
from engine.transform import fhirmodel, paths
from engine.transform.conditions import Cond, compile_condition
from engine.transform.functions import REGISTRY, Function
from engine.transform.paths import Env, Getter, primitive
from engine.transform.spec import Rule
from engine.transform.steps import Steps

_MISS = object()
Loc = tuple[str | int, ...]


def parts(raw: str, level: int, d: Delimiters) -> list[str]:
    """Every part of a composite value (first sub-component of each), unescaped and trimmed."""
    if level >= 3:
        return [primitive(raw, 3, d)]
    items = raw.split(paths.separator(d, level))
    if d.escape not in raw and (level == 2 or d.subcomponent not in raw):
        return [p.strip() for p in items]  # what primitive() gives for each, without a call per part
    return [primitive(p, level + 1, d) for p in items]


@dataclass(frozen=True, slots=True)
class Where:
    """Where a rule was written, for errors: the document and the location in it."""

    doc: YamlDoc
    loc: Loc
    label: str  # map name, for TransformError.rule

    def error(self, message: str) -> ConfigError:
        return self.doc.error(message, self.loc)

    def at(self, *more: str | int) -> Where:
        return Where(self.doc, (*self.loc, *more), self.label)

    def rule(self, target: str) -> str:
        # File name only: rule labels travel in NAKs to senders, which have no business with server paths.
        line = self.doc.line(self.loc)
        return f"{self.label}.{target} ({Path(self.doc.path).name}:{line})"


CACHE_LIMIT = 4096


class CompiledMap:
    """A datatype map, or a segment map producing a datatype: value → dict (or None when empty).

    A map marked ``cache: true`` (vocabulary: codes, units) that reads only its own value remembers its
    result per distinct input, delimiters and timezone, as JSON bytes, and hands out fresh copies; the
    cache is emptied when it reaches CACHE_LIMIT entries.
    """

    __slots__ = ("cache", "level", "name", "pure", "remember", "requires", "steps", "target")

    def __init__(self, name: str, target: str, level: int) -> None:
        self.name, self.target, self.level = name, target, level
        self.steps = Steps()
        self.requires: tuple[str, ...] = ()
        self.pure = True  # reads only its own value (and so may be cached)
        self.cache: dict[Any, Any] | None = None
        self.remember = target == "Identifier"  # identities re-read identifiers the rules already made

    def apply(self, scope: Any, cur: Any, field: str, run: Any) -> dict[str, Any] | None:
        cache = self.cache
        if cache is not None:
            key = (cur, run.dkey, run.tz)
            hit = cache.get(key, _MISS)
            if hit is not _MISS:
                return orjson.loads(hit) if hit is not None else None
        out: dict[str, Any] | None = self.steps.run(Env(scope, cur, field, run), {})
        if not out:
            out = None
        else:
            for k in self.requires:  # a loop, not any(): no generator per call (~30 calls per 8-OBX ORU)
                if k not in out:
                    out = None
                    break
        if cache is not None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = orjson.dumps(out) if out is not None else None  # a private, immutable copy
        elif self.remember and out is not None and self.pure:
            run.memo[(self, cur)] = out  # read-only reuse: later merges only add elements
        return out


class Resolver:
    """Turns a path string into (getter, level, field label) for the kind of map being compiled."""

    def __init__(
        self, *, segment: str | None = None, datatype: str | None = None, level: int = 1, notation: Any = None
    ) -> None:
        self.segment, self.datatype, self.level = segment, datatype, level
        #: the source-path notation of the input kind (None: HL7 v2; ``engine.transform.dicom.DicomNotation``)
        self.notation = notation
        self._cache: dict[str, tuple[Getter, int, str | None]] = {}
        self.reads_scope: str | None = None  # the first path that reads beyond the current value

    def resolve(self, text: str) -> tuple[Getter, int, str | None]:
        """One getter per path text, so conditions on the same field share their memo."""
        got = self._cache.get(text)
        if got is None:
            got = self._cache[text] = self._resolve(text)
        return got

    def _resolve(self, text: str) -> tuple[Getter, int, str | None]:
        if self.datatype and (dp := paths.parse_datatype_path(text, self.datatype)):
            return paths.datatype_getter(dp, self.level), dp.level(self.level), None
        if self.notation is not None:
            if self.reads_scope is None:
                self.reads_scope = text  # records are navigated at run time: never a cached map
            return self.notation.resolve(text, self.segment)
        sp = paths.parse_segment_path(text)
        if (sp.segment != self.segment or sp.seg_rep is not None) and self.reads_scope is None:
            self.reads_scope = text
        return paths.segment_getter(sp, self.segment), sp.level, sp.label


class RelativeResolver(Resolver):
    """Inside ``where``: paths under the filtered field read the current item (``PID-3.5`` of each PID-3)."""

    def __init__(self, base: paths.SegmentPath, outer: Resolver) -> None:
        super().__init__()
        self.base, self.outer = base, outer

    def resolve(self, text: str) -> tuple[Getter, int, str | None]:
        try:
            sp = paths.parse_segment_path(text)
        except paths.PathError:
            return self.outer.resolve(text)
        b = self.base
        if (sp.segment, sp.field) == (b.segment, b.field) and b.component is None and sp.component is not None:
            return paths.relative_getter(sp.component, sp.sub), 1 + (sp.sub is not None) + 1, sp.label
        return self.outer.resolve(text)


def condition(spec: Any, resolver: Resolver, where: Where) -> Cond:
    try:
        return compile_condition(spec, resolver)
    except ValueError as exc:  # PathError, or a value that is not text
        raise where.error(str(exc)) from None


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def resolve_target(
    model: str, dotted: str, where: Where, *, resource: bool
) -> tuple[tuple[tuple[str, bool], ...], fhirmodel.Element]:
    """Walk ``a.b.c`` through the FHIR model; ConfigError naming the unknown element."""
    keys: list[tuple[str, bool]] = []
    current = model
    el: fhirmodel.Element | None = None
    for i, name in enumerate(dotted.split(".")):
        if el is not None:
            if el.primitive:
                raise where.error(f"{current}.{name}: {el.name} is a primitive ({el.type}) and has no elements")
            current = el.type
        el = fhirmodel.element(current, name)
        if el is None or (resource and i == 0 and name in ("id", "resourceType")):
            hint = did_you_mean(name, fhirmodel.element_names(current))
            raise where.error(f"unknown FHIR element {current}.{name}{hint}")
        keys.append((name, el.is_list))
    assert el is not None
    return tuple(keys), el


def check_constant(value: Any, el: fhirmodel.Element, where: Where) -> Any:
    """Validate a constant for an element; return it as it will be written."""
    if el.is_list and not isinstance(value, list):
        value = [value]
    items = value if el.is_list else [value]
    for item in items:
        if el.primitive:
            ok = isinstance(item, bool) if el.type == "boolean" else isinstance(item, str | int | float)
            if not ok or (el.codes and item not in el.codes):
                allowed = f" (one of {', '.join(el.codes)})" if el.codes else ""
                raise where.error(f"constant is not a valid {el.type} for {el.name}{allowed}")
        else:
            check_object(item, el.type, where)
    return value


def check_object(value: Any, model: str, where: Where) -> None:
    """A constant object must fit the FHIR model (missing required elements are allowed: rules add them)."""
    if not isinstance(value, dict):
        raise where.error(f"a {model} constant must be a mapping")
    try:
        fhirmodel.model_class(model).model_validate(value)
    except ValidationError as exc:
        errs = [e for e in exc.errors(include_url=False) if e["type"] != "missing"]
        if errs:
            loc = ".".join(str(p) for p in errs[0]["loc"])
            raise where.error(f"invalid {model} constant at {loc or model}: {errs[0]['msg']}") from None


def finish_fn(f: Function, level: int, where: Where) -> Callable[[str, Delimiters], Any]:
    """How a raw source value is handed to a function."""
    if f.input == "primitive":
        if level == 0:
            raise where.error(f"function {f.name} reads a value, not a segment")
        return lambda raw, d: primitive(raw, level, d)
    if f.input == "parts":
        if level in (0, 3):
            raise where.error(f"function {f.name} reads a composite value (components)")
        return lambda raw, d: parts(raw, level, d)
    if f.input == "raw":
        return lambda raw, d: unescape(raw, d).strip() if d.escape in raw else raw.strip()
    raise where.error(f"function {f.name} takes no `from:` value (give its args only)")


def lookup_function(name: str, where: Where) -> Function:
    f = REGISTRY.get(name)
    if f is None:
        raise where.error(f"unknown function {name!r}{did_you_mean(name, sorted(REGISTRY))}")
    return f


def parse_rules(spec: Any, where: Where) -> list[tuple[Rule, Where]]:
    """A rule spec as written (string, mapping or list) → validated rules with their locations."""
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for i, item in enumerate(items):
        w = where.at(i) if isinstance(spec, list) else where
        if isinstance(item, str):
            out.append((Rule.model_validate({"from": item}), w))
        elif isinstance(item, dict):
            out.append((w.doc.validate(Rule, item, base=w.loc), w))
        else:
            raise w.error("a rule is a path string or a mapping (from/value/use/fn/table/ref/build…)")
    if not out:
        raise where.error("empty rule list")
    return out


def deep_copy(value: Any) -> Callable[[], Any]:
    """A maker of fresh copies of a constant (JSON objects are re-read from bytes: faster than copying)."""
    if isinstance(value, dict | list):
        frozen = orjson.dumps(value)
        return lambda: orjson.loads(frozen)
    return lambda: value
