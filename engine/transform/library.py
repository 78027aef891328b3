"""Read the mapping files (base folder, then overlays) and compile datatype maps and tables on demand.

Layout: ``<root>/hl7v2/{messages,segments,datatypes,codesystems}/*.yaml`` (``<root>`` may also be the
``hl7v2`` folder itself). A map's name is its file name without ``.yaml``; ``*.tests.yaml`` files are
sibling tests, not maps.

Overlays (site customisation without copying): ``load_mappings(base, overlays=[site])`` reads the same
layout from each overlay folder, in order. A file whose name matches an earlier map *replaces* it; with
``merge: true`` it only replaces the rules it lists (per element) and, for a code-system map, adds or
overrides individual codes. A new name simply adds a map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from engine.config import yamlfile
from engine.config.yamlfile import YamlDoc
from engine.errors import ConfigError
from engine.transform import fhirmodel
from engine.transform.compiler import CompiledMap, Resolver, Where, did_you_mean
from engine.transform.rules import Context, compile_steps, parse_all
from engine.transform.spec import DatatypeMap, Kind, MessageMap, SegmentMap
from engine.transform.tables import Table, TableFile

MODELS: dict[str, Any] = {
    "messages": MessageMap,
    "segments": SegmentMap,
    "datatypes": DatatypeMap,
    "codesystems": TableFile,
}
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass
class Layer:
    doc: YamlDoc
    model: Any


@dataclass
class Source:
    """One map, as read from the base folder and any overlays that merge into it."""

    name: str
    kind: str
    layers: list[Layer] = field(default_factory=list)

    @property
    def model(self) -> Any:
        return self.layers[-1].model

    @property
    def doc(self) -> YamlDoc:
        return self.layers[-1].doc

    def where(self, *loc: str | int) -> Where:
        return Where(self.doc, loc, self.name)

    def rules(self) -> dict[str, list[Any]]:
        """Element → parsed rules, later layers replacing earlier ones per element."""
        merged: dict[str, list[Any]] = {}
        for layer in self.layers:
            merged.update(parse_all(layer.model.rules, Where(layer.doc, ("rules",), self.name)))
        return merged

    def last(self, attr: str) -> tuple[Any, Where]:
        """The value of ``attr`` from the last layer that sets it, with its location."""
        for layer in reversed(self.layers):
            if attr in layer.model.model_fields_set or layer is self.layers[0]:
                return getattr(layer.model, attr), Where(layer.doc, (attr,), self.name)
        raise AssertionError(attr)


def map_dir(root: Path, input_kind: str = "hl7v2") -> Path:
    """The folder of one input kind's maps under a mapping root (``hl7v2/``, ``dicom/``)."""
    if input_kind != "hl7v2":
        return root / input_kind
    return root / "hl7v2" if (root / "hl7v2").is_dir() else root


def read_sources(roots: list[Path], input_kind: str = "hl7v2") -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for i, root in enumerate(roots):
        base = map_dir(root, input_kind)
        if i > 0 and input_kind != "hl7v2" and not base.is_dir():
            continue  # an overlay without maps of this kind
        if not base.is_dir():
            raise ConfigError("mapping folder not found", file=str(root))
        for kind in KINDS:
            for path in sorted((base / kind).glob("*.yaml")):
                if path.name.endswith(".tests.yaml"):
                    continue
                doc = yamlfile.load(path)
                if not isinstance(doc.data, dict):
                    raise doc.error(f"a {kind[:-1]} map must be a mapping")
                model = doc.validate(MODELS[kind])
                name = path.stem
                old = sources.get(name)
                if old is not None and old.kind != kind:
                    raise doc.error(f"map name {name!r} is already used by {old.doc.path}")
                if old is None or not getattr(model, "merge", False):
                    if i == 0 and old is not None:
                        raise doc.error(f"duplicate map name {name!r} (also {old.doc.path})")
                    sources[name] = Source(name, kind, [Layer(doc, model)])
                else:
                    old.layers.append(Layer(doc, model))
    return sources


class Library:
    """Named maps and tables, compiled on first use and cached (per application level)."""

    def __init__(self, sources: dict[str, Source], notation: Any = None) -> None:
        self.sources = sources
        self.notation = notation  # source paths of the input kind (None: HL7 v2), see compiler.Resolver
        self._maps: dict[tuple[str, int], CompiledMap] = {}
        self._tables: dict[str, Table] = {}
        self._compiling: set[tuple[str, int]] = set()

    def _source(self, name: str, kind: str, where: Where) -> Source:
        src = self.sources.get(name)
        if src is None or src.kind != kind:
            names = sorted(n for n, s in self.sources.items() if s.kind == kind)
            raise where.error(f"unknown {kind[:-1]} map {name!r}{did_you_mean(name, names)}")
        return src

    def table(self, name: str, where: Where) -> Table:
        if name not in self._tables:
            src = self._source(name, "codesystems", where)
            spec: TableFile = src.layers[0].model
            for layer in src.layers[1:]:
                extra: TableFile = layer.model
                updates = {k: getattr(extra, k) for k in extra.model_fields_set if k not in ("map", "merge")}
                spec = spec.model_copy(update={**updates, "map": {**spec.map, **extra.map}})
            self._tables[name] = Table(name, spec)
        return self._tables[name]

    def datatype_map(self, name: str, level: int, where: Where) -> CompiledMap:
        return self._compile(self._source(name, "datatypes", where), level, where)

    def segment_datatype_map(self, name: str, where: Where) -> CompiledMap:
        src = self._source(name, "segments", where)
        if fhirmodel.is_resource(src.model.target):
            raise where.error(f"{name} makes a {src.model.target} resource: reference it from a message map")
        return self._compile(src, 0, where)

    def _compile(self, src: Source, level: int, where: Where) -> CompiledMap:
        key = (src.name, level)
        if key in self._maps:
            return self._maps[key]
        if key in self._compiling:
            raise where.error(f"map {src.name} uses itself (directly or through other maps)")
        self._compiling.add(key)
        try:
            m = src.model
            target_w = src.where("target")
            if not fhirmodel.is_model(m.target) or (fhirmodel.is_resource(m.target) and level):
                raise target_w.error(f"target {m.target!r} is not a FHIR datatype")
            if src.kind == "segments":
                resolver = Resolver(segment=m.segment, notation=self.notation)
            else:
                resolver = Resolver(datatype=m.datatype, level=level, notation=self.notation)
            compiled = CompiledMap(src.name, m.target, level)
            ctx = Context(self, resolver, m.target, resource=False)
            compiled.steps, refs = compile_steps(src.rules(), ctx)
            if refs:
                raise src.where("rules").error("`ref` rules belong in message maps")
            compiled.pure = resolver.reads_scope is None and all(u.pure for u in ctx.used)
            cache, cw = src.last("cache") if src.kind == "datatypes" else (False, target_w)
            if cache:
                if not compiled.pure:
                    what = f"it reads {resolver.reads_scope}" if resolver.reads_scope else "it uses a map that does"
                    raise cw.error(f"a cached map may read only its own value ({what})")
                compiled.cache = {}
            requires, rw = src.last("requires")
            for r in requires:
                if fhirmodel.element(m.target, r) is None:
                    raise rw.error(f"unknown FHIR element {m.target}.{r} in requires")
            compiled.requires = tuple(requires)
            self._maps[key] = compiled
            return compiled
        finally:
            self._compiling.discard(key)

    def check_all(self) -> None:
        """Compile every datatype map and table, so unused maps are checked too."""
        for src in self.sources.values():
            w = src.where()
            if src.kind == "codesystems":
                self.table(src.name, w)
            elif src.kind == "datatypes":
                self.datatype_map(src.name, 1, w)
            elif src.kind == "segments" and not fhirmodel.is_resource(src.model.target):
                self.segment_datatype_map(src.name, w)
