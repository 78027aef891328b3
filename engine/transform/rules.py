"""Turn validated rules into closures: ``rule(env) -> list`` of finished FHIR values.

A rule reads its source values (``from``/``value``/``build``, or a function's ``args``), keeps those its
``where`` accepts, converts each (``use`` / ``fn`` / ``table``, or as a primitive), drops empties, merges
``defaults`` and optionally ``join``s them. Conversion failures become TransformError naming the HL7 field
(the path's field, or the field a datatype value came from) and the rule (map, element, file:line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import TransformError
from engine.hl7v2 import Delimiters
from engine.transform import fhirmodel, paths
from engine.transform.compiler import (
    CompiledMap,
    RelativeResolver,
    Resolver,
    Where,
    check_constant,
    check_object,
    condition,
    deep_copy,
    finish_fn,
    lookup_function,
    parse_rules,
    primitive,
    resolve_target,
)
from engine.transform.conditions import gate
from engine.transform.dates import Invalid
from engine.transform.paths import EMPTY, Env
from engine.transform.spec import Rule
from engine.transform.steps import RuleFn, Step, Steps, merge
from engine.transform.tables import Table, Unmapped


class MapProvider(Protocol):
    """The compiled maps and tables rules refer to (implemented by the loader)."""

    def datatype_map(self, name: str, level: int, where: Where) -> CompiledMap: ...
    def segment_datatype_map(self, name: str, where: Where) -> CompiledMap: ...
    def table(self, name: str, where: Where) -> Table: ...


@dataclass
class Context:
    """What the rules of one map are compiled against."""

    library: MapProvider
    resolver: Resolver
    model: str  # the FHIR type being built
    resource: bool
    used: list[CompiledMap] = field(default_factory=list)  # maps applied by these rules


@dataclass
class RefTarget:
    """An element filled with references to other entries' resources (resolved per message)."""

    keys: tuple[tuple[str, bool], ...]
    element: fhirmodel.Element
    names: list[tuple[str, Where]]


Converter = Callable[[Env, Any], Any]


def compile_steps(rules: dict[str, list[tuple[Rule, Where]]], ctx: Context) -> tuple[Steps, list[RefTarget]]:
    """Compile target → rules (already parsed and merged) into steps and reference targets."""
    steps: list[Step] = []
    refs: list[RefTarget] = []
    for target, items in rules.items():
        w0 = items[0][1]
        keys, el = resolve_target(ctx.model, target, w0, resource=ctx.resource)
        ref_names = [(r.ref, w) for r, w in items if r.ref is not None]
        if ref_names:
            if el.type != "Reference" or (len(ref_names) != len(items) and not el.is_list):
                raise w0.error(
                    f"{target}: `ref` rules fill a Reference element and mix with other rules only when it repeats"
                )
            refs.append(RefTarget(keys, el, ref_names))
            items = [(r, w) for r, w in items if r.ref is None]  # the others add their references first
            if not items:
                continue
            w0 = items[0][1]
        compiled = [compile_rule(r, w, target, el, ctx) for r, w in items]
        required = next((_label(r, ctx) for r, _w in items if r.required), None)
        merge_all = not el.primitive and not el.is_list
        step = Step(keys, el.is_list, compiled, required, w0.rule(target), merge_all)
        try:
            step.gate = gate([r.when for r, _w in items], ctx.resolver)
        except ValueError:
            step.gate = None  # a bad path: the rule's own condition reports it at its line
        step.own_field = _own_field([r for r, _w in items], ctx.resolver.segment)
        steps.append(step)
    return Steps(steps), refs


def _own_field(rules: list[Rule], segment: str | None) -> int | None:
    """The one field of the current segment every rule reads from, if there is one."""
    found: set[int] = set()
    for r in rules:
        if r.from_ is None or segment is None:
            return None
        try:
            p = paths.parse_segment_path(r.from_)
        except ValueError:
            return None
        if p.segment != segment or p.seg_rep is not None or p.field is None or (p.segment == "MSH" and p.field < 3):
            return None
        found.add(p.field)
    return found.pop() if len(found) == 1 else None


def parse_all(rules: dict[str, Any], where: Where) -> dict[str, list[tuple[Rule, Where]]]:
    return {target: parse_rules(spec, where.at(target)) for target, spec in rules.items()}


def _label(rule: Rule, ctx: Context) -> str:
    if rule.from_:
        try:
            return ctx.resolver.resolve(rule.from_)[2] or rule.from_
        except ValueError:
            return rule.from_
    return "?"


def compile_rule(rule: Rule, w: Where, target: str, el: fhirmodel.Element, ctx: Context) -> RuleFn:
    label = w.rule(target)
    when = condition(rule.when, ctx.resolver, w.at("when")) if rule.when else None
    if rule.value is not None:
        produce = _constant(check_constant(rule.value, el, w), el)
        return _guarded_when(produce, when)
    if rule.build is not None:
        if el.primitive:
            raise w.error(f"{target} is a {el.type}: `build` makes objects")
        sub = CompiledMap(target, el.type, 0)
        sub.steps, refs = compile_steps(
            parse_all(rule.build, w.at("build")), Context(ctx.library, ctx.resolver, el.type, False, ctx.used)
        )
        if refs:
            raise w.error("`ref` is not allowed inside `build`")

        def build(env: Env) -> list[Any]:
            out = sub.steps.run(env, {})
            return [out] if out else []

        return _guarded_when(build, when)
    if rule.from_ is None:
        return _guarded_when(_fn_only(rule, w, el, ctx, label), when)
    try:
        get, level, field = ctx.resolver.resolve(rule.from_)
    except ValueError as exc:
        raise w.error(str(exc)) from None
    convert, produced = _converter(rule, w, level, field, el, ctx)
    plain = rule.use is None and rule.fn is None and rule.table is None
    if rule.join is not None and (produced not in ("string", "code") or not el.primitive):
        raise w.error("`join` joins text values into one string element")
    keep = None
    if rule.where is not None:
        try:
            sp: paths.SegmentPath | None = paths.parse_segment_path(rule.from_)
        except ValueError:
            sp = None  # a datatype path
        if sp is not None and level == 0:
            # Segments (OBX[*]): the condition's paths of that segment read each candidate segment.
            keep = condition(rule.where, Resolver(segment=sp.segment), w.at("where"))
        elif sp is None or sp.field is None or sp.component is not None:
            raise w.at("where").error("`where` filters the repetitions of a field path (PID-3[*]) or segments (OBX[*])")
        else:
            keep = condition(rule.where, RelativeResolver(sp, ctx.resolver), w.at("where"))
    defaults = rule.defaults
    add_defaults = None
    if defaults is not None:
        if el.primitive:
            raise w.error("`defaults` apply to objects")
        check_object(defaults, el.type, w.at("defaults"))
        add_defaults = _defaults(defaults)
    first_only = not el.is_list and rule.join is None
    joiner = rule.join

    def fail(exc: Exception, env: Env) -> TransformError:
        code = "103" if isinstance(exc, Unmapped) else "102"
        return TransformError(str(exc), field=field or env.field, rule=label, code=code)

    if first_only and keep is None and defaults is None and isinstance(get, paths.ComponentRead):
        return _fused_component(get.component, when, convert, plain, fail)
    if first_only and keep is None and defaults is None and isinstance(get, paths.OwnRead):
        return _fused_own(get.own, level, when, convert, plain, fail)

    get = paths.plain(get)
    if first_only and keep is None and defaults is None:

        def run_first(env: Env) -> list[Any]:
            vals = get(env)
            if not vals or (when is not None and not when(env)):
                return EMPTY
            try:
                for raw in vals:
                    x = convert(env, raw)
                    if x is not None and x != "":
                        return [x]
            except (Invalid, Unmapped) as exc:
                raise fail(exc, env) from None
            return EMPTY

        return run_first

    def run(env: Env) -> list[Any]:
        vals = get(env)
        if not vals or (when is not None and not when(env)):
            return EMPTY
        if keep is not None:
            vals = [v for v in vals if keep(Env(env.scope, v, env.field, env.run))]
        out: list[Any] = []
        try:
            for raw in vals:
                x = convert(env, raw)
                if x is None or x == "":
                    continue
                if add_defaults is not None:
                    add_defaults(x)
                if first_only:
                    return [x]
                out.append(x)
        except (Invalid, Unmapped) as exc:
            raise fail(exc, env) from None
        if joiner is not None:
            return [joiner.join(out)] if out else EMPTY
        return out

    return run


def _fused_component(
    spec: tuple[int, int | None, int],
    when: Callable[[Env], bool] | None,
    convert: Converter,
    plain: bool,
    fail: Callable[[Exception, Env], TransformError],
) -> RuleFn:
    """A datatype-map rule reading one component: read, test and convert in one closure (the hot path)."""
    comp, sub, base = spec
    level = base + 1 + (sub is not None)

    def run(env: Env) -> list[Any]:
        parts = env.parts
        d = env.run.d
        if parts is None:
            parts = env.parts = env.cur.split(d.component if base == 1 else d.subcomponent)
        if comp > len(parts):
            return EMPTY
        raw = parts[comp - 1]
        if sub is not None and raw:
            subs = raw.split(d.subcomponent)
            raw = subs[sub - 1] if sub <= len(subs) else ""
        if not raw or raw == paths.NULL or (when is not None and not when(env)):
            return EMPTY
        if plain:
            x = raw if raw.isalnum() else primitive(raw, level, d)
        else:
            try:
                x = convert(env, raw)
            except (Invalid, Unmapped) as exc:
                raise fail(exc, env) from None
        return [x] if x is not None and x != "" else EMPTY

    return run


def _fused_own(
    spec: tuple[int, int | None, int | None],
    level: int,
    when: Callable[[Env], bool] | None,
    convert: Converter,
    plain: bool,
    fail: Callable[[Exception, Env], TransformError],
) -> RuleFn:
    """A segment-map rule reading the current segment's first repetition: read, test, convert in one closure."""
    field, comp, sub = spec
    deep = comp is not None
    apply, label = getattr(convert, "map", (None, None))

    def run(env: Env) -> list[Any]:
        fields = env.cur.fields
        raw = fields[field] if field < len(fields) else ""
        if not raw:
            return EMPTY
        d = env.run.d
        if deep or d.repetition in raw:
            raw = paths.own_value(fields, field, comp, sub, d)
            if not raw:
                return EMPTY
        elif raw == paths.NULL:
            return EMPTY
        if when is not None and not when(env):
            return EMPTY
        if plain:
            x = raw if raw.isalnum() else primitive(raw, level, d)
        else:
            try:
                x = convert(env, raw) if apply is None else apply(env.scope, raw, label or env.field, env.run)
            except (Invalid, Unmapped) as exc:
                raise fail(exc, env) from None
        return [x] if x is not None and x != "" else EMPTY

    return run


def _defaults(defaults: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Merge constants into a produced object; flat ones (``{use: home}``) are set without copying."""
    if all(isinstance(v, str | int | float) for v in defaults.values()):
        flat = tuple(defaults.items())

        def add_flat(x: dict[str, Any]) -> None:
            for k, v in flat:
                if x.get(k) is None:
                    x[k] = v

        return add_flat
    fresh = deep_copy(defaults)
    return lambda x: merge(x, fresh())


def _guarded_when(produce: RuleFn, when: Callable[[Env], bool] | None) -> RuleFn:
    if when is None:
        return produce
    return lambda env: produce(env) if when(env) else []


def _constant(value: Any, el: fhirmodel.Element) -> RuleFn:
    make = deep_copy(value)
    if el.is_list:
        return lambda env: make()
    return lambda env: [make()]


def _converter(
    rule: Rule, w: Where, level: int, field: str | None, el: fhirmodel.Element, ctx: Context
) -> tuple[Converter, str]:
    """How one source value becomes one output value, and the FHIR type it has."""
    if rule.use is not None:
        if level == 0:
            m = ctx.library.segment_datatype_map(rule.use, w)
        else:
            m = ctx.library.datatype_map(rule.use, level, w)
        if el.type != m.target:
            raise w.error(f"map {rule.use} makes {m.target}, but {el.name} is {el.type}")
        ctx.used.append(m)
        apply = m.apply
        if field:
            via: Converter = lambda env, raw: apply(env.scope, raw, field, env.run)  # noqa: E731
        else:
            via = lambda env, raw: apply(env.scope, raw, env.field, env.run)  # noqa: E731
        via.map = (apply, field)  # type: ignore[attr-defined]  # lets a fused rule call the map directly
        return via, m.target
    if rule.fn is not None:
        f = lookup_function(rule.fn, w)
        if not fhirmodel.accepts(f.output, el):
            raise w.error(f"function {f.name} returns {f.output}, but {el.name} is {el.type}")
        finish = finish_fn(f, level, w)
        args = _args(rule, f, w, ctx)
        impl = f.impl
        if args:

            def call(env: Env, raw: Any) -> Any:
                return impl(env.run, finish(raw, env.run.d), **_call_args(args, env))

            return call, f.output
        if f.input == "primitive":
            finish = _primitive_at(level)
        if f.memo:

            def memo_call(env: Env, raw: Any) -> Any:
                run = env.run
                v = finish(raw, run.d)
                key = (impl, v)
                got = run.memo.get(key, EMPTY)
                if got is EMPTY:
                    got = run.memo[key] = impl(run, v)
                return got

            return memo_call, f.output
        return (lambda env, raw: impl(env.run, finish(raw, env.run.d))), f.output
    if level == 0:
        raise w.error("a segment becomes an element through a segment map (`use:`)")
    if rule.table is not None:
        tbl = ctx.library.table(rule.table, w)
        if el.type == "Coding":
            look: Callable[[str], Any] = tbl.coding
        elif el.type == "CodeableConcept":
            look = tbl.concept
        elif el.primitive and el.type in ("code", "string", "uri"):
            look = tbl.code
        else:
            raise w.error(f"a table gives a code, Coding or CodeableConcept, but {el.name} is {el.type}")

        def lookup(env: Env, raw: Any) -> Any:
            code = raw if raw.isalnum() else primitive(raw, level, env.run.d)
            return look(code) if code else None

        return lookup, el.type
    if not el.primitive or not fhirmodel.accepts("string", el):
        hint = " (use fn: date/datetime/decimal/…)" if el.primitive else " (use a map: `use:`)"
        raise w.error(f"{el.name} is {el.type}: a text value does not fit{hint}")
    return (lambda env, raw: raw if raw.isalnum() else primitive(raw, level, env.run.d)), "string"


def _primitive_at(level: int) -> Callable[[str, Delimiters], str]:
    return lambda raw, d: raw if raw.isalnum() else primitive(raw, level, d)


def _call_args(args: dict[str, Callable[[Env], Any]], env: Env) -> dict[str, Any]:
    kw = {}
    for k, a in args.items():
        kw[k] = a(env)
    return kw


def _args(rule: Rule, f: Any, w: Where, ctx: Context) -> dict[str, Callable[[Env], Any]]:
    out: dict[str, Callable[[Env], Any]] = {}
    for name, value in rule.args.items():
        p = f.params.get(name)
        if p is None:
            raise w.at("args", name).error(f"function {f.name} has no argument {name!r}")
        if p.kind == "table":
            tbl = ctx.library.table(str(value), w.at("args", name))
            out[name] = _const(tbl)
        elif p.kind == "path":
            try:
                get, level, _ = ctx.resolver.resolve(str(value))
            except ValueError as exc:
                raise w.at("args", name).error(str(exc)) from None
            out[name] = _first_primitive(get, level)
        else:
            out[name] = _const(value)
    missing = [n for n, p in f.params.items() if p.required and n not in out]
    if missing:
        raise w.error(f"function {f.name} needs argument(s) {', '.join(missing)}")
    return out


def _const(value: Any) -> Callable[[Env], Any]:
    """An argument that does not depend on the message (a table, a constant)."""
    return lambda env: value


def _first_primitive(get: paths.Getter, level: int) -> Callable[[Env], str | None]:
    get = paths.plain(get)

    def first(env: Env) -> str | None:
        vals = get(env)
        return (primitive(vals[0], level, env.run.d) or None) if vals else None

    return first


def _fn_only(rule: Rule, w: Where, el: fhirmodel.Element, ctx: Context, label: str) -> RuleFn:
    f = lookup_function(rule.fn or "", w)
    if f.input != "none":
        raise w.error(f"function {f.name} converts a `from:` value")
    if not fhirmodel.accepts(f.output, el):
        raise w.error(f"function {f.name} returns {f.output}, but {el.name} is {el.type}")
    args = _args(rule, f, w, ctx)
    impl = f.impl

    def run(env: Env) -> list[Any]:
        try:
            x = impl(env.run, None, **_call_args(args, env))
        except Invalid as exc:
            raise TransformError(str(exc), field=env.field, rule=label, code="102") from None
        return [x] if x not in (None, "") else []

    return run
