"""The compiled set of mappings a process uses: choose a message map, run it, assemble and validate."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import hl7v2
from engine.errors import ConfigError, TransformError
from engine.hl7v2 import Message
from engine.transform import dates
from engine.transform.authority import SYSTEMS_TABLE, Identifiers
from engine.transform.bundle import assemble
from engine.transform.execute import run_program
from engine.transform.library import Library, read_sources
from engine.transform.limits import DEFAULT as DEFAULT_LIMITS
from engine.transform.limits import Limits, check_message, check_text
from engine.transform.messages import MessageProgram, compile_message
from engine.transform.tables import Table
from engine.transform.validate import validate_bundle

if TYPE_CHECKING:
    from engine.settings import Settings

VALIDATION = ("full", "sampled", "off")
SAMPLE_EVERY = 100


class MappingSet:
    """Every message map, compiled. Immutable after loading; :meth:`transform` is pure and thread-safe."""

    def __init__(
        self,
        programs: dict[str, MessageProgram],
        roots: list[Path],
        timezone: str,
        identifier_systems: Table | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.programs = programs
        self.limits = limits  # caps on one message (engine/transform/limits.py)
        self.roots = roots
        self.timezone = timezone
        self.identifier_systems = identifier_systems  # resolves a channel's default authority, as CX-4
        #: the compiled maps of the other input kinds found under the same roots (``dicom``)
        self.kinds: dict[str, MappingSet] = {}
        self._by_type: dict[str, MessageProgram] = {}
        for p in programs.values():
            for t in p.accepts:
                self._by_type[t] = p
        self._counter = itertools.count()

    @property
    def message_types(self) -> set[str]:
        """Message types (``ORU^R01``) some map accepts by MSH-9."""
        return set(self._by_type)

    def has_mapping(self, message_type: str) -> bool:
        """``ORU^R01``, ``ORU^R01^ORU_R01`` (structure also tried), a map name (``ORU_R01``) or its path
        under mappings/ (``hl7v2/messages/ORU_R01.yaml``)."""
        if "/" in message_type or message_type.endswith(".yaml"):
            return Path(message_type).name.removesuffix(".yaml") in self.programs
        return self._choose(message_type) is not None

    def _choose(self, msh9: str) -> MessageProgram | None:
        parts = msh9.split("^")
        key = "^".join(parts[:2])
        if key in self._by_type:
            return self._by_type[key]
        structure = parts[2] if len(parts) > 2 else parts[0]
        return self.programs.get(structure)

    def for_kind(self, kind: str) -> MappingSet:
        """The maps of one input kind (``hl7v2``: these; ``dicom``: ``mappings/dicom/``; ``json``:
        ``mappings/json/``)."""
        if kind == "hl7v2":
            return self
        found = self.kinds.get(kind)
        if found is None:
            raise TransformError(f"no mappings for input kind {kind}", rule="mapping", code="200")
        return found

    def program(self, mapping: str) -> MessageProgram:
        """A message map by name (``ORU_R01``) or path under mappings/ (``hl7v2/messages/ORU_R01.yaml``)."""
        name = Path(mapping).name.removesuffix(".yaml")
        found = self.programs.get(name)
        if found is None:
            raise TransformError(f"no message map named {name!r}", code="200", rule="mapping")
        return found

    def mapping_for(self, message: Message) -> str | None:
        p = self._choose(self._msh9(message))
        return p.name if p else None

    @staticmethod
    def _msh9(message: Message) -> str:
        d = message.delimiters
        msh9 = message.header.field(9).split(d.repetition, 1)[0].split(d.component)
        return "^".join(c.strip() for c in msh9[:3])

    def read(self, raw: bytes, charset: str = "utf-8") -> Message:
        """Decode and parse one message, refusing a forged segment or an oversize text first (``limits``).

        Raises HL7Error/EncodingError (unreadable) or TransformError (a cap, a stray terminator)."""
        text = hl7v2.decode(raw, charset)
        check_text(text, self.limits)
        return Message.parse(text)

    def transform(
        self,
        message: Message,
        *,
        mapping: str | None = None,
        validation: str = "sampled",
        timezone: str | None = None,
        identifiers: Identifiers | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Map one parsed message to a FHIR R4 transaction Bundle.

        ``mapping`` names the message map (default: chosen from MSH-9, then MSH-9.3); ``validation`` is
        ``full`` (every bundle), ``sampled`` (1 in 100) or ``off``; ``timezone`` (IANA) is the zone of
        times sent without an offset (default: the message map's, else the set's, else UTC);
        ``identifiers`` is the channel's default assigning authority for identities sent without one
        (none: such a message is refused, HL7 101 naming e.g. PID-3.4); ``strict`` checks the message against
        its HL7 structure (required segments and fields, segment order; ``structure.check``) first.
        Every message is first held to the caps of ``limits`` (repetitions, components, segments, size) and
        its escape sequences checked. Raises TransformError naming the field and rule when the message is
        refused.
        """
        if validation not in VALIDATION:
            raise ValueError(f"validation must be one of {VALIDATION}")
        check_message(message, self.limits)
        if strict:
            from engine.transform.structure import check as check_structure

            check_structure(message)
        if mapping:
            program = self.program(mapping)
        else:
            msh9 = self._msh9(message)
            found = self._choose(msh9)
            if found is None:
                mt = "^".join(msh9.split("^")[:2])
                raise TransformError(f"no mapping for message type {mt}", field="MSH-9", rule="mapping", code="200")
            program = found
        try:
            tz = dates.zone(timezone or program.timezone or self.timezone)
        except ValueError as exc:
            raise TransformError(str(exc), rule="timezone", code="207") from None
        bundle = assemble(run_program(program, message, tz, identifiers, self.identifier_systems))
        if validation == "full" or (validation == "sampled" and next(self._counter) % SAMPLE_EVERY == 0):
            validate_bundle(bundle)
        return bundle


def load_site_mappings(settings: Settings) -> MappingSet:
    """The engine's mappings as its settings name them: ``mappings_dir``, its overlays and its caps (the one
    way the runtime, its mapping processes and the CLI load them), with the site functions they may call."""
    from engine.transform.plugins import load_site_functions

    load_site_functions(settings.site_functions)
    return load_mappings(settings.mappings_dir, overlays=settings.mapping_overlays, limits=settings.limits)


def load_mappings(
    root: Path,
    *,
    overlays: Sequence[Path] = (),
    timezone: str = "UTC",
    limits: Limits = DEFAULT_LIMITS,
    kind: str = "hl7v2",
) -> MappingSet:
    """Read and compile every mapping under ``root`` (then each overlay folder, in order).

    ``limits``: the caps every message is held to (``engine/transform/limits.py``).

    Raises ConfigError (``file:line: message``) for the first error: unknown FHIR elements, functions,
    tables or maps, bad paths, values of the wrong type, resources without identity, conflicting maps.
    """
    roots = [Path(root), *map(Path, overlays)]
    try:
        dates.zone(timezone)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sources = read_sources(roots, kind)
    library = Library(sources, _notation(kind, sources))
    library.check_all()
    programs: dict[str, MessageProgram] = {}
    claimed: dict[str, str] = {}
    for name, src in sources.items():
        if src.kind != "messages":
            continue
        program = compile_message(src, library)
        if program.timezone:
            try:
                dates.zone(program.timezone)
            except ValueError as exc:
                raise src.where("timezone").error(str(exc)) from None
        for t in program.accepts:
            if t in claimed:
                raise src.where("accepts").error(f"{t} is already mapped by {claimed[t]}")
            claimed[t] = name
        programs[name] = program
    systems = sources.get(SYSTEMS_TABLE)
    table = library.table(SYSTEMS_TABLE, systems.where()) if systems and systems.kind == "codesystems" else None
    mappings = MappingSet(programs, roots, timezone, table, limits)
    if kind == "hl7v2":
        for other in OTHER_KINDS:
            if any((r / other).is_dir() for r in roots):
                mappings.kinds[other] = load_mappings(
                    root, overlays=overlays, timezone=timezone, limits=OTHER_KINDS[other], kind=other
                )
    return mappings


#: Input kinds beside HL7 v2 whose folder under a mapping root is compiled too, with their message caps
#: (a DICOM study is one record per instance and series: far more than an HL7 message's segments; a JSON
#: event is one record per object, held to the HL7 caps).
OTHER_KINDS: dict[str, Limits] = {
    "dicom": DEFAULT_LIMITS.model_copy(update={"max_segments": 100_000}),
    "json": DEFAULT_LIMITS,
}


def _notation(kind: str, sources: dict[str, Any]) -> Any:
    if kind == "dicom":
        from engine.transform.dicom import DicomNotation

        return DicomNotation()
    if kind == "json":
        from engine.transform.jsonevent import JsonNotation

        # a path that names what some segment map reads selects records (``use:`` of that map)
        return JsonNotation({s.model.segment for s in sources.values() if s.kind == "segments"})
    return None
