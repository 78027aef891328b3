"""DICOM input for the one mapping compiler and runtime: a study as records, and DICOM source paths.

The runtime reads a message as an ordered list of named records (HL7 segments). A DICOM study becomes:

    MSH        routing facts: MSH-3 the calling AE title (``identifiers: by_application``), MSH-4 the
               InstitutionName, MSH-9 ``study`` (the message type a DICOM message map ``accepts``)
    STUDY      the study (attributes of its first instance), with NumberOfStudyRelatedSeries,
               NumberOfStudyRelatedInstances and ModalitiesInStudy set from what was received
    SERIES     one per series (attributes of its first instance, NumberOfSeriesRelatedInstances set),
               in SeriesNumber order, each followed by
    INSTANCE   one per instance, in InstanceNumber order

so message maps select ``segment: STUDY`` and segment maps read ``STUDY``, ``SERIES`` or ``INSTANCE``
records. Source paths (``mappings/dicom/``) are written in DICOM's own notation:

    StudyInstanceUID  (0020,000D)     an attribute of the current record (its first value)
    ModalitiesInStudy[*]              every value of a multi-valued attribute    [2]  the second
    PatientName.1                     a component (PN: 1 family, 2 given, 3 middle, 4 prefix, 5 suffix)
    ProcedureCodeSequence.CodeValue   an attribute of a sequence's first item (``[*]``: every item)
    STUDY.AccessionNumber             an attribute of another level (the enclosing study or series)
    SERIES[*]  INSTANCE[*]            records below the current one (each series; a series' instances)

Values reach rules as HL7-escaped text (a PN's ``^`` are its components), so every function, table and
datatype map works on them unchanged. Datatype maps of the DICOM folder are named by VR (``PN.1``).
``where:`` filters are not available on DICOM paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from engine.errors import TransformError
from engine.hl7v2 import DEFAULT_DELIMITERS, Message, Segment
from engine.transform import (
    dicom_functions,  # noqa: F401  (registers the DICOM functions in the closed registry)
    paths,
)
from engine.transform.paths import ALL, EMPTY, Env, Getter, PathError
from engine.transform.records import enclosing, escape

__all__ = ["LEVELS", "DicomNotation", "Record", "study_message"]

LEVELS = ("STUDY", "SERIES", "INSTANCE")
_D = DEFAULT_DELIMITERS

_ATTR = r"(?:[A-Za-z][A-Za-z0-9]*|\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\))"
_PATH = re.compile(
    rf"^(?:(?P<level>STUDY|SERIES|INSTANCE)(?:\[(?P<lrep>\*|[1-9][0-9]*)\])?(?:\.|$))?"
    rf"(?:(?P<attr>{_ATTR})(?:\[(?P<rep>\*|[1-9][0-9]*)\])?"
    rf"(?:\.(?P<item>{_ATTR})(?:\[(?P<irep>\*|[1-9][0-9]*)\])?)?"
    rf"(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?)?$"
)


class Record(Segment):
    """One STUDY, SERIES or INSTANCE: the DICOM JSON header (tag → element) it reads from."""

    __slots__ = ("attrs", "children", "depth", "parent")

    def __init__(self, name: str, attrs: dict[str, Any], parent: Record | None) -> None:
        self._d = _D
        self.name = name
        self.fields = [name]
        self.attrs = attrs
        self.parent = parent
        self.children: list[Record] = []
        self.depth = LEVELS.index(name)

    def __repr__(self) -> str:  # names only: never PHI
        return f"<Record {self.name}>"


def _raw(value: Any, vr: str) -> str:
    """One DICOM JSON value as HL7-escaped text."""
    if isinstance(value, dict):  # PN: the alphabetic group (its ^ are components)
        return escape(str(value.get("Alphabetic", "")), components=True).strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return escape(str(value), components=False).strip()


def _values(element: dict[str, Any] | None) -> list[Any]:
    if not element:
        return []
    return element.get("Value") or []


def _tag(header: dict[str, Any], tag: str) -> str:
    v = _values(header.get(tag))
    return str(v[0]).strip() if v else ""


def _number(text: str) -> tuple[float, str]:
    try:
        return float(text), ""
    except ValueError:
        return float("inf"), text


def study_message(raw: bytes) -> tuple[Message, float | None]:
    """The records of a study message (``engine.sources.dicom_study``: ``{"instances": [...]}``) and when it
    was assembled (epoch s: the source time the stale-write guard compares, so a grown study is never
    overwritten by an earlier, smaller one)."""
    try:
        doc = orjson.loads(raw)
        instances = [i["header"] for i in doc["instances"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise TransformError("the study message cannot be read", field="study", rule="dicom", code="207") from None
    if not instances:
        raise TransformError("the study has no instances", field="study", rule="dicom", code="101")
    series: dict[str, list[dict[str, Any]]] = {}
    for h in instances:
        series.setdefault(_tag(h, "0020000E"), []).append(h)
    study_attrs = dict(instances[0])
    study_attrs["00201206"] = {"vr": "IS", "Value": [len(series)]}
    study_attrs["00201208"] = {"vr": "IS", "Value": [len(instances)]}
    modalities = sorted({m for h in instances if (m := _tag(h, "00080060"))})
    study_attrs["00080061"] = {"vr": "CS", "Value": modalities}
    study = Record("STUDY", study_attrs, None)
    calling = str(doc.get("calling_ae", ""))
    institution = _tag(instances[0], "00080080")
    msh = Segment(f"MSH|^~\\&|{escape(calling, components=False)}|{escape(institution, components=False)}"
                  "|||||study", _D)  # fmt: skip
    records: list[Segment] = [msh, study]
    ordered = sorted(series.values(), key=lambda hs: (_number(_tag(hs[0], "00200011")), _tag(hs[0], "0020000E")))
    for members in ordered:
        attrs = dict(members[0])
        attrs["00201209"] = {"vr": "IS", "Value": [len(members)]}
        s = Record("SERIES", attrs, study)
        study.children.append(s)
        records.append(s)
        for h in sorted(members, key=lambda h: (_number(_tag(h, "00200013")), _tag(h, "00080018"))):
            i = Record("INSTANCE", h, s)
            s.children.append(i)
            records.append(i)
    assembled = doc.get("assembled_at")
    return Message(records, _D), float(assembled) if isinstance(assembled, int | float) else None


def _related(rec: Record, level: str) -> list[Record]:
    """The records of ``level`` seen from ``rec``: itself, its ancestor, or its descendants."""
    depth = LEVELS.index(level)
    if depth <= rec.depth:
        r: Record | None = rec
        while r is not None and r.depth > depth:
            r = r.parent
        return [r] if r is not None else []
    out = [rec]
    while out and out[0].depth < depth:
        out = [c for r in out for c in r.children]
    return out


def _current(env: Env) -> Record | None:
    rec, scope = enclosing(env, Record)
    if rec is not None:
        return rec
    found = scope.find("STUDY") if scope is not None and hasattr(scope, "find") else []
    return found[0] if found and isinstance(found[0], Record) else None


def _pick(items: list[Any], index: int | None) -> list[Any]:
    if index == ALL:
        return items
    i = 0 if index is None else index - 1
    return [items[i]] if i < len(items) else []


def _index(s: str | None) -> int | None:
    if s is None:
        return None
    return ALL if s == "*" else int(s)


def tag_of(attr: str) -> str:
    """The 8-hex-digit tag of a keyword or ``(gggg,eeee)``; PathError when unknown."""
    if attr.startswith("("):
        return (attr[1:5] + attr[6:10]).upper()
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(attr)
    if tag is None:
        raise PathError(f"unknown DICOM keyword {attr!r}")
    return f"{tag:08X}"


class DicomNotation:
    """Resolves DICOM source paths for the compiler (``Resolver(notation=...)``)."""

    name = "dicom"

    def resolve(self, text: str, current: str | None) -> tuple[Getter, int, str | None]:
        m = _PATH.match(text)
        if not m or not (m["level"] or m["attr"]):
            raise PathError(
                f"not a DICOM path: {text!r} (expected e.g. StudyInstanceUID, (0020,000D), PatientName.1, "
                "ProcedureCodeSequence.CodeValue, STUDY.AccessionNumber, SERIES[*])"
            )
        level = m["level"]
        if m["attr"] is None:
            assert level is not None
            return _records(level, _index(m["lrep"])), 0, level
        if m["lrep"]:
            raise PathError(f"{text}: pick records ({level}[*]) or read an attribute, not both")
        tag = tag_of(m["attr"])
        item = tag_of(m["item"]) if m["item"] else None
        comp = int(m["comp"]) if m["comp"] else None
        sub = int(m["sub"]) if m["sub"] else None
        get = _attribute(level, tag, _index(m["rep"]), item, _index(m["irep"]), comp, sub)
        label = text.split(".", 1)[1] if level else text
        return get, 1 + (comp is not None) + (sub is not None), label


def _records(level: str, index: int | None) -> Getter:
    def get(env: Env) -> list[Any]:
        rec = _current(env)
        if rec is None:
            return EMPTY
        return _pick(_related(rec, level), index)

    return get


def _attribute(
    level: str | None, tag: str, rep: int | None, item: str | None, irep: int | None, comp: int | None, sub: int | None
) -> Getter:
    def values(rec: Record) -> list[str]:
        element = rec.attrs.get(tag)
        if not element:
            return EMPTY
        vr = element.get("vr", "")
        vals = _values(element)
        if item is None:
            return [_raw(v, vr) for v in _pick(vals, rep)]
        out: list[str] = []
        for it in _pick(vals, rep):
            inner = it.get(item) if isinstance(it, dict) else None
            if inner:
                out.extend(_raw(v, inner.get("vr", "")) for v in _pick(_values(inner), irep))
        return out

    finish: Callable[[str], str] = (
        (lambda raw: raw) if comp is None else (lambda raw: paths.pick_part(raw, comp, sub, _D))
    )

    def get(env: Env) -> list[Any]:
        rec = _current(env)
        if rec is None:
            return EMPTY
        recs = [rec] if level is None else _related(rec, level)
        out: list[str] = []
        for r in recs:
            for raw in values(r):
                v = finish(raw)
                if v:
                    out.append(v)
        return out

    return get
