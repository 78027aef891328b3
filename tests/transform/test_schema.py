"""The JSON Schemas of the mapping files (``mappings/schema/``): current, and true to the real maps.

The schemas are generated from the models (``python -m engine.transform.schema``); a change to a model
without regenerating them fails here. Every map and sibling-test file in ``mappings/`` validates against
its schema, and the schema refuses what the loader refuses: an unknown key, a rule with a misspelt option.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.transform import schema

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
KINDS = {
    "messages": "message-map.json",
    "segments": "segment-map.json",
    "datatypes": "datatype-map.json",
    "codesystems": "codesystem-map.json",
}


def validator(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((MAPPINGS / "schema" / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def test_schema_files_are_current() -> None:
    assert schema.stale() == [], "run: python -m engine.transform.schema"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    assert schema.main(["--folder", str(tmp_path)]) == 0
    assert schema.main(["--check", "--folder", str(tmp_path)]) == 0
    (tmp_path / "tests.json").write_text("{}")
    assert schema.main(["--check", "--folder", str(tmp_path)]) == 1


FILES = sorted(p for p in (MAPPINGS / "hl7v2").rglob("*.yaml") if p.parent.name in KINDS)


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_every_mapping_file_validates(path: Path) -> None:
    name = "tests.json" if path.name.endswith(".tests.yaml") else KINDS[path.parent.name]
    errors = [e.message for e in validator(name).iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
    assert errors == []


def test_unknown_keys_are_refused() -> None:
    v = validator("segment-map.json")
    good = {"segment": "PID", "target": "Patient", "description": "d", "rules": {"gender": {"from": "PID-8"}}}
    assert v.is_valid(good)
    assert not v.is_valid({**good, "rulez": {}})
    assert not v.is_valid({**good, "rules": {"gender": {"from": "PID-8", "tabel": "0001-administrative-gender"}}})
    assert v.is_valid({**good, "rules": {"name": ["PID-5", {"from": "PID-9", "when": {"present": "PID-9"}}]}})
