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
    def first(env: Env) -> str | None:
        vals = get(env)
        if not vals:
            return None
        raw = vals[0]
        if level == 0:
            return raw.name
        d = env.run.d
        if level == 1 and d.component in raw:
            raw = raw.split(d.component, 1)[0]
        if level <= 2 and d.subcomponent in raw:
            raw = raw.split(d.subcomponent, 1)[0]
        if d.escape in raw:
            raw = unescape(raw, d)
        return raw.strip()

    return first


def _present(get: Getter, level: int) -> Cond:
    if level == 0:
        return lambda env: bool(get(env))

    def present(env: Env) -> bool:
        d = env.run.d
        strip = d.component + d.subcomponent + d.repetition + " "
        return any(v.strip(strip) for v in get(env))

    return present


def _text(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError("a condition value must be text (quote yes/no/on/off)")
    return str(v)


def compile_condition(spec: Condition, resolver: Resolver) -> Cond:
    """Compile a Condition model; raises PathError/ValueError for a bad path or value."""
    if spec.present is not None or spec.absent is not None:
        get, level, _ = resolver.resolve(spec.present or spec.absent or "")
        test = _present(get, level)
        return test if spec.present is not None else (lambda env: not test(env))
    if spec.equals is not None:
        pairs = [(_first(*resolver.resolve(p)[:2]), _text(v)) for p, v in spec.equals.items()]
        return lambda env: all(f(env) == v for f, v in pairs)
    if spec.in_ is not None:
        sets = [(_first(*resolver.resolve(p)[:2]), frozenset(_text(v) for v in vs)) for p, vs in spec.in_.items()]
        return lambda env: all(f(env) in s for f, s in sets)
    if spec.not_ is not None:
        inner = compile_condition(spec.not_, resolver)
        return lambda env: not inner(env)
    if spec.all is not None:
        conds = [compile_condition(c, resolver) for c in spec.all]
        return lambda env: all(c(env) for c in conds)
    assert spec.any is not None
    conds = [compile_condition(c, resolver) for c in spec.any]
    return lambda env: any(c(env) for c in conds)
