"""HL7 v2 → FHIR R4 mapping: compile the mapping files once, then map messages to transaction Bundles.

    from engine.transform import load_mappings
    ms = load_mappings(Path("mappings"))          # ConfigError "file:line: message" on any mistake
    bundle = ms.transform(hl7v2.Message.parse(text), validation="off")

Modules, in the order data flows: ``spec`` (the mapping-file language), ``library`` (reading files and
overlays), ``paths``/``conditions``/``functions``/``tables``/``dates``/``units`` (what rules may say),
``compiler``/``rules``/``steps``/``messages`` (compile to closures), ``runtime`` (groups → resources), ``bundle``
(identity, fullUrls, conditional PUTs), ``validate`` (fhir.resources R4B), ``testing`` (sibling tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.transform.mappingset import MappingSet, load_mappings

__all__ = ["MappingSet", "load_mappings"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the channel model composes transform.authority.Identifiers, and reading a
    # channel file should not load the FHIR models (about 0.3 s).
    if name in __all__:
        from engine.transform import mappingset

        return getattr(mappingset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
