"""What a mapping drops: the fields (and components) of the input that no rule of a message map reads.

    reads = message_reads(sources, "ADT_A01")           # every (segment, field, component) a rule may read
    unread(message, reads)                               # ["PID-9", "PV1-7.3", …] sent but never read

The reads are found statically, from the map files: every path of every rule, condition, identity,
``reject`` and function argument of the message map's entries, through the segment and datatype maps they
``use`` and ``include`` (a datatype map read at PID-11 reads PID-11.1, PID-11.3…; a plain value or a
table reads the first component; a function of the whole value — ``parts``, ``raw`` — reads every
component). Fields the engine itself reads (:data:`ALWAYS_READ`: MSH-3/4/7/9/10/12/15/16/18, EVN-2) count
as read.

:func:`unread` compares one message with them: a field sent (non-empty, any repetition) that is never read
is reported as ``PID-9``; a field read only in some components reports each other component sent
(``PID-11.8``). Names of places only, never values. ``interlink test --unmapped`` runs it on the
sibling-test messages of every message map, per message type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.hl7v2 import Message
from engine.transform.functions import REGISTRY
from engine.transform.library import Source
from engine.transform.paths import NULL, parse_segment_path
from engine.transform.rules import parse_all
from engine.transform.spec import Condition, Rule

_DATATYPE = re.compile(r"^(?P<dt>[A-Z][A-Z0-9]{1,3})(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?$")
WHOLE = 0  # a component number meaning "every component"
#: Read by the engine rather than by a map: the delimiters, the sender (default authorities, duplicates), the
#: message type (which map), its time (EVN-2, else MSH-7: the stale-write guard), control ID, version,
#: acknowledgment modes and character set.
ALWAYS_READ = {
    *(("MSH", n, WHOLE) for n in (1, 2, 3, 4, 7, 9, 10, 12, 15, 16, 18)),
    ("EVN", 2, WHOLE),
}

Loc = tuple[str, int | None, int | None]  # (segment, field or None for the whole segment, component or None)


@dataclass
class Reads:
    """(segment, field, component) triples; component WHOLE means the whole field."""

    items: set[tuple[str, int, int]] = field(default_factory=lambda: set(ALWAYS_READ))
    segments: set[str] = field(default_factory=set)  # segments read whole (by a segment map)

    def add(self, loc: Loc, whole: bool) -> None:
        seg, fld, comp = loc
        if fld is None:
            self.segments.add(seg)
            return
        if whole:
            self.items.add((seg, fld, WHOLE if comp is None else comp))
        else:
            self.items.add((seg, fld, 1 if comp is None else comp))  # a primitive reads the first component

    def reads(self, seg: str, fld: int, comp: int | None = None) -> bool:
        if (seg, fld, WHOLE) in self.items:
            return True
        if comp is None:
            return any(s == seg and f == fld for s, f, _c in self.items)
        return (seg, fld, comp) in self.items


class _Walker:
    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources
        self.reads = Reads()
        self._seen: set[tuple[str, Loc]] = set()

    def path(self, text: str, here: Loc, datatype: str | None) -> Loc:
        """Where a path points: a datatype path relative to the current value, else a segment path."""
        m = _DATATYPE.match(text)
        if datatype and m and m["dt"] == datatype:
            seg, fld, comp = here
            if m["comp"] and comp is None:
                return seg, fld, int(m["comp"])
            return here
        sp = parse_segment_path(text)
        return sp.segment, sp.field, sp.component

    def condition(self, c: Condition | None, here: Loc, datatype: str | None) -> None:
        if c is None:
            return
        for p in filter(None, [c.present, c.absent, c.unique]):
            self.reads.add(self.path(p, here, datatype), whole=False)
        for d in (c.equals or {}, c.in_ or {}):
            for p in d:
                self.reads.add(self.path(p, here, datatype), whole=False)
        for sub in [c.not_, *(c.all or []), *(c.any or [])]:
            self.condition(sub, here, datatype)

    def rules(self, rules: dict[str, list[tuple[Rule, Any]]], here: Loc, datatype: str | None) -> None:
        for items in rules.values():
            for r, w in items:
                self.rule(r, w, here, datatype)

    def rule(self, r: Rule, w: Any, here: Loc, datatype: str | None) -> None:
        self.condition(r.when, here, datatype)
        if r.build is not None:
            self.rules(parse_all(r.build, w.at("build")), here, datatype)
        f = REGISTRY.get(r.fn or "")
        if f is not None:
            for name, value in r.args.items():
                if f.params[name].kind == "path":
                    self.reads.add(self.path(str(value), here, datatype), whole=False)
        if r.from_ is None:
            return
        loc = self.path(r.from_, here, datatype)
        self.condition(r.where, loc if loc[1] is not None else here, None)
        if r.use is not None:
            self.use(r.use, loc)
        elif f is not None and f.input in ("parts", "raw"):
            self.reads.add(loc, whole=True)
        else:
            self.reads.add(loc, whole=False)

    def use(self, name: str, loc: Loc) -> None:
        key = (name, loc)
        if key in self._seen:
            return
        self._seen.add(key)
        src = self.sources[name]
        if loc[1] is None:  # a segment map applied to a segment
            self.segment_map(src, loc[0])
            return
        if loc[2] is not None:
            self.reads.add(loc, whole=False)  # a datatype within a component: that component is read
        self.rules(src.rules(), loc, src.model.datatype)

    def segment_map(self, src: Source, segment: str) -> None:
        here: Loc = (segment, None, None)
        self.rules(src.rules(), here, None)
        for rej in src.last("reject")[0]:
            self.condition(rej.when, here, None)
        for ident in src.last("identity")[0]:
            self.identity(ident, here)

    def identity(self, ident: Any, here: Loc) -> None:
        self.condition(ident.when, here, None)
        if ident.from_ is not None and ident.use is not None:
            self.use(ident.use, self.path(ident.from_, here, None))
        if ident.derive is not None:
            for p in ident.derive.parts:
                self.reads.add(self.path(p, here, None), whole=False)


def message_reads(sources: dict[str, Source], name: str) -> Reads:
    """Everything the message map ``name`` (with the maps it extends, uses and includes) may read."""
    walker = _Walker(sources)
    chain = []
    src: Source | None = sources[name]
    while src is not None:
        chain.append(src)
        src = sources.get(src.model.extends) if src.model.extends else None
    for msrc in reversed(chain):
        for key, entry in msrc.model.resources.items():
            segment = entry.segment or entry.each
            here: Loc = (segment, None, None)
            w = msrc.where("resources", key)
            walker.condition(entry.when, here, None)
            walker.rules(parse_all(entry.rules, w.at("rules")), here, None)
            for rej in entry.reject:
                walker.condition(rej.when, here, None)
            for ident in entry.identity or []:
                walker.identity(ident, here)
            for name_ in [entry.use, *getattr(entry, "include", [])]:
                if name_ and name_ in sources:
                    walker.segment_map(sources[name_], segment)
    return walker.reads


def unread(message: Message, reads: Reads) -> list[str]:
    """The places (``PID-9``, ``PV1-7.3``) sent in this message that no rule reads, in message order."""
    d = message.delimiters
    out: list[str] = []
    for seg in message.segments:
        for n in range(1, len(seg.fields)):
            raw = seg.fields[n]
            if not raw or raw == NULL or (seg.name == "MSH" and n <= 2):
                continue
            if not reads.reads(seg.name, n):
                if raw.strip(d.component + d.subcomponent + d.repetition + " "):
                    out.append(f"{seg.name}-{n}")
                continue
            for rep in raw.split(d.repetition):
                for c, comp in enumerate(rep.split(d.component), start=1):
                    if comp and comp != NULL and comp.strip(d.subcomponent + " ") and not reads.reads(seg.name, n, c):
                        out.append(f"{seg.name}-{n}.{c}")
    return list(dict.fromkeys(out))


def by_message_type(mappings: Any, cases: list[Any]) -> dict[str, tuple[int, dict[str, int]]]:
    """Per message type (MSH-9 code^trigger) of the sibling-test messages: how many messages, and for each
    place sent but never read, in how many of them. ``mappings``: a MappingSet; ``cases``: test cases."""
    from engine import hl7v2
    from engine.errors import HL7Error
    from engine.transform.library import read_sources
    from engine.transform.testing import load_message

    sources = read_sources(mappings.roots)
    reads: dict[str, Reads] = {}
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for c in cases:
        if c.case is None:
            continue
        try:
            message = hl7v2.Message.parse(load_message(c.case, c.base))
        except (HL7Error, OSError, ValueError):
            continue
        name = c.case.mapping or mappings.mapping_for(message)
        if name is None or name not in sources:
            continue
        if name not in reads:
            reads[name] = message_reads(sources, name)
        key = f"{message.message_type} ({name})"
        n, counts = out.get(key, (0, {}))
        for place in unread(message, reads[name]):
            counts[place] = counts.get(place, 0) + 1
        out[key] = (n + 1, counts)
    return dict(sorted(out.items()))
