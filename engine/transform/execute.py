"""Run a compiled message map over one parsed message: segment groups → resource instances.

Pure and thread-safe: everything mutable lives in the :class:`Run` and the instances made for this message.
Path look-ups walk up the groups: a segment name is answered by the innermost group that *claims* it (its
own segment and ``members``), else by the whole message (first occurrence), so an OBX's ``NTE[*]`` are its
own notes, ``OBR-7`` is its report's, and ``MSH-9.2`` is the message's.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from engine.errors import TransformError
from engine.hl7v2 import Message, Segment
from engine.transform.authority import Identifiers, default_system
from engine.transform.messages import CompiledEntry, IdentityAlt, MessageProgram
from engine.transform.paths import Env
from engine.transform.tables import Table

_UNSET: Any = object()


class Run:
    """Per-message state: delimiters, default timezone, segment positions, default identifier system."""

    __slots__ = (
        "_default",
        "blank",
        "d",
        "dkey",
        "identifiers",
        "index",
        "memo",
        "message",
        "segments",
        "systems",
        "tz",
    )

    def __init__(
        self, message: Message, tz: tzinfo, identifiers: Identifiers | None = None, systems: Table | None = None
    ) -> None:
        self.memo: dict[Any, Any] = {}  # function results for this message (dates repeat across OBX)
        self.message = message
        self.segments = message.segments
        self.d = message.delimiters
        self.dkey = self.d.field + self.d.encoding_characters  # hashable, for caches
        self.blank = self.d.component + self.d.subcomponent + self.d.repetition + " "  # a value of only these is absent
        self.tz = tz
        self.identifiers = identifiers
        self.systems = systems
        self._default = _UNSET
        index: dict[str, list[int]] = {}
        for i, s in enumerate(self.segments):
            index.setdefault(s.name, []).append(i)
        self.index = index

    def all(self, name: str) -> list[Segment]:
        return [self.segments[i] for i in self.index.get(name, ())]

    def default_system(self) -> str | None:
        """The system of identities sent without an assigning authority (resolved once, when first needed)."""
        if self._default is _UNSET:
            self._default = default_system(self.identifiers, self.message.header, self.systems)
        return self._default


class Instance:
    """One resource being made (or the message root), with its segment group."""

    __slots__ = (
        "children",
        "derived",
        "end",
        "entry",
        "filled",
        "full_url",
        "identity",
        "own",
        "parent",
        "resource",
        "run",
        "start",
    )

    def __init__(self, entry: CompiledEntry | None, parent: Instance | None, run: Run, start: int, end: int) -> None:
        self.entry = entry
        self.parent = parent
        self.run = run
        self.start, self.end = start, end
        self.own: dict[str, list[Segment]] = {}
        self.children: dict[str, list[Instance]] = {}
        self.resource: dict[str, Any] = {}
        self.identity: tuple[str, str] = ("", "")
        self.filled = False  # the identity's system is the channel's default (the sender gave no authority)
        self.full_url = ""
        self.derived: dict[str, int] | None = None  # derived identities of children, for repeats

    def find(self, name: str) -> list[Segment]:
        s: Instance | None = self
        while s is not None and s.entry is not None:
            if name in s.entry.claims:
                return s.own.get(name, [])
            s = s.parent
        return self.run.all(name)


def run_program(
    program: MessageProgram,
    message: Message,
    tz: tzinfo,
    identifiers: Identifiers | None = None,
    systems: Table | None = None,
) -> list[Instance]:
    """Make every instance of the program; returns them in output order (pre-order)."""
    run = Run(message, tz, identifiers, systems)
    root = Instance(None, None, run, 0, len(run.segments))
    made: list[Instance] = []
    for entry in program.roots:
        _instantiate(entry, root, made)
    return made


def _positions(entry: CompiledEntry, parent: Instance) -> list[int]:
    run = parent.run
    if parent.entry is not None and parent.entry.segment == entry.segment:
        return [parent.start]  # a second resource from the parent's own segment (OBR → its ServiceRequest)
    pos = [i for i in run.index.get(entry.segment, ()) if parent.start <= i < parent.end]
    if entry.before:
        stop = min(
            (i for n in entry.before for i in run.index.get(n, ()) if parent.start <= i < parent.end),
            default=parent.end,
        )
        pos = [i for i in pos if i < stop]
    if pos and parent.entry is not None and pos[0] == parent.start:
        pos = pos[1:]  # a group never contains its own start segment again
    return pos


def _instantiate(entry: CompiledEntry, parent: Instance, made: list[Instance]) -> None:
    run = parent.run
    pos = _positions(entry, parent)
    if not pos:
        if entry.required:
            raise TransformError(
                f"required segment {entry.segment} is missing", field=entry.segment, rule=entry.rule, code="100"
            )
        return
    if not entry.each and len(pos) > 1:
        raise TransformError(
            f"more than one {entry.segment} segment where one is expected",
            field=entry.segment,
            rule=entry.rule,
            code="100",
        )
    segs = run.segments
    for n, p in enumerate(pos):
        end = pos[n + 1] if n + 1 < len(pos) else parent.end
        inst = Instance(entry, parent, run, p, end)
        own = inst.own
        own[entry.segment] = [segs[p]]
        i = p + 1
        while i < end and segs[i].name in entry.members:
            own.setdefault(segs[i].name, []).append(segs[i])
            i += 1
        i = p - 1
        while i >= 0 and segs[i].name in entry.leading:  # ORU_R01: the ORC just before its OBR
            own.setdefault(segs[i].name, []).insert(0, segs[i])
            i -= 1
        env = Env(inst, segs[p], entry.segment, run)
        if entry.when is not None and not entry.when(env):
            continue
        for rej in entry.rejects:
            if rej.when(env):
                raise TransformError(rej.message, field=rej.field, rule=rej.rule, code=rej.code)
        inst.resource = entry.steps.run(env, {"resourceType": entry.resource_type})
        inst.identity = _identity(entry, inst, env)
        parent.children.setdefault(entry.name, []).append(inst)
        made.append(inst)
        for child in entry.children:
            _instantiate(child, inst, made)


def _identity(entry: CompiledEntry, inst: Instance, env: Env) -> tuple[str, str]:
    for alt in entry.identity:
        if alt.when is not None and not alt.when(env):
            continue
        got = _derived(alt, inst, env) if alt.ident is None else _identifier(alt, inst, env)
        if got:
            return got
    raise TransformError(
        f"no business identifier for the {entry.resource_type} (identity rule)",
        field=entry.identity_field,
        rule=entry.rule,
        code="101",
    )


def _identifier(alt: IdentityAlt, inst: Instance, env: Env) -> tuple[str, str] | None:
    assert alt.get is not None and alt.ident is not None
    for raw in alt.get(env):
        if alt.keep is not None and not alt.keep(Env(inst, raw, env.field, env.run)):
            continue
        ident = env.run.memo.get((alt.ident, raw)) or alt.ident.apply(inst, raw, env.field, env.run)
        if ident and ident.get("value"):
            system = ident.get("system")
            if not system:
                system = env.run.default_system()
                if not system:
                    assert inst.entry is not None
                    raise TransformError(
                        f"assigning authority is empty and the channel declares no default for this sender "
                        f"(identifiers:): a {inst.entry.resource_type} keyed on the value alone could be "
                        "another facility's",
                        field=alt.authority_field,
                        rule=inst.entry.rule,
                        code="101",
                    )
                inst.filled = True
            return system, ident["value"]
    return None


def _derived(alt: IdentityAlt, inst: Instance, env: Env) -> tuple[str, str] | None:
    base: Instance | None = inst
    for _ in range(alt.derive_up):
        base = base.parent if base is not None else None
    if base is None or not base.identity[1]:
        return None
    value = first = base.identity[1]
    for read in alt.readers:
        part = read(env)
        if part:
            value += "/" + part
    if value is first:
        return None
    # The n-th result with the same code and sub-id under one report gets "/#n" (stable across resends).
    parent = inst.parent
    if parent is not None:
        seen = parent.derived
        if seen is None:
            seen = parent.derived = {}
        n = seen[value] = seen.get(value, 0) + 1
        if n > 1:
            value = f"{value}/#{n}"
    return base.identity[0], value
