"""JSON Schemas of the mapping files, generated from the models in ``spec`` and ``tables``.

    python -m engine.transform.schema            # writes mappings/schema/*.json
    python -m engine.transform.schema --check    # exit 1 when the files are not current

One schema per kind of file, for editors (YAML language server: ``# yaml-language-server:
$schema=../../schema/message-map.json`` at the top of a map) and for review. The models are the one
declaration: field descriptions, required keys and ``extra="forbid"`` come from them; element → rule maps
(``rules:``, ``build:``), which the models keep as plain mappings because they are parsed rule by rule
when compiled, are described here with the rule's own schema (a path string, a rule, or a list of those).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from engine.transform.spec import CasesFile, DatatypeMap, MessageMap, RuleSpec, SegmentMap
from engine.transform.tables import TableFile

FOLDER = Path(__file__).resolve().parents[2] / "mappings" / "schema"
BASE_ID = "https://interlink.invalid/schema/"  # an identifier only: nothing is fetched from it

#: Output file → (model, title).
SCHEMAS: dict[str, tuple[Any, str]] = {
    "message-map.json": (MessageMap, "Interlink message map (mappings/hl7v2/messages/*.yaml)"),
    "segment-map.json": (SegmentMap, "Interlink segment map (mappings/hl7v2/segments/*.yaml)"),
    "datatype-map.json": (DatatypeMap, "Interlink datatype map (mappings/hl7v2/datatypes/*.yaml)"),
    "codesystem-map.json": (TableFile, "Interlink code-system map (mappings/hl7v2/codesystems/*.yaml)"),
    "tests.json": (CasesFile, "Interlink sibling tests (mappings/**/<map>.tests.yaml)"),
}
_RULE_MAPS = ("rules", "build")


def _rule_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one element's rule(s) and the definitions it refers to."""
    schema = TypeAdapter(RuleSpec).json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs


def _patch(node: Any, spec: dict[str, Any]) -> None:
    """Describe every ``rules``/``build`` mapping with the rule schema (they are plain dicts in the models)."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for key in _RULE_MAPS:
                if key in props and isinstance(props[key], dict):
                    described = {k: v for k, v in props[key].items() if k in ("description", "title", "default")}
                    props[key] = {
                        **described,
                        "type": "object",
                        "additionalProperties": {"$ref": "#/$defs/RuleSpec"},
                    }
        for v in node.values():
            _patch(v, spec)
    elif isinstance(node, list):
        for v in node:
            _patch(v, spec)


def render() -> dict[str, str]:
    """File name → JSON text of every schema."""
    rule, rule_defs = _rule_schema()
    out = {}
    for name, (model, title) in SCHEMAS.items():
        schema = model.model_json_schema(by_alias=True)
        defs = schema.setdefault("$defs", {})
        defs.update(rule_defs)
        defs["RuleSpec"] = {
            **rule,
            "description": "How one FHIR element is filled: an HL7 path, a rule, or a list of those (in order).",
        }
        _patch(schema, defs)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE_ID + name, **schema}
        schema["title"] = title
        out[name] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return out


def stale(folder: Path = FOLDER) -> list[str]:
    """Schema files missing or different from what the models give."""
    return [n for n, text in render().items() if not (folder / n).is_file() or (folder / n).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write (or check) the JSON Schemas of the mapping files.")
    ap.add_argument("--check", action="store_true", help="Exit 1 when a schema file is not current.")
    ap.add_argument("--folder", type=Path, default=FOLDER, help="Where the schemas live.")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.folder)
        for n in bad:
            print(f"{args.folder / n}: not current (python -m engine.transform.schema)", file=sys.stderr)
        return 1 if bad else 0
    args.folder.mkdir(parents=True, exist_ok=True)
    for n, text in render().items():
        (args.folder / n).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
