"""The reference evaluator: the mapping language's executable definition, written plainly and slowly.

The compiler (``compiler``, ``rules``, ``steps``, ``conditions``, ``paths``, ``messages``, ``execute``) turns
maps into hand-fused closures: reads fused with conversions, steps skipped by gates and empty own fields,
cached datatype maps, memoised dates. This module evaluates the same mapping files directly from their
models, one rule at a time, with none of that, so that what a map *means* can be read in one place and
the fast path can be checked against it (``tests/transform/test_reference.py``: identical bundles and
identical refusals on every corpus message and every sibling test).

    ref = Reference(Path("mappings"))
    bundle = ref.transform(message, identifiers=channel.identifiers)   # == MappingSet.transform(..., "off")

Shared with the fast path, on purpose, because they are data or leaf functions rather than evaluation:
reading and merging the files (``library.read_sources``, ``Source.rules``, ``rules.parse_all``), the
path *syntax* (``paths.parse_segment_path``), the FHIR model facts (``fhirmodel``), the registered
functions, code-system tables, dates, default authorities and the URL helpers of ``bundle``. The reference
assumes the maps compiled (``load_mappings`` checks them); it does not check them again and does not
validate bundles. It is pure and holds no per-message state between calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.errors import TransformError
from engine.hl7v2 import Delimiters, Message, Segment, unescape
from engine.transform import dates, fhirmodel
from engine.transform.authority import AUTHORITY_COMPONENT, SYSTEMS_TABLE, Identifiers, default_system
from engine.transform.bundle import _ensure_identifier, conditional_url, full_url
from engine.transform.compiler import Where
from engine.transform.dates import Invalid
from engine.transform.functions import REGISTRY
from engine.transform.library import Library, Source, read_sources
from engine.transform.limits import check_message
from engine.transform.paths import ALL, NULL, parse_segment_path
from engine.transform.rules import parse_all
from engine.transform.spec import Condition, Entry, Rule
from engine.transform.tables import Table, Unmapped

_DATATYPE = re.compile(r"^(?P<dt>[A-Z][A-Z0-9]{1,3})(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?$")


# -- values ------------------------------------------------------------------------------------------


def primitive(raw: str, level: int, d: Delimiters) -> str:
    """The first component (level 1) / sub-component (levels 1-2) of a raw value, unescaped and trimmed."""
    if level == 1:
        raw = raw.split(d.component)[0]
    if level <= 2:
        raw = raw.split(d.subcomponent)[0]
    return unescape(raw, d).strip()


def parts(raw: str, level: int, d: Delimiters) -> list[str]:
    """Every part of a composite value, each read as a primitive one level down."""
    if level >= 3:
        return [primitive(raw, 3, d)]
    sep = d.component if level == 1 else d.subcomponent
    return [primitive(p, level + 1, d) for p in raw.split(sep)]


def empty(v: Any) -> bool:
    return v is None or v == ""


# -- the message being mapped --------------------------------------------------------------------------


@dataclass
class RefEntry:
    """One message-map entry, merged from the map and those it extends."""

    name: str
    layers: list[tuple[Entry, Where]]
    parent: RefEntry | None = None

    def get(self, attr: str) -> Any:
        for e, _w in reversed(self.layers):
            if attr in e.model_fields_set:
                return getattr(e, attr)
        return getattr(self.layers[0][0], attr)

    def where(self, attr: str | None = None) -> Where:
        for e, w in reversed(self.layers):
            if attr is None or attr in e.model_fields_set:
                return w.at(attr) if attr else w
        return self.layers[0][1]

    @property
    def segment(self) -> str:
        return self.get("segment") or self.get("each")

    def claims(self) -> set[str]:
        return {self.segment, *self.get("members"), *self.get("leading")}

    def chain(self) -> list[RefEntry | None]:
        out: list[RefEntry | None] = []
        e: RefEntry | None = self
        while e is not None:
            out.append(e)
            e = e.parent
        return [*out, None]


@dataclass
class Node:
    """A resource being made (or the message root) with the segments of its group."""

    entry: RefEntry | None
    parent: Node | None
    start: int
    end: int
    own: dict[str, list[Segment]] = field(default_factory=dict)
    children: dict[str, list[Node]] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    identity: tuple[str, str] = ("", "")
    filled: bool = False
    url: str = ""
    repeats: dict[str, int] = field(default_factory=dict)


@dataclass
class Ctx:
    """What a rule reads: the group node, the current segment or datatype value, and the map kind."""

    node: Node
    cur: Any  # a Segment (segment maps) or a raw value (datatype maps, `where` items)
    field: str  # the HL7 field named in errors
    segment: str | None  # the current segment map's segment (own paths read `cur`)
    datatype: str | None = None  # the current datatype map's datatype (its paths read `cur`)
    level: int = 1  # where a datatype map's value sits: 1 field repetition, 2 component
    relative: Any = None  # inside `where` on a field: (segment, field) whose component paths read `cur`


class Reference:
    """Every map under ``root`` (and overlays), evaluated directly; see the module docstring."""

    def __init__(self, root: Path, *, overlays: Sequence[Path] = (), timezone: str = "UTC") -> None:
        self.sources = read_sources([Path(root), *map(Path, overlays)])
        self.library = Library(self.sources)  # tables only: merged overlays, compiled look-ups
        self.timezone = timezone
        self.accepts: dict[str, str] = {}
        for name, src in self.sources.items():
            if src.kind == "messages":
                for t in src.model.accepts:
                    self.accepts[t] = name

    # -- files ---------------------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        return self.library.table(name, self.sources[name].where())

    def _entries(self, name: str) -> dict[str, RefEntry]:
        src = self.sources[name]
        out: dict[str, RefEntry] = {}
        if src.model.extends:
            out = {k: RefEntry(k, list(v.layers)) for k, v in self._entries(src.model.extends).items()}
        for key, entry in src.model.resources.items():
            out.setdefault(key, RefEntry(key, [])).layers.append((entry, src.where("resources", key)))
        for e in out.values():
            within = e.get("within")
            e.parent = out[within] if within else None
        return out

    def _entry_rules(self, e: RefEntry) -> dict[str, list[tuple[Rule, Where]]]:
        """Entry rules first (they win for single values), then the segment map's, then included maps'."""
        own: dict[str, list[tuple[Rule, Where]]] = {}
        for layer, w in e.layers:
            own.update(parse_all(layer.rules, w.at("rules")))
        base = self.sources[e.get("use")].rules()
        for t in e.get("omit"):
            del base[t]
        merged = {t: own.get(t, []) + rules for t, rules in base.items()}
        merged.update({t: r for t, r in own.items() if t not in merged})
        merged = {t: r for t, r in merged.items() if r}
        for inc in _included(e):
            for t, more in self.sources[inc].rules().items():
                merged[t] = merged.get(t, []) + more
        return merged

    # -- entry point ---------------------------------------------------------------------------------

    def mapping_for(self, message: Message) -> str | None:
        d = message.delimiters
        msh9 = [c.strip() for c in message.header.field(9).split(d.repetition, 1)[0].split(d.component)][:3]
        key = "^".join(msh9[:2])
        if key in self.accepts:
            return self.accepts[key]
        structure = msh9[2] if len(msh9) > 2 else msh9[0]
        src = self.sources.get(structure)
        return structure if src is not None and src.kind == "messages" else None

    def transform(
        self,
        message: Message,
        *,
        mapping: str | None = None,
        timezone: str | None = None,
        identifiers: Identifiers | None = None,
    ) -> dict[str, Any]:
        """The transaction Bundle of one message, as ``MappingSet.transform(..., validation="off")``."""
        check_message(message)  # the caps and escape checks every message passes first (limits.py)
        name = Path(mapping).name.removesuffix(".yaml") if mapping else self.mapping_for(message)
        if name is None or name not in self.sources or self.sources[name].kind != "messages":
            if mapping:
                raise TransformError(f"no message map named {name!r}", code="200", rule="mapping")
            d = message.delimiters
            mt = "^".join(c.strip() for c in message.header.field(9).split(d.repetition, 1)[0].split(d.component)[:2])
            raise TransformError(f"no mapping for message type {mt}", field="MSH-9", rule="mapping", code="200")
        try:
            tz = dates.zone(timezone or self.sources[name].model.timezone or self.timezone)
        except ValueError as exc:
            raise TransformError(str(exc), rule="timezone", code="207") from None
        run = _Run(self, message, tz, identifiers)
        entries = self._entries(name)
        root = Node(None, None, 0, len(message.segments))
        made: list[Node] = []
        for e in entries.values():
            if e.parent is None:
                run.instantiate(e, root, made, entries)
        return run.assemble(made, entries)


class _Run:
    """One message through one message map."""

    def __init__(self, ref: Reference, message: Message, tz: Any, identifiers: Identifiers | None) -> None:
        self.ref = ref
        self.message = message
        self.segments = message.segments
        self.d = message.delimiters
        self.tz = tz
        self.identifiers = identifiers
        self.memo: dict[Any, Any] = {}  # functions read run.memo/run.tz/run.d: the same attributes as execute.Run

    # -- groups ----------------------------------------------------------------------------------------

    def find(self, node: Node, name: str) -> list[Segment]:
        """A segment name is answered by the innermost group that claims it, else by the whole message."""
        n: Node | None = node
        while n is not None and n.entry is not None:
            if name in n.entry.claims():
                return n.own.get(name, [])
            n = n.parent
        return [s for s in self.segments if s.name == name]

    def instantiate(self, e: RefEntry, parent: Node, made: list[Node], entries: dict[str, RefEntry]) -> None:
        segment = e.segment
        label = f"{e.where().label} {e.name}"
        pos = [i for i in range(parent.start, parent.end) if self.segments[i].name == segment]
        before = set(e.get("before"))
        if before:
            stops = [i for i in range(parent.start, parent.end) if self.segments[i].name in before]
            if stops:
                pos = [i for i in pos if i < stops[0]]
        if parent.entry is not None and pos and pos[0] == parent.start:
            # the parent's own segment: only an entry of the same segment reads it (a second resource of it)
            pos = [parent.start] if parent.entry.segment == segment else pos[1:]
        if not pos:
            if e.get("required"):
                raise TransformError(f"required segment {segment} is missing", field=segment, rule=label, code="100")
            return
        if not e.get("each") and len(pos) > 1:
            raise TransformError(
                f"more than one {segment} segment where one is expected", field=segment, rule=label, code="100"
            )
        members = set(e.get("members"))
        smap = self.ref.sources[e.get("use")]
        for n, p in enumerate(pos):
            end = pos[n + 1] if n + 1 < len(pos) else parent.end
            node = Node(e, parent, p, end)
            node.own[segment] = [self.segments[p]]
            i = p + 1
            while i < end and self.segments[i].name in members:
                node.own.setdefault(self.segments[i].name, []).append(self.segments[i])
                i += 1
            i = p - 1
            while i >= 0 and self.segments[i].name in set(e.get("leading")):
                node.own.setdefault(self.segments[i].name, []).insert(0, self.segments[i])
                i -= 1
            ctx = Ctx(node, self.segments[p], segment, segment)
            when = e.get("when")
            if when is not None and not self.holds(when, ctx):
                continue
            rejects = [(r, smap.last("reject")[1].at(k)) for k, r in enumerate(smap.last("reject")[0])]
            rejects += [(r, e.where("reject").at(k)) for k, r in enumerate(e.get("reject"))]
            for inc in _included(e):
                isrc = self.ref.sources[inc]
                rejects += [(r, isrc.last("reject")[1].at(k)) for k, r in enumerate(isrc.last("reject")[0])]
            for r, rw in rejects:
                if self.holds(r.when, ctx):
                    raise TransformError(r.message, field=r.field, rule=rw.rule("reject"), code=r.code)
            rtype = smap.model.target
            node.resource = self.fill(self.ref._entry_rules(e), rtype, ctx, {"resourceType": rtype}, resource=True)
            node.identity = self.identity(e, node, ctx, smap)
            parent.children.setdefault(e.name, []).append(node)
            made.append(node)
            for child in entries.values():
                if child.parent is e:
                    self.instantiate(child, node, made, entries)

    # -- identity --------------------------------------------------------------------------------------

    def identity(self, e: RefEntry, node: Node, ctx: Ctx, smap: Source) -> tuple[str, str]:
        rules = e.get("identity")
        if rules is None:
            rules = smap.last("identity")[0]
        label = f"{e.where().label} {e.name}"
        for r in rules:
            if r.when is not None and not self.holds(r.when, ctx):
                continue
            got = self._derived(r, node, ctx) if r.derive is not None else self._identifier(r, node, ctx, label)
            if got:
                return got
        field_ = self.identity_field(e, ctx)
        raise TransformError(
            f"no business identifier for the {smap.model.target} (identity rule)", field=field_, rule=label, code="101"
        )

    def identity_field(self, e: RefEntry, ctx: Ctx) -> str:
        """The field named when an entry's identity fails: its first identity rule's path, else the segment."""
        rules = e.get("identity") or self.ref.sources[e.get("use")].last("identity")[0]
        return (self.label(rules[0].from_, ctx) or e.segment) if rules[0].from_ else e.segment

    def _identifier(self, r: Any, node: Node, ctx: Ctx, label: str) -> tuple[str, str] | None:
        level = self.level(r.from_, ctx)
        for raw in self.get(r.from_, ctx):
            if r.where is not None:
                item = Ctx(ctx.node, raw, ctx.field, ctx.segment, relative=self._relative_base(r.from_))
                if not self.holds(r.where, item):
                    continue
            ident = self.apply(r.use, level, Ctx(node, raw, ctx.field, None, self._datatype(r.use), level))
            if ident and ident.get("value"):
                system = ident.get("system")
                if not system:
                    systems = self.ref.table(SYSTEMS_TABLE) if SYSTEMS_TABLE in self.ref.sources else None
                    system = default_system(self.identifiers, self.message.header, systems)
                    if not system:
                        field_label = self.label(r.from_, ctx)
                        comp = AUTHORITY_COMPONENT.get(self._datatype(r.use) or "") if level == 1 else None
                        assert node.entry is not None
                        rtype = self.ref.sources[node.entry.get("use")].model.target
                        raise TransformError(
                            f"assigning authority is empty and the channel declares no default for this sender "
                            f"(identifiers:): a {rtype} keyed on the value alone could be another facility's",
                            field=f"{field_label}.{comp}" if field_label and comp else field_label or ctx.segment or "",
                            rule=label,
                            code="101",
                        )
                    node.filled = True
                return system, ident["value"]
        return None

    def _derived(self, r: Any, node: Node, ctx: Ctx) -> tuple[str, str] | None:
        assert node.entry is not None
        chain = [x.name for x in node.entry.chain()[1:] if x is not None]
        up = chain.index(r.derive.parent or chain[0]) + 1
        base: Node | None = node
        for _ in range(up):
            base = base.parent if base is not None else None
        if base is None or not base.identity[1]:
            return None
        value = base.identity[1]
        added = False
        for p in r.derive.parts:
            part = self.first_text(p, ctx)
            if part:
                value += "/" + part
                added = True
        if not added:
            return None
        parent = node.parent
        if parent is not None:
            n = parent.repeats[value] = parent.repeats.get(value, 0) + 1
            if n > 1:
                value = f"{value}/#{n}"
        return base.identity[0], value

    # -- paths -----------------------------------------------------------------------------------------

    def _datatype_path(self, text: str, ctx: Ctx) -> tuple[int | None, int | None] | None:
        m = _DATATYPE.match(text)
        if ctx.datatype and m and m["dt"] == ctx.datatype:
            return (int(m["comp"]) if m["comp"] else None, int(m["sub"]) if m["sub"] else None)
        return None

    def _relative(self, text: str, ctx: Ctx) -> tuple[int, int | None] | None:
        if ctx.relative is None:
            return None
        try:
            sp = parse_segment_path(text)
        except ValueError:
            return None
        seg, fld = ctx.relative
        if (sp.segment, sp.field) == (seg, fld) and sp.component is not None:
            return sp.component, sp.sub
        return None

    def level(self, text: str, ctx: Ctx) -> int:
        if (dp := self._datatype_path(text, ctx)) is not None:
            return ctx.level + (dp[0] is not None) + (dp[1] is not None)
        if (rp := self._relative(text, ctx)) is not None:
            return 2 + (rp[1] is not None)
        return parse_segment_path(text).level

    def label(self, text: str | None, ctx: Ctx) -> str | None:
        """The HL7 field a path names in errors (``PID-3``); None for a datatype path."""
        if not text or self._datatype_path(text, ctx) is not None or self._relative(text, ctx) is not None:
            return None
        return parse_segment_path(text).label

    def _component(self, value: str, comp: int, sub: int | None, sep: str) -> str:
        items = value.split(sep)
        v = items[comp - 1] if comp <= len(items) else ""
        if sub is not None and v:
            subs = v.split(self.d.subcomponent)
            v = subs[sub - 1] if sub <= len(subs) else ""
        return v

    def get(self, text: str, ctx: Ctx) -> list[Any]:
        """The raw non-empty values a path selects (segments for a segment path without a field)."""
        dp = self._datatype_path(text, ctx)
        if dp is not None:
            comp, sub = dp
            v = ctx.cur if comp is None else self._component(ctx.cur, comp, sub, self._sep(ctx.level))
            return [v] if v and v != NULL else []
        rp = self._relative(text, ctx)
        if rp is not None:
            v = self._component(ctx.cur, rp[0], rp[1], self.d.component)
            return [v] if v and v != NULL else []
        sp = parse_segment_path(text)
        if sp.segment == ctx.segment and sp.seg_rep is None:
            segs = [ctx.cur]
        else:
            segs = _pick(self.find(ctx.node, sp.segment), sp.seg_rep)
        if sp.field is None:
            return segs
        out: list[str] = []
        for s in segs:
            raw = s.fields[sp.field] if sp.field < len(s.fields) else ""
            if not raw:
                continue
            whole = s.name == "MSH" and sp.field in (1, 2)
            for r in [raw] if whole else _pick(raw.split(self.d.repetition), sp.rep):
                v = r if sp.component is None else self._component(r, sp.component, sp.sub, self.d.component)
                if v and v != NULL:
                    out.append(v)
        return out

    def _sep(self, level: int) -> str:
        return self.d.component if level == 1 else self.d.subcomponent

    def first_text(self, text: str, ctx: Ctx) -> str | None:
        """The first value's first component, unescaped and trimmed (a segment's name for a segment path)."""
        vals = self.get(text, ctx)
        if not vals:
            return None
        level = self.level(text, ctx)
        return vals[0].name if level == 0 else primitive(vals[0], level, self.d)

    # -- conditions ------------------------------------------------------------------------------------

    def holds(self, c: Condition, ctx: Ctx) -> bool:
        if c.present is not None or c.absent is not None:
            path = c.present or c.absent or ""
            vals = self.get(path, ctx)
            if self.level(path, ctx) == 0:
                found = bool(vals)
            else:
                blank = self.d.component + self.d.subcomponent + self.d.repetition + " "
                found = any(v.strip(blank) for v in vals)
            return found if c.present is not None else not found
        if c.unique is not None:
            sp = parse_segment_path(c.unique)
            mine = self.get(c.unique, ctx)
            if sp.segment != ctx.segment or not mine or not mine[0].strip(self.d.component + self.d.subcomponent + " "):
                return False
            others = [s for s in self.segments if s.name == sp.segment and s is not ctx.cur]
            return all(self.get(c.unique, Ctx(ctx.node, s, ctx.segment, ctx.segment))[:1] != mine[:1] for s in others)
        if c.equals is not None:
            return all(self.first_text(p, ctx) == str(v) for p, v in c.equals.items())
        if c.in_ is not None:
            return all(self.first_text(p, ctx) in {str(v) for v in vs} for p, vs in c.in_.items())
        if c.not_ is not None:
            return not self.holds(c.not_, ctx)
        if c.all is not None:
            return all(self.holds(x, ctx) for x in c.all)
        assert c.any is not None
        return any(self.holds(x, ctx) for x in c.any)

    # -- rules -----------------------------------------------------------------------------------------

    def fill(
        self,
        rules: dict[str, list[tuple[Rule, Where]]],
        model: str,
        ctx: Ctx,
        out: dict[str, Any],
        *,
        resource: bool = False,
    ) -> dict[str, Any]:
        """Run a map's rules, element by element, into ``out``."""
        for target, items in rules.items():
            items = [(r, w) for r, w in items if r.ref is None]  # `ref`s are filled when the bundle is assembled
            if not items:
                continue
            keys, el = _target(model, target)
            label = items[0][1].rule(target)
            produced: list[list[Any]] = [self.rule(r, w, target, el, ctx) for r, w in items] if el.is_list else []
            if el.is_list:
                vals = [v for got in produced for v in got]
                if vals:
                    _put(out, keys, vals)
                    continue
            elif not el.primitive:
                acc = None
                for r, w in items:
                    got = self.rule(r, w, target, el, ctx)
                    if got:
                        if acc is None:
                            acc = got[0]
                        else:
                            _merge(acc, got[0])
                if acc is not None:
                    _put(out, keys, acc)
                    continue
            else:
                found = False
                for r, w in items:
                    got = self.rule(r, w, target, el, ctx)
                    if got:
                        _put(out, keys, got[0])
                        found = True
                        break
                if found:
                    continue
            required = next((r for r, _w in items if r.required), None)
            if required is not None:
                field_ = (self.label(required.from_, ctx) or required.from_) if required.from_ else "?"
                raise TransformError("required value is missing", field=field_, rule=label, code="101")
        return out

    def rule(self, r: Rule, w: Where, target: str, el: fhirmodel.Element, ctx: Ctx) -> list[Any]:
        """The values one rule produces for one element."""
        label = w.rule(target)
        if r.when is not None and not self.holds(r.when, ctx):
            return []
        if r.value is not None:
            value = orjson.loads(orjson.dumps(r.value))
            if el.is_list:
                return value if isinstance(value, list) else [value]
            return [value]
        if r.build is not None:
            built = self.fill(parse_all(r.build, w.at("build")), el.type, ctx, {})
            return [built] if built else []
        if r.from_ is None:
            f = REGISTRY[r.fn or ""]
            try:
                x = f.impl(self, None, **self.args(r, ctx))
            except Invalid as exc:
                raise TransformError(str(exc), field=ctx.field, rule=label, code="102") from None
            return [] if x in (None, "") else [x]
        vals = self.get(r.from_, ctx)
        level = self.level(r.from_, ctx)
        path_label = self.label(r.from_, ctx)
        if r.where is not None:
            if level == 0:
                vals = [v for v in vals if self.holds(r.where, Ctx(ctx.node, v, ctx.field, v.name))]
            else:
                base = self._relative_base(r.from_)
                vals = [v for v in vals if self.holds(r.where, Ctx(ctx.node, v, ctx.field, ctx.segment, relative=base))]
        first_only = not el.is_list and r.join is None
        out: list[Any] = []
        for raw in vals:
            try:
                x = self.convert(r, raw, level, path_label, el, ctx)
            except (Invalid, Unmapped) as exc:
                code = "103" if isinstance(exc, Unmapped) else "102"
                raise TransformError(str(exc), field=path_label or ctx.field, rule=label, code=code) from None
            if empty(x):
                continue
            if r.defaults is not None:
                _merge(x, orjson.loads(orjson.dumps(r.defaults)))
            if first_only:
                return [x]
            out.append(x)
        if r.join is not None:
            return [r.join.join(out)] if out else []
        return out

    def _relative_base(self, text: str) -> tuple[str, int | None]:
        sp = parse_segment_path(text)
        return sp.segment, sp.field

    def _datatype(self, name: str | None) -> str | None:
        src = self.ref.sources.get(name or "")
        return getattr(src.model, "datatype", None) if src is not None else None

    def convert(self, r: Rule, raw: Any, level: int, path_label: str | None, el: fhirmodel.Element, ctx: Ctx) -> Any:
        field_ = path_label or ctx.field
        if r.use is not None:
            src = self.ref.sources[r.use]
            if level == 0:
                return self.apply(r.use, 0, Ctx(ctx.node, raw, field_, src.model.segment))
            return self.apply(r.use, level, Ctx(ctx.node, raw, field_, None, src.model.datatype, level))
        if r.fn is not None:
            f = REGISTRY[r.fn]
            if f.input == "primitive":
                value: Any = primitive(raw, level, self.d)
            elif f.input == "parts":
                value = parts(raw, level, self.d)
            else:
                value = unescape(raw, self.d).strip()
            return f.impl(self, value, **self.args(r, ctx))
        code = primitive(raw, level, self.d)
        if r.table is not None:
            if not code:
                return None
            table = self.ref.table(r.table)
            if el.type == "Coding":
                return table.coding(code)
            if el.type == "CodeableConcept":
                return table.concept(code)
            return table.code(code)
        return code

    def apply(self, name: str, level: int, ctx: Ctx) -> dict[str, Any] | None:
        """A datatype map (or a segment map making a datatype) applied to one value: None when empty."""
        src = self.ref.sources[name]
        out = self.fill(src.rules(), src.model.target, ctx, {})
        requires, _w = src.last("requires")
        if not out or any(k not in out for k in requires):
            return None
        return out

    def args(self, r: Rule, ctx: Ctx) -> dict[str, Any]:
        f = REGISTRY[r.fn or ""]
        out: dict[str, Any] = {}
        for name, value in r.args.items():
            kind = f.params[name].kind
            if kind == "table":
                out[name] = self.ref.table(str(value))
            elif kind == "path":
                vals = self.get(str(value), ctx)
                out[name] = (primitive(vals[0], self.level(str(value), ctx), self.d) or None) if vals else None
            else:
                out[name] = value
        return out

    # -- the bundle ------------------------------------------------------------------------------------

    @staticmethod
    def _request(n: Node) -> dict[str, str]:
        """A conditional update; for a ``write: create`` entry a POST with ifNoneExist on the same search."""
        assert n.entry is not None
        rtype = n.resource["resourceType"]
        url = conditional_url(rtype, *n.identity)
        if n.entry.get("write") == "create":
            kind, _, query = url.partition("?")
            return {"method": "POST", "url": kind, "ifNoneExist": query}
        return {"method": "PUT", "url": url}

    def assemble(self, made: list[Node], entries: dict[str, RefEntry]) -> dict[str, Any]:
        first: dict[str, Node] = {}
        for node in made:
            assert node.entry is not None
            node.url = full_url(node.resource["resourceType"], *node.identity)
            first.setdefault(node.url, node)
            _ensure_identifier(node.resource, node.identity[0], node.identity[1], node.filled)
        for node in made:
            assert node.entry is not None
            for target, items in self.ref._entry_rules(node.entry).items():
                names = [r.ref for r, _w in items if r.ref is not None]
                if not names:
                    continue
                keys, el = _target(node.resource["resourceType"], target)
                refs = [{"reference": t.url} for n in names for t in self._related(node, entries[n])]
                if refs:
                    _put(node.resource, keys, refs if el.is_list else refs[0])
        for node in made:
            # One identity twice: one entry when the content (references in) is identical, else refused.
            assert node.entry is not None
            if first[node.url] is not node and first[node.url].resource != node.resource:
                ctx = Ctx(node, self.segments[node.start], node.entry.segment, node.entry.segment)
                raise TransformError(
                    f"two {node.resource['resourceType']} resources have the same business identifier",
                    field=self.identity_field(node.entry, ctx),
                    rule=f"{node.entry.where().label} {node.entry.name}",
                    code="205",
                )
        made = [n for n in made if first[n.url] is n]
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"fullUrl": n.url, "resource": n.resource, "request": self._request(n)} for n in made],
        }

    def _related(self, node: Node, target: RefEntry) -> list[Node]:
        """The resources of ``target`` seen from ``node``: under their nearest common ancestor."""
        assert node.entry is not None
        mine, theirs = node.entry.chain(), target.chain()
        up = next(i for i, anc in enumerate(mine) if anc in theirs)
        anc = mine[up]
        down = [e.name for e in reversed(theirs[: theirs.index(anc)]) if e is not None]
        top: Node | None = node
        for _ in range(up):
            top = top.parent if top is not None else None
        if top is None:
            return []
        level = [top]
        for name in down:
            level = [c for x in level for c in x.children.get(name, ())]
        return level


def _included(e: RefEntry) -> list[str]:
    """Segment maps an entry ``include``s (their rules fill the same resource after the ``use`` map's)."""
    return list(e.get("include")) if "include" in Entry.model_fields else []


def _pick(items: list[Any], index: int | None) -> list[Any]:
    if index == ALL:
        return items
    i = 0 if index is None else index - 1
    return [items[i]] if i < len(items) else []


def _target(model: str, dotted: str) -> tuple[tuple[tuple[str, bool], ...], fhirmodel.Element]:
    keys = []
    current = model
    el: fhirmodel.Element | None = None
    for name in dotted.split("."):
        if el is not None:
            current = el.type
        el = fhirmodel.element(current, name)
        assert el is not None, f"{current}.{name}"
        keys.append((name, el.is_list))
    assert el is not None
    return tuple(keys), el


def _put(out: dict[str, Any], keys: tuple[tuple[str, bool], ...], value: Any) -> None:
    """Set a dotted element: through a list, its first item; never overwrite what is there (merge)."""
    d = out
    for k, is_list in keys[:-1]:
        if d.get(k) is None:
            d[k] = [{}] if is_list else {}
        d = d[k][0] if is_list else d[k]
    k = keys[-1][0]
    old = d.get(k)
    if old is None:
        d[k] = value
    elif isinstance(old, list) and isinstance(value, list):
        old.extend(value)
    elif isinstance(old, dict) and isinstance(value, dict):
        _merge(old, value)


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        old = into.get(k)
        if old is None:
            into[k] = v
        elif isinstance(old, dict) and isinstance(v, dict):
            _merge(old, v)
