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

Each input kind's maps have their own sibling tests, in their own folder (``mappings/hl7v2/``,
``mappings/dicom/``); a case runs through the maps of its kind, the same path the worker takes. A DICOM case
names its instances instead of a message (paths relative to the tests file; a folder is every DICOM file
under it) and the calling AE title they came from (``identifiers: by_application`` keys on it); they become
one study exactly as the DICOM source would assemble it (``engine.sources.dicom_files``):

    tests:
      - name: a CT study with two series
        message: ../samples/ct_chest             # a .dcm file, a folder, or a list of them: one study
        calling_ae: MODALITY                     # default: none
        count: {ImagingStudy: 1, Patient: 1}
      - name: an instance without Study Instance UID is refused, as the source refuses it (0xC000)
        message: ../samples/no_study_uid.dcm
        error: {field: "(0020,000D)", code: invalid}

An instance the source would refuse fails with its place (a tag) as ``field`` and what is wrong
(``invalid``, ``unreadable``…) as ``code``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from engine import hl7v2
from engine.config import yamlfile
from engine.errors import ConfigError, HL7Error, InboundError, TransformError
from engine.transform.authority import Identifiers
from engine.transform.library import map_dir
from engine.transform.mappingset import OTHER_KINDS, MappingSet, load_mappings
from engine.transform.spec import CasesFile, CaseSpec, Fact

#: every input kind with maps (and so sibling tests) of its own
ALL_KINDS = ("hl7v2", *OTHER_KINDS)

_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


class DicomCaseSpec(CaseSpec):
    """One sibling test case of a DICOM map: instances instead of an HL7 message."""

    message: str | list[str] = Field(  # type: ignore[assignment]
        description="DICOM instances forming one study: a .dcm file or a folder (every DICOM file under it), "
        "or a list of them; paths relative to the test file."
    )
    calling_ae: str = Field(
        "", description="The calling AE title the study came from (what `identifiers: by_application` keys on)."
    )


class DicomCasesFile(CasesFile):
    """A sibling test file of DICOM maps."""

    tests: list[DicomCaseSpec] = Field(description="The cases.")  # type: ignore[assignment]


_CASES_FILES: dict[str, type[CasesFile]] = {"dicom": DicomCasesFile}


@dataclass
class MappingTestCase:
    """One case, where it was written."""

    name: str
    file: str
    line: int
    case: CaseSpec | None  # None when the test file itself could not be read
    base: Path
    problem: str = ""
    kind: str = "hl7v2"  # the input kind: which maps the case runs through


@dataclass
class MappingTestResult:
    name: str
    file: str
    line: int
    passed: bool
    failures: list[str] = field(default_factory=list)


def sibling_test_files(roots: list[Path], kind: str = "hl7v2") -> list[Path]:
    out: list[Path] = []
    for root in roots:
        base = map_dir(root, kind)
        if base.is_dir():
            out.extend(sorted(base.rglob("*.tests.yaml")))
    return out


def collect_mapping_tests(roots: list[Path], kinds: Sequence[str] = ("hl7v2",)) -> list[MappingTestCase]:
    """Every case of every ``*.tests.yaml`` under the mapping folders of these input kinds (base, then
    overlays; :data:`ALL_KINDS` for every kind)."""
    cases: list[MappingTestCase] = []
    for kind in kinds:
        model = _CASES_FILES.get(kind, CasesFile)
        for path in sibling_test_files(roots, kind):
            try:
                doc = yamlfile.load(path)
                spec: CasesFile = doc.validate(model)
            except ConfigError as exc:
                cases.append(MappingTestCase(path.name, str(path), exc.line or 1, None, path.parent, str(exc), kind))
                continue
            for i, case in enumerate(spec.tests):
                line = doc.line(("tests", i)) or 1
                cases.append(MappingTestCase(case.name, str(path), line, case, path.parent, kind=kind))
    return cases


def run_mapping_tests(
    mappings: MappingSet | Path, *, overlays: list[Path] | None = None, identifiers: Identifiers | None = None
) -> list[MappingTestResult]:
    """Run every sibling test of a mapping set (or of the mapping folder given), of every input kind.

    ``identifiers``: the default assigning authority of cases that declare none (a channel's).
    """
    ms = mappings if isinstance(mappings, MappingSet) else load_mappings(mappings, overlays=overlays or [])
    return [run_case(ms, c, identifiers) for c in collect_mapping_tests(ms.roots, ALL_KINDS)]


def load_message(case: CaseSpec, base: Path) -> str:
    """The HL7 message of a case: inline, or read from the file it names."""
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
    if tc.kind != "hl7v2":
        return _run_kind_case(ms, case, tc, identifiers, result)
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


def dicom_study(case: DicomCaseSpec, base: Path) -> bytes:
    """The study message of a DICOM case (its instances, read and assembled as the source does).

    Raises ConfigError when a path cannot be read, InboundError for an instance the source would refuse."""
    from engine.sources.dicom_files import instance_files, study_from_files

    names = [case.message] if isinstance(case.message, str) else case.message
    missing = [n for n in names if not (base / n).exists()]
    if missing:
        raise ConfigError(f"cannot read test instances {', '.join(missing)} (no such file or folder)")
    files, _ = instance_files(base / n for n in names)
    try:
        return study_from_files(files, case.calling_ae, assembled_at=0.0)
    except OSError as exc:
        raise ConfigError(f"cannot read test instances ({exc.strerror})") from None


def _raw_message(case: CaseSpec, base: Path) -> bytes:
    """The input of a case of another kind (a JSON event…): inline, or the bytes of the file it names."""
    text = case.message
    assert isinstance(text, str)
    if "\n" in text.strip() or text.lstrip()[:1] in ("{", "["):
        return text.encode("utf-8")
    try:
        return (base / text).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read test message {text} ({exc.strerror})") from None


def _run_kind_case(
    ms: MappingSet, case: CaseSpec, tc: MappingTestCase, identifiers: Identifiers | None, result: MappingTestResult
) -> MappingTestResult:
    """A case of an input kind other than HL7 v2, through the worker's own path (``pool.map_one``)."""
    from engine.transform.pool import Job, map_one

    try:
        raw = dicom_study(case, tc.base) if isinstance(case, DicomCaseSpec) else _raw_message(case, tc.base)
    except ConfigError as exc:
        result.failures.append(str(exc))
        return result
    except InboundError as exc:  # an instance the DICOM source would refuse
        result.failures.extend(_check_error(case, exc))
        result.passed = not result.failures
        return result
    job = Job(raw, "utf-8", case.mapping, "full", case.timezone,
              identifiers if case.identifiers is None else case.identifiers, kind=tc.kind)  # fmt: skip
    mapped = map_one(ms, job)
    if mapped.error is not None:
        result.failures.extend(_check_error(case, mapped.error))
    else:
        if case.error is not None:
            result.failures.append("expected the message to be rejected, but it was mapped")
        result.failures.extend(_check_bundle(case, orjson.loads(mapped.bundle) if mapped.bundle else {}))
    result.passed = not result.failures
    return result


def _check_error(case: CaseSpec, exc: TransformError | InboundError) -> list[str]:
    if case.error is None:
        return [f"rejected: {exc}" + (f" (rule {exc.rule})" if isinstance(exc, TransformError) else "")]
    want = case.error
    field_ = exc.field if isinstance(exc, TransformError) else exc.location
    # an HL7 error's code is its table 0357 condition; a source's refusal says what is wrong (its kind)
    code = exc.code if isinstance(exc, TransformError | HL7Error) else exc.kind
    out = []
    if want.field is not None and field_ != want.field:
        out.append(f"error field: expected {want.field}, got {field_ or '(none)'} ({exc})")
    if want.code is not None and code != want.code:
        out.append(f"error code: expected {want.code}, got {code} ({exc})")
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
