"""Named functions for JSON values, added to the closed registry (``engine.transform.functions.REGISTRY``)
when the JSON maps are compiled. JSON events write times in ISO 8601 (RFC 3339), not as HL7 TS; these read
them into the same FHIR forms as ``date``/``datetime``/``instant`` (``engine.transform.dates``: precision
and offset kept, a time without an offset read in the channel's timezone). Like every registered function
they raise :class:`~engine.transform.dates.Invalid` (never naming the value) for one they cannot convert.

``iso_date``      ``2026-03-10`` (or a date-time: its date) → date
``iso_datetime``  ``2026-03-10T14:30:00-05:00``, ``…Z``, ``…T14:30``, ``2026-03`` → dateTime
``iso_instant``   the same, to the minute at least → instant
"""

from __future__ import annotations

import re
from typing import Any

from engine.transform import dates
from engine.transform.dates import Invalid
from engine.transform.functions import REGISTRY, Function

__all__ = ["FUNCTIONS", "iso_to_ts"]

_ISO = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?)?)?)?$"
)


def iso_to_ts(value: str) -> str:
    """An ISO 8601 date or date-time as the HL7 TS it means (``20260310143000-0500``); Invalid otherwise."""
    m = _ISO.match(value.strip())
    if not m:
        raise Invalid("not an ISO 8601 date/time (YYYY-MM-DDThh:mm[:ss[.s]][Z|+hh:mm])")
    y, mo, d, h, mi, s, f, z = m.groups()
    ts = y + (mo or "") + (d or "") + (h or "") + (mi or "") + (s or "") + (f".{f}" if f else "")
    if z:
        ts += "+0000" if z in ("Z", "z") else z.replace(":", "")
    return ts


def _iso_date(run: Any, value: str) -> str:
    return dates.parse_date(iso_to_ts(value))


def _iso_datetime(run: Any, value: str) -> str:
    return dates.parse_ts(iso_to_ts(value), run.tz)


def _iso_instant(run: Any, value: str) -> str:
    return dates.parse_ts(iso_to_ts(value), run.tz, need="minute")


FUNCTIONS = (
    Function("iso_date", _iso_date, "primitive", "date", "ISO 8601 date (or date-time: its date) → date.", memo=True),
    Function(
        "iso_datetime",
        _iso_datetime,
        "primitive",
        "dateTime",
        "ISO 8601 date/time → dateTime, precision kept.",
        memo=True,
    ),
    Function(
        "iso_instant",
        _iso_instant,
        "primitive",
        "instant",
        "ISO 8601 date-time → instant (minutes at least).",
        memo=True,
    ),
)

for _f in FUNCTIONS:
    REGISTRY.setdefault(_f.name, _f)
