"""Strict structure validation: a message checked against its HL7 v2 message structure, per version.

The structures come from hl7apy (a chosen dependency; its parser is ~1000x slower than ``engine.hl7v2``
and stays off the hot path): its tables of message structures (groups, segments, their minimum and
maximum occurrences) and of segments (which fields are required) are read **once per version and
structure** into small tuples (:func:`structure`, :func:`required_fields`, cached), and a message is then
matched against them in one pass — about 20 µs for an 8-OBX ORU^R01 (see ``docs/benchmarks.md``).

:func:`check` raises a TransformError naming the place, never a value:

* ``100`` a required segment (or the first required segment of a required group) is missing, or a segment
  stands where the structure has no place for it (``OBX`` at position 4 of ``ADT_A01``);
* ``101`` a required field of a segment is empty (``PID-3``);
* ``203`` the version (MSH-12) is one hl7apy does not know; ``200`` no structure for the message type.

The structure is MSH-9.3 when sent, else ``<code>_<trigger>`` when the version defines it, else the HL7
table 0354 structure of the trigger event (:data:`EVENT_STRUCTURES`). Z-segments may stand anywhere. A
channel turns this on with ``strict: true``; ``MappingSet.transform(strict=True)`` runs it before mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module
from typing import Any

from engine.errors import TransformError
from engine.hl7v2 import Message

#: HL7 versions hl7apy describes (MSH-12.1 → its module).
VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")

#: HL7 table 0354: the structure of trigger events that share another's (when MSH-9.3 is not sent).
EVENT_STRUCTURES: dict[str, str] = {
    **dict.fromkeys(("ADT^A04", "ADT^A08", "ADT^A13"), "ADT_A01"),
    **dict.fromkeys(("ADT^A14", "ADT^A28", "ADT^A31"), "ADT_A05"),
    "ADT^A07": "ADT_A06",
    **dict.fromkeys(("ADT^A10", "ADT^A11"), "ADT_A09"),
    **dict.fromkeys(
        ("ADT^A22", "ADT^A23", "ADT^A25", "ADT^A26", "ADT^A27", "ADT^A29", "ADT^A32", "ADT^A33"), "ADT_A21"
    ),
    **dict.fromkeys(("ADT^A34", "ADT^A35", "ADT^A36", "ADT^A46", "ADT^A47", "ADT^A48", "ADT^A49"), "ADT_A30"),
    **dict.fromkeys(("ADT^A40", "ADT^A41", "ADT^A42"), "ADT_A39"),
    "ADT^A44": "ADT_A43",
    "ADT^A51": "ADT_A50",
    **dict.fromkeys(("ADT^A53", "ADT^A55"), "ADT_A52"),
    "ADT^A62": "ADT_A61",
    **dict.fromkeys(("MDM^T03", "MDM^T05", "MDM^T07", "MDM^T09", "MDM^T11"), "MDM_T01"),
    **dict.fromkeys(("MDM^T04", "MDM^T06", "MDM^T08", "MDM^T10"), "MDM_T02"),
    **dict.fromkeys(("PPR^PC2", "PPR^PC3"), "PPR_PC1"),
    **dict.fromkeys(("REF^I13", "REF^I14", "REF^I15"), "REF_I12"),
    **dict.fromkeys(("ORU^R31", "ORU^R32"), "ORU_R30"),
    **dict.fromkeys(tuple(f"SIU^S{n}" for n in range(13, 27)), "SIU_S12"),
    "BAR^P05": "BAR_P05",
}


@dataclass(frozen=True, slots=True)
class Node:
    """A segment or a group of a message structure, with its occurrences (``max`` -1: unbounded)."""

    name: str
    min: int
    max: int
    children: tuple[Node, ...] = ()  # a group's children; () for a segment
    first: frozenset[str] = frozenset()  # segments that can start this node

    @property
    def group(self) -> bool:
        return bool(self.children)


def _library(version: str) -> Any:
    return import_module("hl7apy.v" + version.replace(".", "_"))


def _node(name: str, ref: Any, occurs: tuple[int, int], kind: str) -> Node:
    if name == "ANYHL7SEGMENT":  # hl7apy's placeholder for "any segment" (PPR_PC1 v2.6): never required
        return Node(name, 0, -1)
    if kind != "GRP":
        return Node(name, occurs[0], occurs[1], (), frozenset({name}))
    children = tuple(_node(c[0], c[1], c[2], c[3]) for c in ref[1])
    first: set[str] = set()
    for c in children:
        first |= c.first
        if c.min >= 1:
            break
    return Node(name, occurs[0], occurs[1], children, frozenset(first))


@lru_cache(maxsize=512)
def structure(version: str, name: str) -> Node | None:
    """The structure ``name`` (ADT_A01) in ``version`` as a tree, or None when the version has none."""
    ref = _library(version).MESSAGES.get(name)
    return None if ref is None else _node(name, ref, (1, 1), "GRP")


@lru_cache(maxsize=2048)
def required_fields(version: str, segment: str) -> tuple[int, ...]:
    """Field numbers of ``segment`` the version requires (MSH-1 and MSH-2 are always there)."""
    ref = _library(version).SEGMENTS.get(segment)
    if ref is None:
        return ()
    return tuple(n for n, child in enumerate(ref[1], start=1) if child[2][0] >= 1)


def version_of(message: Message) -> str:
    d = message.delimiters
    v = message.header.field(12).split(d.repetition, 1)[0].split(d.component, 1)[0].strip()
    if v in VERSIONS:
        return v
    raise TransformError("HL7 version is not one the structures describe", field="MSH-12", rule="strict", code="203")


def structure_name(message: Message, version: str) -> str:
    d = message.delimiters
    msh9 = [c.strip() for c in message.header.field(9).split(d.repetition, 1)[0].split(d.component)]
    messages = _library(version).MESSAGES
    candidates = [msh9[2] if len(msh9) > 2 else "", "_".join(msh9[:2]), EVENT_STRUCTURES.get("^".join(msh9[:2]), "")]
    for c in candidates:
        if c and c in messages:
            return c
    raise TransformError(
        "no message structure is known for this message type in this version", field="MSH-9", rule="strict", code="200"
    )


def check(message: Message) -> None:
    """Match the message against its structure; TransformError at the first problem (module docstring)."""
    version = version_of(message)
    name = structure_name(message, version)
    tree = structure(version, name)
    assert tree is not None
    segments = [s for s in message.segments if not s.name.startswith("Z")]
    names = [s.name for s in segments]
    problems: list[TransformError] = []
    end = _match(tree.children, names, 0, problems)
    if problems:
        raise problems[0]
    if end < len(names):
        raise TransformError(
            f"segment {names[end]} at position {end + 1} has no place in structure {name} (v{version})",
            field=names[end],
            rule="strict",
            code="100",
        )
    d = message.delimiters
    blank = d.component + d.subcomponent + d.repetition + " "
    for seg in segments:
        for n in required_fields(version, seg.name):
            if seg.name == "MSH" and n <= 2:
                continue
            raw = seg.fields[n] if n < len(seg.fields) else ""
            if not raw.strip(blank) or raw == '""':
                raise TransformError(
                    f"required field is empty (structure {name}, v{version})",
                    field=f"{seg.name}-{n}",
                    rule="strict",
                    code="101",
                )


def _match(children: tuple[Node, ...], names: list[str], i: int, problems: list[TransformError]) -> int:
    """Greedy match of a sequence of nodes from position ``i``; returns the position after it."""
    for child in children:
        count = 0
        while (child.max == -1 or count < child.max) and i < len(names) and names[i] in child.first:
            if child.group:
                j = _match(child.children, names, i, problems)
                if j == i:
                    break
                i = j
            else:
                i += 1
            count += 1
        if count < child.min and not problems:
            missing = child.name if not child.group else _first_required(child)
            problems.append(
                TransformError(f"required segment {missing} is missing", field=missing, rule="strict", code="100")
            )
    return i


def _first_required(group: Node) -> str:
    for c in group.children:
        if c.min >= 1:
            return c.name if not c.group else _first_required(c)
    return group.name
