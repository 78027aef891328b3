"""Declarative conditions (``when:``, ``where:``, ``reject:``) compiled to ``env -> bool`` closures.

``present``/``absent`` test that a path has content (a value of only separators such as ``^^^`` is
absent); ``equals`` and ``in`` compare the first value's first component, unescaped and trimmed, with the
given text (exactly, case included); ``unique`` holds when a field of the current segment has a value that
no other segment of that name in the message repeats (an OBX-21 two OBX share identifies neither);
``not``, ``all`` and ``any`` combine conditions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.hl7v2 import unescape
from engine.transform.paths import NULL, ComponentRead, Env, Getter, OwnRead, own_value, plain, primitive

if TYPE_CHECKING:
    from engine.transform.compiler import Resolver
    from engine.transform.spec import Condition

Cond = Callable[[Env], bool]


def _first(get: Getter, level: int) -> Callable[[Env], str | None]:
    """The first value's first component, read once per env (conditions often test the same field)."""
    if isinstance(get, ComponentRead):
        return _part_text(get, level)
    call = plain(get)

    def first(env: Env) -> str | None:
        memo = env.memo
        if memo is None:
            memo = env.memo = {}
        elif get in memo:
            return memo[get]
        vals = call(env)
        if not vals:
            memo[get] = None
            return None
        raw = vals[0]
        if level == 0:
            memo[get] = raw.name
            return raw.name
        memo[get] = out = primitive(raw, level, env.run.d)
        return out

    return first


def _own_raw(env: Env, field: int, comp: int | None, sub: int | None) -> str:
    """The current segment's own field (first repetition, component), read in place; ``""`` when empty."""
    fields = env.cur.fields
    raw = fields[field] if field < len(fields) else ""
    if not raw:
        return raw
    if comp is not None or env.run.d.repetition in raw:
        return own_value(fields, field, comp, sub, env.run.d)
    return "" if raw == NULL else raw


def _own_text(spec: tuple[int, int | None, int | None], level: int) -> Callable[[Env], str | None]:
    """:func:`_first` for the current segment's own field, read in place."""
    field, comp, sub = spec

    def first(env: Env) -> str | None:
        fields = env.cur.fields
        raw = fields[field] if field < len(fields) else ""
        if not raw:
            return None
        d = env.run.d
        if comp is not None or d.repetition in raw:
            raw = own_value(fields, field, comp, sub, d)
            if not raw:
                return None
        elif raw == NULL:
            return None
        return raw if raw.isalnum() else primitive(raw, level, d)

    return first


def _part_text(get: Getter, level: int) -> Callable[[Env], str | None]:
    """:func:`_first` for a component of a datatype value (split once per value: no memo needed)."""
    get = plain(get)

    def first(env: Env) -> str | None:
        vals = get(env)
        if not vals:
            return None
        raw = vals[0]
        d = env.run.d
        if level <= 2 and d.subcomponent in raw:
            raw = raw.split(d.subcomponent, 1)[0]
        if d.escape in raw:
            raw = unescape(raw, d)
        return raw.strip()

    return first


def text_reader(get: Getter, level: int) -> Callable[[Env], str | None]:
    """The first value's first component, unescaped and trimmed (None when empty)."""
    own = get.own if isinstance(get, OwnRead) else None
    return _own_text(own, level) if own is not None else _first(get, level)


def _own_read(spec: tuple[int, int | None, int | None], level: int, values: frozenset[str] | None, neg: bool) -> Cond:
    """A test of the current segment's own field, read in place (no memo: the read is as cheap as a look-up).

    ``values`` None: is the value present; else: is its first component (unescaped, trimmed) one of them.
    ``neg`` inverts the answer (``absent``, ``not: {in: …}``).
    """
    field, comp, sub = spec

    def test(env: Env) -> bool:
        # _own_raw and primitive's first test inlined: the most frequent call of a mapping (~90 per 8-OBX ORU)
        fields = env.cur.fields
        raw = fields[field] if field < len(fields) else ""
        if not raw:
            return neg
        run = env.run
        if comp is not None or run.d.repetition in raw:
            raw = own_value(fields, field, comp, sub, run.d)
            if not raw:
                return neg
        elif raw == NULL:
            return neg
        if values is None:
            return bool(raw.strip(run.blank)) is not neg
        return ((raw if raw.isalnum() else primitive(raw, level, run.d)) in values) is not neg

    return test


def _present(get: Getter, level: int, neg: bool = False) -> Cond:
    own = get.own if isinstance(get, OwnRead) else None
    if own is not None:
        return _own_read(own, level, None, neg)
    if isinstance(get, ComponentRead):
        read = get.fn

        def present_part(env: Env) -> bool:
            vals = read(env)
            return bool(vals and vals[0].strip(env.run.blank)) is not neg

        return present_part
    if neg:
        inner = _present(get, level)
        return lambda env: not inner(env)
    call = plain(get)
    if level == 0:
        return lambda env: bool(call(env))
    key = (get, "present")

    def present(env: Env) -> bool:
        memo = env.memo
        if memo is None:
            memo = env.memo = {}
        elif key in memo:
            return memo[key]
        blank = env.run.blank
        out = False
        for v in call(env):  # a loop, not any(): no generator per call
            if v.strip(blank):
                out = True
                break
        memo[key] = out
        return out

    return present


def _unique(get: Getter, segment: str | None) -> Cond:
    """``unique``: the current segment's field has a value and no other ``segment`` of the message repeats it.

    The values of every such segment are counted once per message (run.memo), so n OBX cost n reads.
    """
    own = get.own if isinstance(get, OwnRead) else None
    if own is None or segment is None:
        raise ValueError("`unique` takes a field of the current segment (OBX-21)")
    key = ("unique", segment, own)

    def unique(env: Env) -> bool:
        raw = _own_raw(env, *own)
        if not raw.strip(env.run.blank):
            return False
        counts = env.run.memo.get(key)
        if counts is None:
            counts = {}
            d = env.run.d
            for s in env.run.all(segment):
                v = own_value(s.fields, *own, d)
                counts[v] = counts.get(v, 0) + 1
            env.run.memo[key] = counts
        return bool(counts.get(raw, 0) == 1)

    return unique


def _text(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError("a condition value must be text (quote yes/no/on/off)")
    return str(v)


def _and(conds: list[Cond]) -> Cond:
    if len(conds) == 1:
        return conds[0]
    if len(conds) == 2:
        a, b = conds
        return lambda env: a(env) and b(env)
    if len(conds) == 3:
        a, b, c = conds
        return lambda env: a(env) and b(env) and c(env)
    every = tuple(conds)

    def all_of(env: Env) -> bool:
        for c in every:  # noqa: SIM110  # a loop: no generator per call on the hot path
            if not c(env):
                return False
        return True

    return all_of


def _or(conds: list[Cond]) -> Cond:
    if len(conds) == 1:
        return conds[0]
    if len(conds) == 2:
        a, b = conds
        return lambda env: a(env) or b(env)
    some = tuple(conds)

    def any_of(env: Env) -> bool:
        for c in some:  # noqa: SIM110
            if c(env):
                return True
        return False

    return any_of


def _in(get: Getter, level: int, s: frozenset[str], neg: bool = False) -> Cond:
    """``equals`` (one value) and ``in``: the first value's first component is one of ``s``."""
    own = get.own if isinstance(get, OwnRead) else None
    if own is not None:
        return _own_read(own, level, s, neg)
    f = _first(get, level)
    if neg:
        return lambda env: f(env) not in s
    return lambda env: f(env) in s


def implied(spec: Condition) -> dict[str, frozenset[str]]:
    """Path → the values a path must hold for ``spec`` to be true (from equals/in, through all)."""
    if spec.equals is not None:
        return {p: frozenset([_text(v)]) for p, v in spec.equals.items()}
    if spec.in_ is not None:
        return {p: frozenset(_text(v) for v in vs) for p, vs in spec.in_.items()}
    if spec.all is not None:
        out: dict[str, frozenset[str]] = {}
        for c in spec.all:
            for p, vals in implied(c).items():
                out[p] = out[p] & vals if p in out else vals
        return out
    return {}


Gate = tuple[Callable[[Env], "str | None"], Getter, frozenset[str]]


def gate(conds: list[Condition | None], resolver: Resolver) -> Gate | None:
    """A cheap pre-check for a step whose every rule requires some path to hold one of some values.

    Returns (first-value reader, its memo key, the values that let the step run).
    """
    if not conds or any(c is None for c in conds):
        return None
    maps = [implied(c) for c in conds if c is not None]
    common = set(maps[0]).intersection(*maps[1:])
    if not common:
        return None
    path = sorted(common)[0]
    values = frozenset().union(*(m[path] for m in maps))
    get, level, _ = resolver.resolve(path)
    return text_reader(get, level), get, values


def _leaf(spec: Condition, resolver: Resolver, neg: bool) -> Cond | None:
    """A test of one path (present, absent, equals or in on a single path), inverted when ``neg``."""
    if spec.present is not None or spec.absent is not None:
        get, level, _ = resolver.resolve(spec.present or spec.absent or "")
        return _present(get, level, neg if spec.present is not None else not neg)
    tests = spec.equals if spec.equals is not None else spec.in_
    if tests is None or len(tests) != 1:
        return None
    ((p, vs),) = tests.items()
    values = (
        frozenset([_text(vs)])
        if spec.equals is not None
        else frozenset(map(_text, vs if isinstance(vs, list) else [vs]))
    )
    return _in(*resolver.resolve(p)[:2], values, neg)


def compile_condition(spec: Condition, resolver: Resolver) -> Cond:
    """Compile a Condition model; raises PathError/ValueError for a bad path or value."""
    leaf = _leaf(spec, resolver, False)
    if leaf is not None:
        return leaf
    if spec.unique is not None:
        return _unique(resolver.resolve(spec.unique)[0], resolver.segment)
    if spec.equals is not None:
        return _and([_in(*resolver.resolve(p)[:2], frozenset([_text(v)])) for p, v in spec.equals.items()])
    if spec.in_ is not None:
        return _and([_in(*resolver.resolve(p)[:2], frozenset(_text(v) for v in vs)) for p, vs in spec.in_.items()])
    if spec.not_ is not None:
        inner = _leaf(spec.not_, resolver, True)
        if inner is not None:
            return inner
        inner = compile_condition(spec.not_, resolver)
        return lambda env: not inner(env)
    if spec.all is not None:
        return _and([compile_condition(c, resolver) for c in spec.all])
    assert spec.any is not None
    return _or([compile_condition(c, resolver) for c in spec.any])
