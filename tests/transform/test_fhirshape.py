"""The fast FHIR shape check is never more permissive than the fhir.resources R4B models it stands in for:
whatever it proves, the models accept (mapped bundles of the samples and the corpus, and mutations of their
values and keys); and it proves nearly every mapped resource, or validation would not get cheaper."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from engine.errors import TransformError
from engine.transform import load_mappings
from engine.transform.authority import Identifiers
from engine.transform.fhirshape import conforms

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "mappings" / "hl7v2" / "samples").glob("*.hl7"))
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2" / "microsoft-fhir-converter"
CORPUS_FILES = sorted(CORPUS.glob("*.hl7")) if CORPUS.is_dir() else []
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")
#: Values a primitive is replaced with: wrong types, blanks, bad codes, impossible or zoneless dates.
BAD_VALUES: list[Any] = [
    "",
    " lead",
    "two  spaces",
    "tab\there",
    "\x0b",
    "2024-02-30",
    "2024-03-15T08:30:00",
    "2024-03-15T23:59:60Z",
    "2024-13",
    "12:61:00",
    "1.2.3",
    "nan",
    1.5,
    float("inf"),
    2**40,
    -1,
    0,
    True,
    None,
    [],
    {},
]


def _accepted(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _resources(paths: list[Path]) -> list[dict[str, Any]]:
    ms = load_mappings(ROOT / "mappings")
    out = []
    for p in paths:
        try:
            bundle = ms.transform(ms.read(p.read_bytes()), validation="off", identifiers=CHANNEL)
        except TransformError:
            continue  # refused messages make no resources
        out.extend(e["resource"] for e in bundle["entry"])
    return out


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    return _resources(SAMPLES + CORPUS_FILES)


def test_proves_only_what_the_models_accept_and_nearly_everything_mapped(resources: list[dict[str, Any]]) -> None:
    assert resources
    proven = [r for r in resources if conforms(r)]
    for r in proven:
        assert _accepted(r), r["resourceType"]
    assert len(proven) >= 0.95 * len(resources)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "resourceType":
                yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _mutants(resource: dict[str, Any], path: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    """The resource with the value at ``path`` replaced by each bad value in turn (in place, restored)."""
    node = resource
    for p in path[:-1]:
        node = node[p]
    old = node[path[-1]]
    for bad in BAD_VALUES:
        node[path[-1]] = bad
        yield resource
    node[path[-1]] = old


def test_mutated_values_and_keys_are_never_proven_when_the_models_refuse(resources: list[dict[str, Any]]) -> None:
    # One resource of each type keeps this lean (every primitive kind the maps write is reached).
    by_type: dict[str, dict[str, Any]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], r)
    checked = refused = 0
    for original in by_type.values():
        r = copy.deepcopy(original)
        keys: list[dict[str, Any]] = [{**r, "bogus": "x"}, {**r, "_status": {}}, {**r, "resourceType": "Basic"}]
        keys += [{k: v for k, v in r.items() if k != key} for key in r if key != "resourceType"]  # required ones
        for m in (m for path in list(_leaves(r)) for m in _mutants(r, path)):
            checked += 1
            if conforms(m):
                assert _accepted(m), r["resourceType"]
            else:
                refused += 1
        for m in keys:
            checked += 1
            if conforms(m):
                assert _accepted(m), r["resourceType"]
            else:
                refused += 1
    assert checked > 1000 and refused > checked // 2


def test_choice_elements_one_at_most() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a"}
    assert conforms(obs)
    assert not conforms({**obs, "valueBoolean": True})
    assert not _accepted({**obs, "valueBoolean": True})
