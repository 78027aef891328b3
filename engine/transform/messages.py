"""Compile message maps: entries (which segment groups feed which resources), identities and references.

An entry makes one resource from the only ``segment:`` in its parent group, or one per ``each:`` segment.
A segment's *group* is the segment plus the ``members`` that follow it (an OBX and its NTEs); its *extent*
runs to the next segment of the same name and holds its children (an OBR and everything up to the next
OBR). ``within:`` names the parent entry; entries without one search the whole message.

A message map may ``extend`` another: its entries start as the parent's, fields it sets replace the
parent's, and its ``rules`` replace the parent's message-level rules element by element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.transform import fhirmodel, paths
from engine.transform.authority import AUTHORITY_COMPONENT
from engine.transform.compiler import CompiledMap, Resolver, Where, condition, did_you_mean
from engine.transform.conditions import Cond, text_reader
from engine.transform.library import Library, Source
from engine.transform.rules import Context, RefTarget, compile_steps, parse_all
from engine.transform.spec import Entry, IdentityRule, MessageMap, Reject
from engine.transform.steps import Steps


@dataclass
class IdentityAlt:
    """One way to find an entry's business identifier."""

    get: paths.Getter | None = None
    level: int = 1
    ident: CompiledMap | None = None
    keep: Cond | None = None
    when: Cond | None = None
    derive_up: int = 0  # derived: how many parents up the base identity is
    authority_field: str = ""  # where the assigning authority is read (PID-3.4), named when it is missing
    parts: list[tuple[paths.Getter, int]] = field(default_factory=list)
    readers: list[Callable[[paths.Env], str | None]] = field(default_factory=list)  # parts, as primitives


@dataclass
class RefPlan:
    keys: tuple[tuple[str, bool], ...]
    is_list: bool
    routes: list[tuple[int, tuple[str, ...]]]  # (levels up, entry names down)


@dataclass
class RejectRule:
    when: Cond
    field: str
    message: str
    code: str
    rule: str


@dataclass
class CompiledEntry:
    name: str
    segment: str
    each: bool
    parent: CompiledEntry | None
    members: frozenset[str]
    before: frozenset[str]
    claims: frozenset[str]
    required: bool
    resource_type: str
    rule: str
    when: Cond | None = None
    steps: Steps = field(default_factory=Steps)
    refs: list[RefPlan] = field(default_factory=list)
    identity: list[IdentityAlt] = field(default_factory=list)
    identity_field: str = ""
    leading: frozenset[str] = frozenset()  # segments directly before the entry's segment that belong to it
    create_only: bool = False  # `write: create`: POST + ifNoneExist instead of the conditional PUT
    rejects: list[RejectRule] = field(default_factory=list)
    children: list[CompiledEntry] = field(default_factory=list)
    pending_refs: list[RefTarget] = field(default_factory=list)

    def chain(self) -> list[CompiledEntry | None]:
        out: list[CompiledEntry | None] = []
        e: CompiledEntry | None = self
        while e is not None:
            out.append(e)
            e = e.parent
        out.append(None)
        return out


@dataclass
class MessageProgram:
    """A compiled message map."""

    name: str
    accepts: list[str]
    timezone: str | None
    roots: list[CompiledEntry]


@dataclass
class _Layered:
    """An entry as merged from a message map and the maps it extends."""

    layers: list[tuple[Entry, Where]]

    def get(self, attr: str) -> tuple[Any, Where]:
        for e, w in reversed(self.layers):
            if attr in e.model_fields_set:
                return getattr(e, attr), w.at(attr)
        e, w = self.layers[0]
        return getattr(e, attr), w

    def rules(self) -> dict[str, list[Any]]:
        merged: dict[str, list[Any]] = {}
        for e, w in self.layers:
            merged.update(parse_all(e.rules, w.at("rules")))
        return merged


def _entries(src: Source, sources: dict[str, Source], seen: tuple[str, ...] = ()) -> dict[str, _Layered]:
    mm: MessageMap = src.model
    out: dict[str, _Layered] = {}
    if mm.extends:
        parent = sources.get(mm.extends)
        w = src.where("extends")
        if parent is None or parent.kind != "messages":
            names = sorted(n for n, s in sources.items() if s.kind == "messages")
            raise w.error(f"unknown message map {mm.extends!r}{did_you_mean(mm.extends, names)}")
        if parent.name in seen:
            raise w.error(f"message map {src.name} extends itself")
        out = {k: _Layered(list(v.layers)) for k, v in _entries(parent, sources, (*seen, src.name)).items()}
    for name, entry in mm.resources.items():
        w = src.where("resources", name)
        out.setdefault(name, _Layered([])).layers.append((entry, w))
    return out


def compile_message(src: Source, library: Library) -> MessageProgram:
    compiled: dict[str, CompiledEntry] = {}
    roots: list[CompiledEntry] = []
    for name, layered in _entries(src, library.sources).items():
        entry = _entry(name, layered, compiled, library)
        compiled[name] = entry
        (entry.parent.children if entry.parent else roots).append(entry)
    if not roots and (src.model.resources or src.model.extends):
        # `resources: {}` written on its own says "nothing to deliver" (an ACK): the message is filtered.
        raise src.where("resources").error("a message map needs at least one entry")
    for entry in compiled.values():
        _refs(entry, compiled)
    mm: MessageMap = src.model
    return MessageProgram(src.name, mm.accepts, mm.timezone, roots)


def _entry(name: str, layered: _Layered, done: dict[str, CompiledEntry], library: Library) -> CompiledEntry:
    (seg, w_seg), (each, _w) = layered.get("segment"), layered.get("each")
    use, w_use = layered.get("use")
    w = layered.layers[-1][1]
    if not (seg or each) or not use:
        raise w.error("an entry needs `segment:` or `each:`, and `use:` (a segment map)")
    within, w_within = layered.get("within")
    parent = None
    if within is not None:
        parent = done.get(within)
        if parent is None:
            raise w_within.error(f"`within: {within}` must name an entry defined above")
    smap = library.sources.get(use)
    if smap is None or smap.kind != "segments":
        names = sorted(n for n, s in library.sources.items() if s.kind == "segments")
        raise w_use.error(f"unknown segment map {use!r}{did_you_mean(use, names)}")
    target = smap.model.target
    if not fhirmodel.is_resource(target):
        raise w_use.error(f"{use} makes a {target}, not a resource")
    segment = seg or each
    if smap.model.segment != segment:
        raise w_seg.error(f"{use} reads {smap.model.segment}, but this entry selects {segment}")
    members = frozenset(layered.get("members")[0])
    required = bool(layered.get("required")[0])
    ce = CompiledEntry(
        name,
        segment,
        bool(each),
        parent,
        members,
        frozenset(layered.get("before")[0]),
        frozenset({segment, *members}),
        required,
        target,
        f"{w.label} {name}",
    )
    resolver = Resolver(segment=segment, notation=getattr(library, "notation", None))
    when, w_when = layered.get("when")
    if when is not None:
        ce.when = condition(when, resolver, w_when)
    rules = _merged_rules(layered, smap)
    included = _included(layered, target, library)
    for inc in included:
        for t, more in inc.rules().items():
            rules[t] = rules.get(t, []) + more  # after the `use` map's: those win for single values
    ce.create_only = layered.get("write")[0] == "create"
    ce.leading = frozenset(layered.get("leading")[0])
    ce.claims = ce.claims | ce.leading
    ce.steps, ce.pending_refs = compile_steps(rules, Context(library, resolver, target, resource=True))
    ident, w_ident = layered.get("identity")
    if ident is None:
        ident, w_ident = smap.last("identity")
    if not ident:
        raise w.error(f"{target} from {use} has no identity (declare `identity:` in the segment or message map)")
    ce.identity = [_identity(r, w_ident.at(i), resolver, ce, library) for i, r in enumerate(ident)]
    first = ident[0]
    ce.identity_field = resolver.resolve(first.from_)[2] or segment if first.from_ else segment
    rejects = [(r, smap.last("reject")[1].at(i)) for i, r in enumerate(smap.last("reject")[0])]
    own_rejects, w_rej = layered.get("reject")
    rejects += [(r, w_rej.at(i)) for i, r in enumerate(own_rejects)]
    for inc in included:
        rejects += [(r, inc.last("reject")[1].at(i)) for i, r in enumerate(inc.last("reject")[0])]
    ce.rejects = [_reject(r, rw, resolver) for r, rw in rejects]
    return ce


def _included(layered: _Layered, target: str, library: Library) -> list[Source]:
    """The segment maps an entry ``include``s: other segments' rules for the same resource.

    Their paths are read like any other path of the entry (``RXR-1``: the group's RXR, else the message's).
    """
    names, w_inc = layered.get("include")
    out = []
    for i, name in enumerate(names):
        src = library.sources.get(name)
        if src is None or src.kind != "segments":
            known = sorted(n for n, s in library.sources.items() if s.kind == "segments")
            raise w_inc.at(i).error(f"unknown segment map {name!r}{did_you_mean(name, known)}")
        if src.model.target != target:
            raise w_inc.at(i).error(f"{name} makes a {src.model.target}, not a {target}")
        out.append(src)
    return out


def _merged_rules(layered: _Layered, smap: Source) -> dict[str, list[Any]]:
    """Message-level rules first (they win for single elements), then the segment map's."""
    own = layered.rules()
    base = smap.rules()
    omit, w_omit = layered.get("omit")
    for t in omit:
        if t not in base:
            raise w_omit.error(f"cannot omit {t!r}: {smap.name} has no rule for it")
        del base[t]
    merged = {t: own.get(t, []) + rules for t, rules in base.items()}
    merged.update({t: r for t, r in own.items() if t not in merged})
    return {t: r for t, r in merged.items() if r}


def _identity(r: IdentityRule, w: Where, resolver: Resolver, ce: CompiledEntry, library: Library) -> IdentityAlt:
    alt = IdentityAlt()
    if r.when is not None:
        alt.when = condition(r.when, resolver, w.at("when"))
    if r.derive is not None:
        chain = [e.name for e in ce.chain()[1:] if e is not None]
        parent = r.derive.parent or (chain[0] if chain else None)
        if parent not in chain:
            raise w.at("derive").error(
                f"a derived identity needs an enclosing entry ({', '.join(chain) or 'this entry has none'})"
            )
        alt.derive_up = chain.index(parent) + 1
        for p in r.derive.parts:
            try:
                get, level, _ = resolver.resolve(p)
            except ValueError as exc:
                raise w.at("derive").error(str(exc)) from None
            alt.parts.append((get, level))
            alt.readers.append(text_reader(get, level))
        return alt
    assert r.from_ is not None and r.use is not None
    try:
        alt.get, alt.level, label = resolver.resolve(r.from_)
    except ValueError as exc:
        raise w.error(str(exc)) from None
    if alt.level == 0:
        raise w.error("identity reads a field (a CX or EI), not a segment")
    alt.ident = library.datatype_map(r.use, alt.level, w)
    if alt.ident.target != "Identifier":
        raise w.error(f"identity map {r.use} makes {alt.ident.target}, not Identifier")
    component = AUTHORITY_COMPONENT.get(library.sources[r.use].model.datatype) if alt.level == 1 else None
    alt.authority_field = f"{label}.{component}" if label and component else label or ce.segment
    if r.where is not None:
        from engine.transform.compiler import RelativeResolver

        alt.keep = condition(r.where, RelativeResolver(paths.parse_segment_path(r.from_), resolver), w.at("where"))
    return alt


def _reject(r: Reject, w: Where, resolver: Resolver) -> RejectRule:
    return RejectRule(condition(r.when, resolver, w.at("when")), r.field, r.message, r.code, w.rule("reject"))


def _refs(ce: CompiledEntry, compiled: dict[str, CompiledEntry]) -> None:
    for ref in ce.pending_refs:
        el = ref.element
        routes = []
        for name, w in ref.names:
            other = compiled.get(name)
            if other is None or other is ce:
                raise w.error(f"`ref: {name}` must name another entry of this message map")
            allowed = el.references
            if allowed and "Resource" not in allowed and other.resource_type not in allowed:
                raise w.error(f"{el.name} may reference {', '.join(allowed)}, not {other.resource_type}")
            routes.append(_route(ce, other))
        ce.refs.append(RefPlan(ref.keys, el.is_list, routes))


def _route(src: CompiledEntry, dst: CompiledEntry) -> tuple[int, tuple[str, ...]]:
    mine = src.chain()
    theirs = dst.chain()
    for up, anc in enumerate(mine):
        if anc in theirs:
            down = theirs[: theirs.index(anc)]
            return up, tuple(e.name for e in reversed(down) if e is not None)
    raise AssertionError("entries always share the message root")


__all__ = ["CompiledEntry", "MessageProgram", "RefTarget", "compile_message"]
