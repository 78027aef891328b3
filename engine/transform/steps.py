"""Compiled steps: each fills one element of the object being made, from its rules, in order.

:class:`Steps` runs a map's steps into a dict. Work that does not depend on the message is done once, here:
each step becomes one closure for its kind (list, object merged from every rule, first value wins), and
steps gated on a value (``when: {in: {OBX-2: [NM, SN]}}`` on every rule) are filtered once per distinct
gate value, so an Observation runs only the value[x] steps of its value type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import TransformError
from engine.hl7v2 import Segment
from engine.transform.paths import Env

RuleFn = Callable[[Env], list[Any]]
Fill = Callable[[Env, dict[str, Any]], None]
PlanItem = tuple[int | None, Fill]  # (own field that must be non-empty, or None; the step)


@dataclass(slots=True)
class Step:
    """Fill one element (a dotted path) from its rules."""

    keys: tuple[tuple[str, bool], ...]  # (element, is_list) along the path
    is_list: bool
    rules: list[RuleFn]
    required: str | None = None  # field named when nothing is produced
    rule: str = ""
    merge_all: bool = False  # a single object element: every rule adds to it (earlier rules win per element)
    gate: Any = None  # (reader, memo key, values): the step runs only when the value is one of them
    own_field: int | None = None  # every rule reads this field of the current segment: skip when empty


def put(out: dict[str, Any], keys: tuple[tuple[str, bool], ...], value: Any) -> None:
    d = out
    for k, is_list in keys[:-1]:
        nxt = d.get(k)
        if nxt is None:
            nxt = {}
            d[k] = [nxt] if is_list else nxt
        elif is_list:
            nxt = nxt[0]
        d = nxt
    k = keys[-1][0]
    old = d.get(k)
    if old is None:
        d[k] = value
    elif isinstance(old, list) and isinstance(value, list):
        old.extend(value)
    elif isinstance(old, dict) and isinstance(value, dict):
        merge(old, value)


def merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add ``extra`` into ``into`` without overwriting what is there (nested objects merge)."""
    for k, v in extra.items():
        old = into.get(k)
        if old is None:
            into[k] = v
        elif isinstance(old, dict) and isinstance(v, dict):
            merge(old, v)


def _missing(step: Step) -> TransformError:
    return TransformError("required value is missing", field=step.required or "", rule=step.rule, code="101")


def _filler(step: Step) -> Fill:
    """One closure per step, specialised for its kind (the loop over steps is the hot path)."""
    keys, required = step.keys, step.required
    rules = tuple(step.rules)
    single = keys[0][0] if len(keys) == 1 else None
    if step.is_list and len(rules) == 1:
        (one,) = rules

        def fill_list_one(env: Env, out: dict[str, Any]) -> None:
            vals = one(env)  # a fresh list, or the shared empty one (never stored: it is falsy)
            if vals:
                if single is not None and out.get(single) is None:
                    out[single] = vals
                else:
                    put(out, keys, vals)
            elif required:
                raise _missing(step)

        return fill_list_one
    if step.is_list:

        def fill_list(env: Env, out: dict[str, Any]) -> None:
            vals: list[Any] = []
            for r in rules:
                vals += r(env)
            if vals:
                if single is not None and out.get(single) is None:
                    out[single] = vals
                else:
                    put(out, keys, vals)
            elif required:
                raise _missing(step)

        return fill_list
    if step.merge_all:

        def fill_merged(env: Env, out: dict[str, Any]) -> None:
            acc: dict[str, Any] | None = None
            for r in rules:
                got = r(env)
                if got:
                    if acc is None:
                        acc = got[0]
                    else:
                        merge(acc, got[0])
            if acc is not None:
                if single is not None and out.get(single) is None:
                    out[single] = acc
                else:
                    put(out, keys, acc)
            elif required:
                raise _missing(step)

        return fill_merged
    if len(rules) == 1:
        (only,) = rules

        def fill_one(env: Env, out: dict[str, Any]) -> None:
            got = only(env)
            if got:
                if single is not None and single not in out:
                    out[single] = got[0]
                else:
                    put(out, keys, got[0])
            elif required:
                raise _missing(step)

        return fill_one

    def fill_first(env: Env, out: dict[str, Any]) -> None:
        for r in rules:
            got = r(env)
            if got:
                if single is not None and single not in out:
                    out[single] = got[0]
                else:
                    put(out, keys, got[0])
                return
        if required:
            raise _missing(step)

    return fill_first


class Steps:
    """A map's compiled steps; :meth:`run` fills a dict from them."""

    __slots__ = ("_gates", "_plan_items", "_plans", "items", "plain")

    def __init__(self, items: Sequence[Step] = ()) -> None:
        self.items = list(items)
        fills = [_filler(s) for s in self.items]
        # A required step checks its own emptiness (it must raise); others are skipped on an empty own field.
        self._plan_items: list[PlanItem] = [
            (None if s.required else s.own_field, f) for s, f in zip(self.items, fills, strict=True)
        ]
        readers: dict[Any, tuple[Callable[[Env], Any], set[str]]] = {}
        for s in self.items:
            if s.gate is not None:
                reader, key, values = s.gate
                readers.setdefault(key, (reader, set()))[1].update(values)
        self._gates = tuple((key, reader, frozenset(vals)) for key, (reader, vals) in readers.items())
        self._plans: dict[tuple[Any, ...], list[PlanItem]] = {}
        self.plain = None if self._gates else self._plan_items

    def _plan(self, key: tuple[Any, ...]) -> list[PlanItem]:
        """The steps whose gate lets them run for these gate values (in order)."""
        got = dict(zip((g[0] for g in self._gates), key, strict=True))
        plan: list[PlanItem] = []
        for s, item in zip(self.items, self._plan_items, strict=True):
            if s.gate is None or got[s.gate[1]] in s.gate[2]:
                plan.append(item)
            elif s.required:
                plan.append((None, _refuse_missing(s)))
        self._plans[key] = plan
        return plan

    def run(self, env: Env, out: dict[str, Any]) -> dict[str, Any]:
        plan = self.plain
        if plan is None:
            # Values outside every gate's set are folded to None: the plans stay few and hold no message data.
            got = []
            for _k, reader, vals in self._gates:
                v = reader(env)
                got.append(v if v in vals else None)
            key = tuple(got)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(key)
        cur = env.cur
        fields = cur.fields if cur.__class__ is Segment else ()
        nf = len(fields)
        for of, fill in plan:
            if of is None or (of < nf and fields[of]):
                fill(env, out)
        return out


def _refuse_missing(step: Step) -> Fill:
    """A required step whose gate keeps it from running: nothing can fill it, the message is refused."""

    def refuse(env: Env, out: dict[str, Any]) -> None:
        raise _missing(step)

    return refuse
