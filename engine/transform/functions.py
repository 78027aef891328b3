"""The closed registry of named functions a mapping rule may call (``fn: datetime``). No other code runs.

Each function declares what it reads from the rule's ``from:`` value — ``primitive`` (the first component,
unescaped), ``parts`` (every component, unescaped), ``raw`` (the whole value, separators kept) or
``none`` — its named ``args`` (HL7 paths read in the same scope, constants, or table names) and the FHIR
type it returns, so the compiler can check the target element before any message arrives.
An implementation raises :class:`Invalid` for a value it cannot convert; the rule turns that into a
TransformError naming the field and the rule, never the value.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote

from engine.transform import dates, units
from engine.transform.dates import Invalid
from engine.transform.tables import Table, v2_system

Input = Literal["primitive", "parts", "raw", "none"]
ParamKind = Literal["path", "const", "table"]

#: Prefix of the deterministic system URI built from an assigning authority that is not a URI or an OID.
LOCAL_SYSTEM_PREFIX = "urn:interlink:id:"

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_OID = re.compile(r"^[0-2](?:\.(?:0|[1-9][0-9]*))+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_URI = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://\S+|urn:[a-zA-Z0-9][a-zA-Z0-9-]{0,31}:\S+)$")
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|\u2013|\bto\b)\s*([+-]?\d+(?:\.\d+)?)\s*$")
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*$")
_SN_LENIENT = re.compile(r"^(<=|>=|<>|<|>|=)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))$")
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": None, "": None}


@dataclass(frozen=True)
class Param:
    kind: ParamKind
    required: bool = False


@dataclass(frozen=True)
class Function:
    name: str
    impl: Callable[..., Any]
    input: Input
    output: str  # FHIR type name: "dateTime", "Quantity", "ObservationReferenceRange", ...
    description: str
    params: dict[str, Param] = field(default_factory=dict)
    memo: bool = False  # pure in (value, timezone): results are reused within one message


def number(value: str) -> int | float:
    """An HL7 NM as a JSON number (int when it has no decimal point)."""
    v = value.strip()
    if not _NUMBER.match(v):
        raise Invalid("not a number (NM)")
    if "." in v:
        return float(v)
    return int(v)


def _date(run: Any, value: str) -> str:
    return dates.parse_date(value)


def _datetime(run: Any, value: str) -> str:
    return dates.parse_ts(value, run.tz)


def _instant(run: Any, value: str) -> str:
    return dates.parse_ts(value, run.tz, need="minute")


def _time(run: Any, value: str) -> str:
    return dates.parse_time(value)


def _decimal(run: Any, value: str) -> int | float:
    return number(value)


def _integer(run: Any, value: str) -> int:
    if not re.match(r"^[+-]?\d+$", value):
        raise Invalid("not an integer")
    return int(value)


def _boolean(run: Any, value: str) -> bool:
    v = value.upper()
    if v in ("Y", "T", "TRUE", "YES"):
        return True
    if v in ("N", "F", "FALSE", "NO"):
        return False
    raise Invalid("not a yes/no value (HL7 table 0136)")


def _text(run: Any, value: str) -> str:
    return value


def oid_or_uri(value: str) -> str | None:
    """A system URI when ``value`` already is one (URI, ``urn:``, OID with at least two arcs, UUID)."""
    if _URI.match(value):
        return value
    if _OID.match(value):
        return f"urn:oid:{value}"
    if _UUID.match(value):
        return f"urn:uuid:{value.lower()}"
    return None


def local_system(name: str) -> str:
    """The deterministic system for a local assigning authority: ``urn:interlink:id:<name, %-encoded>``."""
    return LOCAL_SYSTEM_PREFIX + quote(name, safe="-._~")


def _authority_system(
    run: Any,
    value: None,
    namespace: str | None = None,
    universal_id: str | None = None,
    universal_id_type: str | None = None,
    systems: Table | None = None,
) -> str | None:
    return system_for_authority(namespace, universal_id, universal_id_type, systems)


@lru_cache(maxsize=4096)
def system_for_authority(
    namespace: str | None, universal_id: str | None, universal_id_type: str | None, systems: Table | None
) -> str | None:
    """The Identifier.system of an assigning authority (HD parts), None without one.

    Also used for a channel's default authority (``transform.authority``), so a sent and a defaulted
    authority give the same system. Authorities repeat across messages (and are not patient data):
    remembered.
    """
    for key in (namespace, universal_id):
        if key and systems is not None and key in systems:
            return systems.code(key)
    if universal_id:
        t = (universal_id_type or "").upper()
        if t == "ISO" and _OID.match(universal_id):
            return f"urn:oid:{universal_id}"
        if t in ("UUID", "GUID") and _UUID.match(universal_id):
            return f"urn:uuid:{universal_id.lower()}"
        if t in ("URI", "URL") and _URI.match(universal_id):
            return universal_id
    if namespace:
        return oid_or_uri(namespace) or local_system(namespace)
    if universal_id:
        return oid_or_uri(universal_id) or local_system(universal_id)
    return None


def _coding_system(run: Any, value: str, systems: Table | None = None) -> str | None:
    if systems is not None and value in systems:
        return systems.code(value)
    return v2_system(value) or oid_or_uri(value)


def _ucum_code(run: Any, parts: list[str]) -> str | None:
    code = parts[0] if parts else ""
    return code if code and units.is_ucum(parts) else None


def _ucum_system(run: Any, parts: list[str]) -> str | None:
    return units.UCUM if parts and parts[0] and units.is_ucum(parts) else None


def _sn(parts: list[str]) -> tuple[str, str, str, str]:
    comp, n1, sep, n2 = [*parts, "", "", "", ""][:4]
    if not n1 and not sep and (m := _SN_LENIENT.match(comp)):
        # Tolerate "<0.10" or "182" sent without component separators.
        comp, n1 = m.group(1) or "", m.group(2)
    return comp, n1, sep, n2


def _sn_quantity(run: Any, parts: list[str]) -> dict[str, Any] | None:
    comp, n1, _sep, _n2 = _sn(parts)
    if not n1:
        return None
    if comp not in _COMPARATORS:
        raise Invalid("SN comparator cannot be represented in FHIR (only <, <=, >, >=, =)")
    out: dict[str, Any] = {"value": number(n1)}
    if _COMPARATORS[comp]:
        out["comparator"] = _COMPARATORS[comp]
    return out


def _pair(parts: list[str], a: str, b: str) -> dict[str, Any] | None:
    _comp, n1, _sep, n2 = _sn(parts)
    out = {}
    if n1:
        out[a] = {"value": number(n1)}
    if n2:
        out[b] = {"value": number(n2)}
    return out or None


def _sn_range(run: Any, parts: list[str]) -> dict[str, Any] | None:
    return _pair(parts, "low", "high")


def _sn_ratio(run: Any, parts: list[str]) -> dict[str, Any] | None:
    return _pair(parts, "numerator", "denominator")


def _sn_text(run: Any, parts: list[str]) -> str | None:
    return " ".join(p for p in _sn(parts) if p) or None


def _reference_range(run: Any, value: str) -> dict[str, Any] | None:
    if not value:
        return None  # white space only (stripped to nothing): no range, not an empty text
    out: dict[str, Any] = {k: {"value": v} for k, v in _bounds(value)}
    out["text"] = value
    return out


@lru_cache(maxsize=4096)
def _bounds(value: str) -> tuple[tuple[str, int | float], ...]:
    """Reference ranges are a lab's vocabulary and repeat: parsed once."""
    if m := _RANGE.match(value):
        return (("low", number(m.group(1))), ("high", number(m.group(2))))
    if m := _BOUND.match(value):
        return (("high" if m.group(1).startswith("<") else "low", number(m.group(2))),)
    return ()


def _part(parts: list[str], n: int) -> str:
    return parts[n - 1] if n <= len(parts) else ""


def _xcn_display(run: Any, parts: list[str]) -> str | None:
    # XCN: 2 family, 3 given, 4 further given, 5 suffix, 6 prefix.
    names = [_part(parts, i) for i in (6, 3, 4, 2, 5)]
    return " ".join(n for n in names if n) or None


def _pl_display(run: Any, parts: list[str], levels: tuple[int, ...] = (1, 2, 3)) -> str | None:
    # PL: 9 description (of the most specific level); else 1 point of care, 2 room, 3 bed, 4 facility,
    # 7 building, 8 floor. A level above the bed (``levels``) is named by its parts alone, as a PL that
    # stops there would be: the room "ICU, 2, GENHOSP" whether sent alone or above a bed.
    if len(levels) == 3 and (desc := _part(parts, 9)):
        return desc
    return ", ".join(p for p in (_part(parts, i) for i in (1, 2, 3, 7, 8, 4) if i in levels or i > 3) if p) or None


def _pl_key(run: Any, parts: list[str], levels: tuple[int, ...] = (1, 2, 3)) -> str | None:
    # PL: 1 point of care, 2 room, 3 bed, 7 building, 8 floor; the facility (4) is the identifier's system.
    # A level above the bed keeps the positions, its lower levels empty: room "ICU^2^^MAIN", unit "ICU^^^MAIN".
    keys = [_part(parts, i) if i in levels or i > 3 else "" for i in (1, 2, 3, 7, 8)]
    while keys and not keys[-1]:
        keys.pop()
    return "^".join(keys) or None


def _pl_room_key(run: Any, parts: list[str]) -> str | None:
    return _pl_key(run, parts, (1, 2)) if _part(parts, 2) else None


def _pl_point_of_care_key(run: Any, parts: list[str]) -> str | None:
    return _pl_key(run, parts, (1,)) if _part(parts, 1) else None


def _pl_room_display(run: Any, parts: list[str]) -> str | None:
    return _pl_display(run, parts, (1, 2)) if _part(parts, 2) else None


def _pl_point_of_care_display(run: Any, parts: list[str]) -> str | None:
    return _pl_display(run, parts, (1,)) if _part(parts, 1) else None


def _xtn_value(run: Any, parts: list[str]) -> str | None:
    # XTN: 1 formatted number, 3 equipment, 4 e-mail, 5 country, 6 area, 7 local, 8 extension, 12 unformatted.
    email, local = _part(parts, 4), _part(parts, 7)
    if email and (_part(parts, 3).upper() in ("INTERNET", "X.400") or not (local or _part(parts, 1))):
        return email
    if unformatted := _part(parts, 12):
        return unformatted
    if local:
        country, area, ext = _part(parts, 5), _part(parts, 6), _part(parts, 8)
        pieces = [f"+{country}" if country else "", f"({area})" if area else "", local, f"ext. {ext}" if ext else ""]
        return " ".join(p for p in pieces if p)
    return _part(parts, 1) or None


_P, _T = Param("path"), Param("table")


# Observation values and document content (OBX-5 by OBX-2): ED, RP, CQ, MO, CP, repeated values.

UCUM_SYSTEM = units.UCUM
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
_MIME_TOP = frozenset({"application", "audio", "font", "image", "message", "model", "multipart", "text", "video"})
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _mime(kind: str, subtype: str, types: Table | None) -> str | None:
    """A media type from an ED/RP type of data (table 0191) and subtype (0291): ``application^pdf``,
    ``IM^JPEG`` (through the ``types`` table) or a subtype that already is one (``text/html``)."""
    k, s = kind.lower(), subtype.lower()
    if "/" in s:
        return s
    if k in _MIME_TOP and s:
        return f"{k}/{s}"
    if types is not None:
        for key in (subtype, subtype.upper(), kind, kind.upper()):
            if key and key in types:
                return types.code(key)
    return None


def base64_data(encoding: str, data: str) -> str:
    """ED.5 as FHIR base64Binary: Base64 checked and kept byte for byte, Hex and A (text) encoded."""
    enc = encoding.upper()
    if enc == "BASE64":
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("ED data (component 5) is not valid base64") from None
        return data
    if enc == "HEX":
        try:
            return base64.b64encode(bytes.fromhex(data)).decode("ascii")
        except ValueError:
            raise Invalid("ED data (component 5) is not valid hex") from None
    if enc == "A":
        return base64.b64encode(data.encode("utf-8")).decode("ascii")
    raise Invalid("ED encoding (component 4) is not Base64, Hex or A (HL7 table 0299)")


def _ed_attachment(run: Any, parts: list[str], types: Table | None = None) -> dict[str, Any] | None:
    # ED: 1 source application, 2 type of data, 3 data subtype, 4 encoding, 5 data.
    _source, kind, subtype, encoding, data = [*parts, "", "", "", "", ""][:5]
    out: dict[str, Any] = {}
    if ct := _mime(kind, subtype, types):
        out["contentType"] = ct
    if data:
        out["data"] = base64_data(encoding, data)
    return out or None


def _rp_attachment(run: Any, parts: list[str], types: Table | None = None) -> dict[str, Any] | None:
    # RP: 1 pointer, 2 application ID, 3 type of data, 4 subtype.
    pointer, _app, kind, subtype = [*parts, "", "", "", ""][:4]
    if not pointer:
        return None
    out: dict[str, Any] = {"url": pointer}
    if ct := _mime(kind, subtype, types):
        out["contentType"] = ct
    return out


def _text_attachment(run: Any, value: str) -> dict[str, Any] | None:
    if not value:
        return None
    return {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(value.encode("utf-8")).decode("ascii")}


def _unit(out: dict[str, Any], unit: str) -> dict[str, Any]:
    if unit:
        out["unit"] = unit
        if units.valid(unit):
            out["system"], out["code"] = UCUM_SYSTEM, unit
    return out


def _cq_quantity(run: Any, parts: list[str]) -> dict[str, Any] | None:
    # CQ: 1 quantity (NM), 2 units (CWE in sub-components: its code).
    value, unit = [*parts, "", ""][:2]
    if not value:
        return None
    return _unit({"value": number(value)}, unit)


def _money(value: str, currency: str) -> dict[str, Any] | None:
    if not value:
        return None
    out: dict[str, Any] = {"value": number(value)}
    if currency:
        if not _CURRENCY.match(currency.upper()):
            raise Invalid("currency is not an ISO 4217 code")
        out.update(unit=currency.upper(), system=CURRENCY_SYSTEM, code=currency.upper())
    return out


def _mo_quantity(run: Any, parts: list[str]) -> dict[str, Any] | None:
    # MO: 1 quantity, 2 denomination (ISO 4217).
    value, currency = [*parts, "", ""][:2]
    return _money(value, currency)


def _cp_quantity(run: Any, value: str) -> dict[str, Any] | None:
    # CP: 1 price (MO: quantity & denomination), 2 price type, 3 from value, 4 to value, 5 range units…
    d = run.d
    price = value.split(d.component, 1)[0].split(d.subcomponent)
    return _money(price[0].strip(), price[1].strip() if len(price) > 1 else "")


def _obx_component(
    run: Any,
    parts: list[str],
    value_type: str | None = None,
    code: str | None = None,
    display: str | None = None,
    coding_system: str | None = None,
    unit: str | None = None,
    systems: Table | None = None,
) -> dict[str, Any] | None:
    """One repetition of OBX-5 → an Observation.component (IG OBX[Observation-Component]), coded by OBX-3."""
    first = parts[0] if parts else ""
    if not first and not any(parts):
        return None
    coding: dict[str, Any] = {"code": code} if code else {}
    if display:
        coding["display"] = display
    if coding_system and (system := _coding_system(run, coding_system, systems)):
        coding["system"] = system
    out: dict[str, Any] = {"code": {"coding": [coding]} if coding else {"text": display or ""}}
    vt = (value_type or "").upper()
    if vt == "NM":
        out["valueQuantity"] = _unit({"value": number(first)}, unit or "")
    elif vt in ("CWE", "CE", "CNE", "CF"):
        c: dict[str, Any] = {k: v for k, v in (("code", first), ("display", _part(parts, 2))) if v}
        if (s := _part(parts, 3)) and (system := _coding_system(run, s, systems)):
            c["system"] = system
        out["valueCodeableConcept"] = {"coding": [c]} if first else {"text": _part(parts, 2)}
    elif vt in ("DT", "DTM", "TS"):
        out["valueDateTime"] = dates.parse_ts(first, run.tz)
    else:
        raise Invalid("repeated values (OBX-5) of this value type are not mapped")
    return out


REGISTRY: dict[str, Function] = {
    f.name: f
    for f in (
        Function("date", _date, "primitive", "date", "TS/DT → FHIR date (YYYY, YYYY-MM, YYYY-MM-DD).", memo=True),
        Function("datetime", _datetime, "primitive", "dateTime", "TS/DTM → FHIR dateTime, precision kept.", memo=True),
        Function("instant", _instant, "primitive", "instant", "TS/DTM → FHIR instant (minutes at least).", memo=True),
        Function("time", _time, "primitive", "time", "TM → FHIR time.", memo=True),
        Function("decimal", _decimal, "primitive", "decimal", "NM → decimal; anything else is an error."),
        Function("integer", _integer, "primitive", "integer", "NM/SI → integer."),
        Function("boolean", _boolean, "primitive", "boolean", "Yes/no indicator (table 0136) → boolean."),
        Function("text", _text, "raw", "string", "The whole value as text (FT/TX/ST with any separators)."),
        Function(
            "authority_system",
            _authority_system,
            "none",
            "uri",
            "Assigning authority (HD parts) → Identifier.system: site table, OID, UUID, URI, else urn:interlink:id:.",
            {"namespace": _P, "universal_id": _P, "universal_id_type": _P, "systems": _T},
        ),
        Function(
            "coding_system",
            _coding_system,
            "primitive",
            "uri",
            "Coding system name (CWE.3) → URI: the table, HL7nnnn → v2 table, OID or URI as is.",
            {"systems": _T},
        ),
        Function("ucum_code", _ucum_code, "parts", "code", "Units (CWE) → the code when it is UCUM."),
        Function("ucum_system", _ucum_system, "parts", "uri", "Units (CWE) → UCUM system when UCUM."),
        Function("sn_quantity", _sn_quantity, "parts", "Quantity", "SN → Quantity (comparator, value)."),
        Function("sn_range", _sn_range, "parts", "Range", "SN num1-num2 → Range (low, high values)."),
        Function("sn_ratio", _sn_ratio, "parts", "Ratio", "SN num1:num2 or num1/num2 → Ratio."),
        Function("sn_text", _sn_text, "parts", "string", "SN → its components as text."),
        Function(
            "reference_range",
            _reference_range,
            "primitive",
            "ObservationReferenceRange",
            "OBX-7 → referenceRange: text, plus low/high for 'a-b', 'a to b', '<b', '>a'.",
        ),
        Function(
            "xcn_display",
            _xcn_display,
            "parts",
            "string",
            "XCN person → display name (prefix given middle family suffix).",
        ),
        Function("pl_display", _pl_display, "parts", "string", "PL location → display text."),
        Function("xtn_value", _xtn_value, "parts", "string", "XTN → ContactPoint.value (e-mail or number)."),
        Function(
            "pl_key",
            _pl_key,
            "parts",
            "string",
            "PL location → a stable key 'point of care^room^bed[^building^floor]' (a Location's identity value).",
        ),
        Function(
            "pl_room_key",
            _pl_room_key,
            "parts",
            "string",
            "PL location → the key of its room 'point of care^room^^building^floor' (the room's Location).",
        ),
        Function(
            "pl_point_of_care_key",
            _pl_point_of_care_key,
            "parts",
            "string",
            "PL location → the key of its point of care 'point of care^^^building^floor' (the unit's Location).",
        ),
        Function("pl_room_display", _pl_room_display, "parts", "string", "PL location → its room's display text."),
        Function(
            "pl_point_of_care_display",
            _pl_point_of_care_display,
            "parts",
            "string",
            "PL location → its point of care's display text.",
        ),
        Function(
            "ed_attachment",
            _ed_attachment,
            "parts",
            "Attachment",
            "ED → Attachment: media type from type/subtype, data base64 (Base64 checked and kept as sent; "
            "Hex and A converted).",
            {"types": _T},
        ),
        Function(
            "rp_attachment",
            _rp_attachment,
            "parts",
            "Attachment",
            "RP → Attachment: url is the pointer, media type from type/subtype.",
            {"types": _T},
        ),
        Function(
            "text_attachment",
            _text_attachment,
            "raw",
            "Attachment",
            "TX/FT/ST → text/plain Attachment (escapes resolved, UTF-8, base64).",
        ),
        Function("cq_quantity", _cq_quantity, "parts", "Quantity", "CQ → Quantity (UCUM when the unit parses)."),
        Function("mo_quantity", _mo_quantity, "parts", "Quantity", "MO → Quantity in ISO 4217 currency."),
        Function("cp_quantity", _cp_quantity, "raw", "Quantity", "CP → Quantity: the price (MO) of CP.1."),
        Function(
            "obx_component",
            _obx_component,
            "parts",
            "ObservationComponent",
            "One repetition of OBX-5 (NM, CWE/CE/CNE/CF, DT/DTM) → Observation.component coded by OBX-3.",
            {
                "value_type": _P,
                "code": _P,
                "display": _P,
                "coding_system": _P,
                "unit": _P,
                "systems": _T,
            },
        ),
    )
}

# The DICOM value functions join the one registry whatever is compiled first: an HL7 document names its
# DICOM study by UID (MDM OBX-5 of value type HD → ``oid_urn``, OBX-StudyReference), and a registry that
# depended on import order would accept a map in one process and refuse it in another.
from engine.transform import dicom_functions  # noqa: E402, F401
