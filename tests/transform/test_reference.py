"""The fast path agrees with the reference evaluator (``engine/transform/reference.py``).

On every corpus message (``shared/corpus/hl7v2``, run as the corpus channel: MSH-4 as default authority)
and every sibling test case, ``MappingSet.transform(validation="off")`` and ``Reference.transform`` give
byte-identical bundles (same JSON, key order included) or the same refusal (field, code, rule, text).
A hand-fused shortcut that changes what a map means fails here, naming the message or the case.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import hl7v2
from engine.errors import HL7Error, TransformError
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.reference import Reference
from engine.transform.testing import collect_mapping_tests, load_message

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2"
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")


def _corpus() -> list[tuple[str, Path]]:
    manifest = CORPUS / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(encoding="utf-8") as f:
        return [(f"{r['peer']}/{r['file']}", CORPUS / r["peer"] / r["file"]) for r in csv.DictReader(f)]


CORPUS_FILES = _corpus()
CASES = [c for c in collect_mapping_tests([MAPPINGS]) if c.case is not None]


@pytest.fixture(scope="module")
def fast() -> MappingSet:
    return load_mappings(MAPPINGS)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(MAPPINGS)


def _outcome(call: Any) -> bytes | tuple[Any, ...]:
    try:
        return orjson.dumps(call())
    except TransformError as exc:
        return ("refused", exc.field, exc.code, exc.rule, exc.message)


def _same(fast: MappingSet, reference: Reference, message: hl7v2.Message, **kw: Any) -> None:
    got = _outcome(lambda: fast.transform(message, validation="off", **kw))
    want = _outcome(lambda: reference.transform(message, **kw))
    assert got == want


@pytest.mark.skipif(not CORPUS_FILES, reason="HL7 v2 corpus (../shared/corpus/hl7v2) not present")
@pytest.mark.parametrize("path", [p for _k, p in CORPUS_FILES], ids=[k for k, _p in CORPUS_FILES])
def test_corpus_message(fast: MappingSet, reference: Reference, path: Path) -> None:
    try:
        message = hl7v2.Message.parse(hl7v2.decode(path.read_bytes()))
    except HL7Error:
        pytest.skip("the HL7 reader refuses this message (tests/transform/test_corpus.py)")
    _same(fast, reference, message, identifiers=CHANNEL)
    _same(fast, reference, message, identifiers=None)


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.file).name}:{c.line}" for c in CASES])
def test_sibling_case(fast: MappingSet, reference: Reference, case: Any) -> None:
    spec = case.case
    try:
        message = hl7v2.Message.parse(load_message(spec, case.base))
    except HL7Error:
        pytest.skip("the case's message does not parse (its own test says so)")
    _same(fast, reference, message, mapping=spec.mapping, timezone=spec.timezone, identifiers=spec.identifiers)


def test_a_changed_meaning_is_caught(fast: MappingSet, reference: Reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is sensitive: a reference that reads values differently disagrees."""
    import engine.transform.reference as ref_module

    original = ref_module.primitive
    monkeypatch.setattr(ref_module, "primitive", lambda raw, level, d: original(raw, level, d).upper())
    text = (MAPPINGS / "hl7v2" / "samples" / "oru_r01_cbc.hl7").read_text(encoding="utf-8")
    message = hl7v2.Message.parse(text)
    with pytest.raises(AssertionError):
        _same(fast, reference, message, identifiers=CHANNEL)
