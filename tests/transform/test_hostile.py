"""Bad input: refused with an error naming the place and the rule, never a crash, a hang or half a bundle.

Caps on one message (repetitions, components, segments, size: ``engine/transform/limits.py``), forged
segments (a raw terminator of another kind inside a field), unterminated or unknown escape sequences, values
of the wrong type, impossible dates, unknown message types; strict structure validation from hl7apy
(``engine/transform/structure.py``); versions 2.3 → 2.8 read alike; and Hypothesis property tests: random
field content never crashes or hangs the mapper, and the fast path and the reference evaluator agree on it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import hl7v2
from engine.errors import HL7Error, TransformError
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.limits import Limits
from engine.transform.reference import Reference
from engine.transform.structure import check as check_structure
from engine.transform.validate import validate_bundle

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
SAMPLES = MAPPINGS / "hl7v2" / "samples"
CORPUS = ROOT / ".." / "shared" / "corpus" / "hl7v2"
CHANNEL = Identifiers(facility_as_authority=True, authority="TEST")
ORU = (SAMPLES / "oru_r01_cbc.hl7").read_text(encoding="utf-8")
ADT = (SAMPLES / "adt_a01.hl7").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def segments(text: str) -> list[str]:
    return hl7v2.split_segments(text)


def with_field(text: str, segment: str, n: int, value: str, occurrence: int = 0) -> str:
    segs = segments(text)
    i = [k for k, s in enumerate(segs) if s.startswith(segment + "|")][occurrence]
    fields = segs[i].split("|")
    fields += [""] * (n + 1 - len(fields))
    fields[n if segment != "MSH" else n - 1] = value
    segs[i] = "|".join(fields)
    return "\r".join(segs)


def refused(ms: MappingSet, text: str, **kw: object) -> TransformError:
    with pytest.raises(TransformError) as exc:
        ms.transform(ms.read(text.encode()), validation="full", identifiers=CHANNEL, **kw)  # type: ignore[arg-type]
    return exc.value


# -- caps --------------------------------------------------------------------------------------------------


def test_a_repetition_bomb_is_refused_naming_the_cap_and_field(ms: MappingSet) -> None:
    bomb = "~".join(["X^Y^Z"] * 200_000)  # 1.2 MB in one field
    err = refused(ms, with_field(ORU, "PID", 13, bomb))
    assert (err.field, err.rule, err.code) == ("PID-13", "limits.max_repetitions", "207")
    assert "1000" in err.message and "X^Y" not in err.message


def test_component_and_subcomponent_bombs_are_refused(ms: MappingSet) -> None:
    err = refused(ms, with_field(ORU, "OBX", 5, "^" * 5000))
    assert (err.field, err.rule) == ("OBX-5", "limits.max_components")
    err = refused(ms, with_field(ORU, "PID", 11, "A&" * 5000))
    assert (err.field, err.rule) == ("PID-11", "limits.max_components")


def test_a_segment_bomb_is_refused(ms: MappingSet) -> None:
    obx = next(s for s in segments(ORU) if s.startswith("OBX|"))
    err = refused(ms, "\r".join([*segments(ORU), *[obx] * 20_000]))
    assert (err.field, err.rule) == ("MSH", "limits.max_segments")


def test_caps_are_configurable(tmp_path: Path) -> None:
    tight = load_mappings(MAPPINGS, limits=Limits(max_repetitions=2, max_bytes=100_000))
    two = with_field(ORU, "PID", 3, "A^^^H^MR~B^^^H^PI")
    assert tight.transform(tight.read(two.encode()), validation="off", identifiers=CHANNEL)["entry"]
    err = refused(tight, with_field(ORU, "PID", 3, "A^^^H^MR~B^^^H^PI~C^^^H^PN"))
    assert (err.field, err.rule) == ("PID-3", "limits.max_repetitions")
    err = refused(tight, with_field(ORU, "NTE", 3, "x" * 100_001))
    assert err.rule == "limits.max_bytes"


# -- forged segments and escapes ----------------------------------------------------------------------------


def test_a_raw_terminator_of_another_kind_inside_a_field_is_a_forged_segment(ms: MappingSet) -> None:
    forged = with_field(ORU, "NTE", 3, "fine.\nPID|1||OTHER^^^H^MR||INTRUDER^EVE")
    err = refused(ms, forged)
    assert (err.field, err.code, err.rule) == ("NTE", "100", "limits.terminators")
    assert "INTRUDER" not in err.message


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_one_terminator_throughout_is_fine(ms: MappingSet, terminator: str) -> None:
    text = terminator.join(segments(ORU)) + terminator
    assert ms.transform(ms.read(text.encode()), validation="off", identifiers=CHANNEL)["entry"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a \\E\\ b \\F\\ c \\.br\\ d \\X0D0A\\ \\H\\bold\\N\\ \\.sp2\\ \\Zlocal\\", True),
        ("unterminated \\E", False),
        ("unknown \\Q\\ sequence", False),
        ("bad hex \\X4G\\", False),
        ("odd hex \\X414\\", False),
    ],
)
def test_escape_sequences_are_checked(ms: MappingSet, value: str, ok: bool) -> None:
    text = with_field(ORU, "NTE", 3, value)
    if ok:
        assert ms.transform(ms.read(text.encode()), validation="full", identifiers=CHANNEL)["entry"]
    else:
        err = refused(ms, text)
        assert (err.field, err.code, err.rule) == ("NTE-3", "102", "limits.escapes")


# -- values -------------------------------------------------------------------------------------------------


def test_wrong_values_are_refused_naming_the_field(ms: MappingSet) -> None:
    err = refused(ms, with_field(ORU, "OBX", 5, "positive"))  # NM
    assert (err.field, err.code) == ("OBX-5", "102")
    err = refused(ms, with_field(ORU, "PID", 7, "19991340"))
    assert (err.field, err.code) == ("PID-7", "102")
    err = refused(ms, with_field(ORU, "MSH", 9, "ZZZ^Z99"))
    assert (err.field, err.code) == ("MSH-9", "200")


def test_broken_base64_in_an_ed_value_is_refused_if_mapped(ms: MappingSet) -> None:
    text = with_field(with_field(ORU, "OBX", 2, "ED"), "OBX", 5, "LAB^application^pdf^Base64^JVBERi0x@@@")
    try:
        ms.transform(ms.read(text.encode()), validation="full", identifiers=CHANNEL)
    except TransformError as exc:
        assert exc.field == "OBX-5" and exc.code in ("102", "103")
    else:
        pytest.fail("broken base64 was mapped")


# -- strict structure ---------------------------------------------------------------------------------------


def test_strict_accepts_a_well_formed_message_and_z_segments(ms: MappingSet) -> None:
    text = "\r".join([*segments(ORU), "ZPX|1|site"])
    assert ms.transform(ms.read(text.encode()), validation="off", identifiers=CHANNEL, strict=True)["entry"]


@pytest.mark.parametrize(
    ("sample", "change", "field", "code"),
    [
        (ADT, lambda t: "\r".join(s for s in segments(t) if not s.startswith("PID|")), "PID", "100"),
        (ORU, lambda t: with_field(t, "PID", 3, ""), "PID-3", "101"),
        (ORU, lambda t: with_field(t, "MSH", 12, "9.9"), "MSH-12", "203"),
        (ORU, lambda t: "\r".join([*segments(t), "MSA|AA|1"]), "MSA", "100"),
    ],
    ids=["missing-PID", "empty-PID-3", "unknown-version", "MSA-out-of-place"],
)
def test_strict_refuses_structure_errors(ms: MappingSet, sample: str, change: object, field: str, code: str) -> None:
    err = refused(ms, change(sample), strict=True)  # type: ignore[operator]
    assert (err.field, err.code, err.rule) == (field, code, "strict")


def test_strict_is_off_by_default(ms: MappingSet) -> None:
    text = "\r".join([*segments(ORU), "MSA|AA|1"])
    ms.transform(ms.read(text.encode()), validation="off", identifiers=CHANNEL)  # no structure error


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_strict_knows_every_version_of_the_range(version: str) -> None:
    check_structure(hl7v2.Message.parse(with_field(ADT, "MSH", 12, version)))


# -- versions 2.3 to 2.8 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
@pytest.mark.parametrize("sample", ["oru_r01_cbc.hl7", "adt_a01.hl7"])
def test_every_version_maps_alike(ms: MappingSet, version: str, sample: str) -> None:
    text = (SAMPLES / sample).read_text(encoding="utf-8")
    base = ms.transform(hl7v2.Message.parse(text), validation="off", identifiers=CHANNEL)
    other = ms.transform(
        hl7v2.Message.parse(with_field(text, "MSH", 12, version)), validation="full", identifiers=CHANNEL
    )
    assert other == base


def test_ce_values_of_older_versions_read_like_cwe(ms: MappingSet) -> None:
    """v2.3/2.4 send CE (6 components) where v2.5+ send CWE: the same codings come out."""
    ce = with_field(with_field(ORU, "MSH", 12, "2.3"), "OBX", 3, "718-7^Hemoglobin^LN^HGB^Hgb^L")
    bundle = ms.transform(hl7v2.Message.parse(ce), validation="full", identifiers=CHANNEL)
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    codes = [(c.get("system"), c["code"]) for c in obs["code"]["coding"]]
    assert codes == [("http://loinc.org", "718-7"), (None, "HGB")]


def _corpus_by_version() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    if (CORPUS / "manifest.csv").is_file():
        with (CORPUS / "manifest.csv").open(encoding="utf-8") as f:
            for r in csv.DictReader(f):
                out.setdefault(r["version"], []).append(CORPUS / r["peer"] / r["file"])
    return out


BY_VERSION = _corpus_by_version()


@pytest.mark.skipif(not BY_VERSION, reason="HL7 v2 corpus not present")
@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1", "2.6", "2.8"])
def test_corpus_messages_of_each_version_map_to_valid_bundles(ms: MappingSet, version: str) -> None:
    mapped = 0
    for path in BY_VERSION.get(version, []):
        try:
            bundle = ms.transform(ms.read(path.read_bytes()), validation="full", identifiers=CHANNEL)
        except (TransformError, HL7Error) as exc:
            assert getattr(exc, "code", None), "a refusal always names its code"
            continue
        validate_bundle(bundle)
        patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
        assert all(p.get("identifier") for p in patients)
        mapped += 1
    assert mapped >= 1, f"no corpus message of version {version} maps"


# -- property tests -----------------------------------------------------------------------------------------

TOKENS = [*"AZaz09 .-+/:<>\\^~&|\"'éß\u00a0\t", "\\E\\", "\\F\\", "\\X41\\", '""', "20240315", "1.5", "NM", "CWE"]
FIELD_TEXT = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)
PLACES = [("PID", 3), ("PID", 5), ("PID", 7), ("PID", 8), ("PID", 11), ("PID", 13), ("PV1", 2), ("PV1", 19)]
PLACES += [("OBR", 3), ("OBR", 7), ("OBR", 25), ("OBX", 2), ("OBX", 3), ("OBX", 5), ("OBX", 6), ("OBX", 7)]
PLACES += [("OBX", 8), ("OBX", 11), ("OBX", 14), ("NTE", 3), ("MSH", 7), ("MSH", 12)]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(MAPPINGS)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(st.tuples(st.sampled_from(PLACES), FIELD_TEXT), min_size=1, max_size=6))
def test_random_field_content_never_crashes_and_both_evaluators_agree(
    ms: MappingSet, reference: Reference, changes: list[tuple[tuple[str, int], str]]
) -> None:
    text = ORU
    for (segment, n), value in changes:
        text = with_field(text, segment, n, value)
    try:
        message = ms.read(text.encode())
    except (HL7Error, TransformError):
        return  # refused by the reader: a named error, not a crash
    outcomes = []
    for run in (
        lambda: ms.transform(message, validation="off", identifiers=CHANNEL),
        lambda: reference.transform(message, identifiers=CHANNEL),
    ):
        try:
            outcomes.append(run())
        except TransformError as exc:
            assert exc.code and (exc.field or exc.rule)
            outcomes.append((exc.field, exc.code, exc.rule))
    assert outcomes[0] == outcomes[1]
    if isinstance(outcomes[0], dict):
        try:
            validate_bundle(outcomes[0])
        except TransformError as exc:  # the bundle is not valid FHIR: a rule let a value through unchecked
            pytest.fail(f"mapped to an invalid bundle: {exc}")


@pytest.mark.parametrize("blank", [" ", "\t", "\u00a0", " \u2003 "])
def test_a_blank_reference_range_makes_no_range(ms: MappingSet, blank: str) -> None:
    """Found by the property test: OBX-7 of only white space made ``referenceRange: [{text: ""}]`` (invalid)."""
    bundle = ms.transform(hl7v2.Message.parse(with_field(ORU, "OBX", 7, blank)), validation="full", identifiers=CHANNEL)
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert "referenceRange" not in obs
