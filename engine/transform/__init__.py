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

from engine.transform.mappingset import MappingSet, load_mappings

__all__ = ["MappingSet", "load_mappings"]
