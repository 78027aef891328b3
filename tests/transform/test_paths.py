"""HL7 path notation: parsing and the values getters select."""

from __future__ import annotations

import pytest

from engine.hl7v2 import Message
from engine.transform.dates import zone
from engine.transform.execute import Instance, Run
from engine.transform.paths import (
    ALL,
    Env,
    PathError,
    parse_datatype_path,
    parse_segment_path,
    segment_getter,
)

MSG = Message.parse(
    "MSH|^~\\&|APP|FAC|||20240101||ORU^R01^ORU_R01|1|P|2.5.1\r"
    'PID|1||A1^^^H^MR~B2^^^S&1.2.3&ISO^SS||DOE^JOHN^Q~ALIAS^JJ||19700101|M|||""\r'
    "NTE|1||first\r"
    "NTE|2||second \\T\\ third\r"
)


def env(segment: str | None = None) -> Env:
    run = Run(MSG, zone("UTC"))
    scope = Instance(None, None, run, 0, len(MSG.segments))
    cur = MSG.first(segment) if segment else None
    return Env(scope, cur, segment or "", run)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("PID-3", ("PID", None, 3, None, None, None)),
        ("PID-3[*]", ("PID", None, 3, ALL, None, None)),
        ("PID-3[2].4.2", ("PID", None, 3, 2, 4, 2)),
        ("NTE[*]", ("NTE", ALL, None, None, None, None)),
        ("OBX-5.1", ("OBX", None, 5, None, 1, None)),
    ],
)
def test_parse_segment_paths(text: str, parts: tuple[object, ...]) -> None:
    p = parse_segment_path(text)
    assert (p.segment, p.seg_rep, p.field, p.rep, p.component, p.sub) == parts
    assert p.label == (p.segment if p.field is None else f"{p.segment}-{p.field}")


@pytest.mark.parametrize("text", ["pid-3", "PID-0", "PID-3.", "PID-3[0]", "PID3", "PID-3.1.2.3", "PID-3[x]"])
def test_bad_segment_paths(text: str) -> None:
    with pytest.raises(PathError):
        parse_segment_path(text)


def test_datatype_paths_start_with_the_datatype() -> None:
    p = parse_datatype_path("CX.4.1", "CX")
    assert p is not None and (p.component, p.sub) == (4, 1)
    assert parse_datatype_path("XPN.1", "CX") is None
    assert p.level(1) == 3


def test_getters_select_repetitions_components_and_subcomponents() -> None:
    e = env("PID")
    assert segment_getter(parse_segment_path("PID-3"), "PID")(e) == ["A1^^^H^MR"]
    assert segment_getter(parse_segment_path("PID-3[*].1"), "PID")(e) == ["A1", "B2"]
    assert segment_getter(parse_segment_path("PID-3[2].4.2"), "PID")(e) == ["1.2.3"]
    assert segment_getter(parse_segment_path("PID-5[*].2"), "PID")(e) == ["JOHN", "JJ"]
    assert segment_getter(parse_segment_path("PID-99"), "PID")(e) == []


def test_explicit_null_is_empty() -> None:
    assert segment_getter(parse_segment_path("PID-11"), "PID")(env("PID")) == []


def test_other_segments_come_from_the_scope_and_msh_keeps_its_numbering() -> None:
    e = env("PID")
    assert segment_getter(parse_segment_path("MSH-9.2"), "PID")(e) == ["R01"]
    assert segment_getter(parse_segment_path("MSH-2"), "PID")(e) == ["^~\\&"]
    assert [s.name for s in segment_getter(parse_segment_path("NTE[*]"), "PID")(e)] == ["NTE", "NTE"]
    assert segment_getter(parse_segment_path("NTE[2]-3"), "PID")(e) == ["second \\T\\ third"]
