"""HL7 v2 TS/DTM/DT/TM values → FHIR date, dateTime, instant and time, keeping the sender's precision.

``YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]`` becomes ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or
``YYYY-MM-DDThh:mm:ss[.fff][offset]``: FHIR needs seconds whenever there is a time, so hour and minute
precision are padded with zeros (the precision a receiver sees is then seconds; HL7 has no way to say
otherwise in FHIR R4).

Offsets. FHIR requires an offset whenever a time is present. A value that carries one keeps it, as sent.
A value with a time but no offset is read as local time in the *default timezone* (an IANA name, ``UTC``
unless the channel or :func:`engine.transform.load_mappings` says otherwise; daylight saving is applied
for the date in question) and is written with that zone's offset (``Z`` for UTC). A date without a time
never gets an offset (an offset on a date-only value is dropped, as FHIR cannot carry it).

Anything else — a month 13, 30 February, letters, an offset beyond ±14:00 — raises :class:`Invalid`, which
the rule turns into a TransformError naming the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_TS = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,9}))?(?P<z>[+-]\d{4})?$"
)
_TM = re.compile(r"^(?P<h>\d{2})(?P<mi>\d{2})?(?P<s>\d{2})?(?:\.(?P<f>\d{1,9}))?(?P<z>[+-]\d{4})?$")


class Invalid(ValueError):
    """A value that cannot become the FHIR type asked for; the message names the rule, never the value."""


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    """The tzinfo for an IANA name (``UTC``, ``Europe/Paris``); raises ValueError for an unknown name."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


def _offset(z: str) -> str:
    hh, mm = int(z[1:3]), int(z[3:5])
    if mm > 59 or hh > 14 or (hh == 14 and mm):
        raise Invalid("timezone offset out of range")
    return f"{z[0]}{z[1:3]}:{z[3:5]}"


def _local_offset(naive: datetime, tz: tzinfo) -> str:
    if tz is UTC:
        return "Z"
    off = tz.utcoffset(naive) or timedelta(0)
    minutes = int(off.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def parse_ts(value: str, tz: tzinfo, *, need: str = "year") -> str:
    """Convert a TS/DTM/DT value. ``need="minute"`` (instants) refuses anything less precise."""
    n = len(value)
    digits = n - 5 if n in (17, 19) and value[n - 5] in "+-" else n
    if digits in (12, 14) and value[:digits].isdecimal() and (digits == n or value[digits + 1 :].isdecimal()):
        return _minutes(value, digits, tz)  # the usual shapes, to the minute or second: no regex
    m = _TS.match(value)
    if not m:
        raise Invalid("not a valid HL7 date/time (YYYY[MM[DD[HHMM[SS[.S]]]]][+/-ZZZZ])")
    y, mo, d, h, mi, s, f, z = m.group("y", "mo", "d", "h", "mi", "s", "f", "z")
    if (h and not d) or (mi and not h) or (s and not mi) or (f and not s):
        raise Invalid("not a valid HL7 date/time")
    try:
        naive = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        raise Invalid("not a valid calendar date/time") from None
    if need == "minute" and not mi:
        raise Invalid("an instant needs a date and a time to the minute at least")
    if not h:
        return y if not mo else (f"{y}-{mo}" if not d else f"{y}-{mo}-{d}")
    frac = f".{f}" if f else ""
    off = _offset(z) if z else _local_offset(naive, tz)
    return f"{y}-{mo}-{d}T{h}:{mi or '00'}:{s or '00'}{frac}{off}"


def _minutes(value: str, digits: int, tz: tzinfo) -> str:
    """:func:`parse_ts` for ``YYYYMMDDHHMM[SS][+/-ZZZZ]`` (``\\d`` is what ``isdecimal`` tests)."""
    y, mo, d, h, mi = value[:4], value[4:6], value[6:8], value[8:10], value[10:12]
    s = value[12:14] if digits == 14 else "00"
    try:
        naive = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
    except ValueError:
        raise Invalid("not a valid calendar date/time") from None
    off = _offset(value[digits:]) if digits < len(value) else _local_offset(naive, tz)
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}{off}"


def parse_date(value: str) -> str:
    """A FHIR ``date`` (birthDate): the calendar date as written; any time and offset are dropped."""
    m = _TS.match(value)
    if not m:
        raise Invalid("not a valid HL7 date (YYYY[MM[DD]])")
    y, mo, d = m.group("y", "mo", "d")
    try:
        datetime(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        raise Invalid("not a valid calendar date") from None
    if m["h"] and not d:
        raise Invalid("not a valid HL7 date")
    return y if not mo else (f"{y}-{mo}" if not d else f"{y}-{mo}-{d}")


def parse_time(value: str) -> str:
    """TM ``HH[MM[SS[.S]]]`` → FHIR ``time`` ``hh:mm:ss[.s]`` (an offset cannot be kept: FHIR time has none)."""
    m = _TM.match(value)
    if not m:
        raise Invalid("not a valid HL7 time (HH[MM[SS[.S]]])")
    h, mi, s, f = m.group("h", "mi", "s", "f")
    if int(h) > 23 or int(mi or 0) > 59 or int(s or 0) > 59:
        raise Invalid("not a valid time of day")
    return f"{h}:{mi or '00'}:{s or '00'}" + (f".{f}" if f else "")
