"""Declarative conditions (``when:``, ``where:``, ``reject:``) compiled to ``env -> bool`` closures.

``present``/``absent`` test that a path has content (a value of only separators such as ``^^^`` is
absent); ``equals`` and ``in`` compare the first value's first component, unescaped and trimmed, with the
given text (exactly, case included); ``not``, ``all`` and ``any`` combine conditions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.hl7v2 import unescape
from engine.transform.paths import Env, Getter

if TYPE_CHECKING:
    from engine.transform.compiler import Resolver
    from engine.transform.spec import Condition

Cond = Callable[[Env], bool]


def _first(get: Getter, level: int) -> Callable[[Env], str | None]:
    """The first value's first component, read once per env (conditions often test the same field)."""

    def first(env: Env) -> str | None:
        memo = env.memo
        if memo is None:
            memo = env.memo = {}
        elif get in memo:
            return memo[get]
        vals = get(env)
        if not vals:
            memo[get] = None
            return None
        raw = vals[0]
        if level == 0:
            memo[get] = raw.name
            return raw.name
        d = env.run.d
        if level == 1 and d.component in raw:
            raw = raw.split(d.component, 1)[0]
        if level <= 2 and d.subcomponent in raw:
            raw = raw.split(d.subcomponent, 1)[0]
        if d.escape in raw:
            raw = unescape(raw, d)
        memo[get] = out = raw.strip()
        return out

    return first


def _present(get: Getter, level: int) -> Cond:
    if level == 0:
        return lambda env: bool(get(env))
    key = (get, "present")

    def present(env: Env) -> bool:
        memo = env.memo
        if memo is None:
            memo = env.memo = {}
        elif key in memo:
            return memo[key]
        d = env.run.d
        strip = d.component + d.subcomponent + d.repetition + " "
        memo[key] = out = any(v.strip(strip) for v in get(env))
        return out

    return present


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
    return lambda env: all(c(env) for c in conds)


def _or(conds: list[Cond]) -> Cond:
    if len(conds) == 1:
        return conds[0]
    if len(conds) == 2:
        a, b = conds
        return lambda env: a(env) or b(env)
    return lambda env: any(c(env) for c in conds)


def _equals(f: Callable[[Env], str | None], v: str) -> Cond:
    return lambda env: f(env) == v


def _in(f: Callable[[Env], str | None], s: frozenset[str]) -> Cond:
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
    return _first(get, level), get, values


def compile_condition(spec: Condition, resolver: Resolver) -> Cond:
    """Compile a Condition model; raises PathError/ValueError for a bad path or value."""
    if spec.present is not None or spec.absent is not None:
        get, level, _ = resolver.resolve(spec.present or spec.absent or "")
        test = _present(get, level)
        return test if spec.present is not None else (lambda env: not test(env))
    if spec.equals is not None:
        return _and([_equals(_first(*resolver.resolve(p)[:2]), _text(v)) for p, v in spec.equals.items()])
    if spec.in_ is not None:
        return _and(
            [_in(_first(*resolver.resolve(p)[:2]), frozenset(_text(v) for v in vs)) for p, vs in spec.in_.items()]
        )
    if spec.not_ is not None:
        inner = compile_condition(spec.not_, resolver)
        return lambda env: not inner(env)
    if spec.all is not None:
        return _and([compile_condition(c, resolver) for c in spec.all])
    assert spec.any is not None
    return _or([compile_condition(c, resolver) for c in spec.any])
