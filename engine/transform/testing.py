"""Sibling tests of the mappings: ``<map>.tests.yaml`` beside a map, run by ``interlink test`` and pytest.

    tests:
      - name: CBC with 8 results
        message: ../samples/oru_r01_cbc.hl7      # a file relative to this one, or the message inline
        count: {Patient: 1, DiagnosticReport: 1, Observation: 8}
        expect:
          - {path: Patient.birthDate, equals: "1962-03-20"}
          - {path: "Observation[2].valueQuantity.value", equals: 11.8}
          - {path: Observation.code.coding.code, contains: "718-7"}
          - {path: DiagnosticReport.result.reference, refers_to: Observation}
      - name: an impossible birth date is rejected
        message: |
          MSH|^~\\&|...
        error: {field: PID-7, code: "102"}
      - name: a PID-3 without assigning authority takes the sender's default
        identifiers: {by_facility: {NORTH: NORTHHOSP}}    # as a channel's `identifiers:`
        message: ...

A *path* starts with a resource type (every entry of that type, in bundle order) or ``Bundle``, optionally
indexed (``Observation[0]``), then element names, each optionally indexed; lists are flattened along the
way, so ``Observation.code.coding.code`` is every code of every Observation. ``equals`` compares the
values found (one value, or the list given); ``contains`` wants one of them; ``exists`` says whether
there is any; ``refers_to`` wants every value to be the fullUrl of an entry of that type. Every case runs
with full FHIR validation, and with the default assigning authority of its own ``identifiers:`` (``{}``:
none), else the one the runner is given (``interlink test --channel``), else none.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import hl7v2
from engine.config import yamlfile
from engine.errors import ConfigError, HL7Error, TransformError
from engine.transform.authority import Identifiers
from engine.transform.library import map_dir
from engine.transform.mappingset import MappingSet, load_mappings
from engine.transform.spec import CasesFile, CaseSpec, Fact

_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


@dataclass
class MappingTestCase:
    """One case, where it was written."""

    name: str
    file: str
    line: int
    case: CaseSpec | None  # None when the test file itself could not be read
    base: Path
    problem: str = ""


@dataclass
class MappingTestResult:
    name: str
    file: str
    line: int
    passed: bool
    failures: list[str] = field(default_factory=list)


def sibling_test_files(roots: list[Path]) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        base = map_dir(root)
        out.extend(sorted(base.rglob("*.tests.yaml")))
    return out


def collect_mapping_tests(roots: list[Path]) -> list[MappingTestCase]:
    """Every case of every ``*.tests.yaml`` under the mapping folders (base, then overlays)."""
    cases: list[MappingTestCase] = []
    for path in sibling_test_files(roots):
        try:
            doc = yamlfile.load(path)
            spec: CasesFile = doc.validate(CasesFile)
        except ConfigError as exc:
            cases.append(MappingTestCase(path.name, str(path), exc.line or 1, None, path.parent, str(exc)))
            continue
        for i, case in enumerate(spec.tests):
            line = doc.line(("tests", i)) or 1
            cases.append(MappingTestCase(case.name, str(path), line, case, path.parent))
    return cases


def run_mapping_tests(
    mappings: MappingSet | Path, *, overlays: list[Path] | None = None, identifiers: Identifiers | None = None
) -> list[MappingTestResult]:
    """Run every sibling test of a mapping set (or of the mapping folder given).

    ``identifiers``: the default assigning authority of cases that declare none (a channel's).
    """
    ms = mappings if isinstance(mappings, MappingSet) else load_mappings(mappings, overlays=overlays or [])
    return [run_case(ms, c, identifiers) for c in collect_mapping_tests(ms.roots)]


def load_message(case: CaseSpec, base: Path) -> str:
    text = case.message
    if "\n" in text.strip() or text.lstrip().startswith("MSH"):
        return text
    path = base / text
    try:
        return hl7v2.decode(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read test message {text} ({exc.strerror})") from None


def run_case(ms: MappingSet, tc: MappingTestCase, identifiers: Identifiers | None = None) -> MappingTestResult:
    result = MappingTestResult(tc.name, tc.file, tc.line, False)
    case = tc.case
    if case is None:
        result.failures.append(tc.problem)
        return result
    try:
        message = hl7v2.Message.parse(load_message(case, tc.base))
        bundle = ms.transform(
            message,
            mapping=case.mapping,
            validation="full",
            timezone=case.timezone,
            identifiers=identifiers if case.identifiers is None else case.identifiers,
        )
    except ConfigError as exc:
        result.failures.append(str(exc))
        return result
    except (TransformError, HL7Error) as exc:
        result.failures.extend(_check_error(case, exc))
        result.passed = not result.failures
        return result
    if case.error is not None:
        result.failures.append("expected the message to be rejected, but it was mapped")
    result.failures.extend(_check_bundle(case, bundle))
    result.passed = not result.failures
    return result


def _check_error(case: CaseSpec, exc: TransformError | HL7Error) -> list[str]:
    if case.error is None:
        return [f"rejected: {exc}" + (f" (rule {exc.rule})" if isinstance(exc, TransformError) else "")]
    want = case.error
    field_ = exc.field if isinstance(exc, TransformError) else exc.location
    out = []
    if want.field is not None and field_ != want.field:
        out.append(f"error field: expected {want.field}, got {field_ or '(none)'} ({exc})")
    if want.code is not None and exc.code != want.code:
        out.append(f"error code: expected {want.code}, got {exc.code} ({exc})")
    if want.contains is not None and want.contains not in str(exc):
        out.append(f"error message does not contain {want.contains!r}: {exc}")
    return out


def values_at(bundle: dict[str, Any], path: str) -> list[Any]:
    """The values found at a fact path (see the module docstring)."""
    steps = path.split(".")
    m = _STEP.match(steps[0])
    if not m:
        raise ValueError(f"bad path {path!r}")
    head, idx = m.group(1), m.group(2)
    if head == "Bundle":
        current: list[Any] = [bundle]
    else:
        current = [e["resource"] for e in bundle.get("entry", []) if e["resource"].get("resourceType") == head]
    current = _index(current, idx)
    for step in steps[1:]:
        m = _STEP.match(step)
        if not m:
            raise ValueError(f"bad path {path!r}")
        name, idx = m.group(1), m.group(2)
        found: list[Any] = []
        for v in current:
            got = v.get(name) if isinstance(v, dict) else None
            if isinstance(got, list):
                found.extend(got)
            elif got is not None:
                found.append(got)
        current = _index(found, idx)
    return current


def _index(values: list[Any], idx: str | None) -> list[Any]:
    if idx is None:
        return values
    i = int(idx)
    return [values[i]] if i < len(values) else []


def _check_bundle(case: CaseSpec, bundle: dict[str, Any]) -> list[str]:
    out = []
    counts = Counter(e["resource"]["resourceType"] for e in bundle.get("entry", []))
    for rtype, n in case.count.items():
        if counts.get(rtype, 0) != n:
            out.append(f"count {rtype}: expected {n}, got {counts.get(rtype, 0)}")
    urls = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle.get("entry", [])}
    for fact in case.expect:
        try:
            out.extend(_check_fact(fact, values_at(bundle, fact.path), urls))
        except ValueError as exc:
            out.append(str(exc))
    return out


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def _check_fact(fact: Fact, values: list[Any], urls: dict[str, str]) -> list[str]:
    out = []
    p = fact.path
    if fact.equals is not None:
        want = fact.equals if isinstance(fact.equals, list) else [fact.equals]
        if values != want:
            out.append(f"{p}: expected {_short(fact.equals)}, got {_short(values)}")
    if fact.contains is not None and fact.contains not in values:
        out.append(f"{p}: expected to contain {_short(fact.contains)}, got {_short(values)}")
    if fact.exists is not None and bool(values) != fact.exists:
        out.append(f"{p}: expected {'some value' if fact.exists else 'no value'}, got {_short(values)}")
    if fact.refers_to is not None:
        bad = [v for v in values if urls.get(v) != fact.refers_to]
        if bad or not values:
            out.append(f"{p}: expected references to {fact.refers_to} entries, got {_short(values)}")
    if all(x is None for x in (fact.equals, fact.contains, fact.exists, fact.refers_to)):
        out.append(f"{p}: a fact needs equals, contains, exists or refers_to")
    return out
