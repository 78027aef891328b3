"""TS/DTM → FHIR date, dateTime, instant and time: precision, offsets and the timezone policy."""

from __future__ import annotations

import pytest

from engine.transform.dates import Invalid, parse_date, parse_time, parse_ts, zone

UTC = zone("UTC")
NY = zone("America/New_York")


@pytest.mark.parametrize(
    ("value", "fhir"),
    [
        ("2024", "2024"),
        ("202403", "2024-03"),
        ("20240315", "2024-03-15"),
        ("20240315+0700", "2024-03-15"),  # a date cannot carry an offset in FHIR
        ("2024031508", "2024-03-15T08:00:00Z"),
        ("202403150830", "2024-03-15T08:30:00Z"),
        ("20240315083015", "2024-03-15T08:30:15Z"),
        ("20240315083015.1234", "2024-03-15T08:30:15.1234Z"),
        ("20240315083015-0500", "2024-03-15T08:30:15-05:00"),
        ("198908181126+0215", "1989-08-18T11:26:00+02:15"),
        ("20240229", "2024-02-29"),
    ],
)
def test_precision_and_offsets(value: str, fhir: str) -> None:
    assert parse_ts(value, UTC) == fhir


def test_times_without_offset_take_the_default_zone_with_daylight_saving() -> None:
    assert parse_ts("202401151030", NY) == "2024-01-15T10:30:00-05:00"
    assert parse_ts("202407151030", NY) == "2024-07-15T10:30:00-04:00"
    assert parse_ts("202407151030+0100", NY) == "2024-07-15T10:30:00+01:00"


@pytest.mark.parametrize(
    "value", ["20241340", "20230229", "2024031525", "20240315086", "abc", "2024-03-15", "202403150830+1500", ""]
)
def test_invalid_values_are_refused(value: str) -> None:
    with pytest.raises(Invalid):
        parse_ts(value, UTC)


def test_invalid_message_never_contains_the_value() -> None:
    with pytest.raises(Invalid) as exc:
        parse_ts("19621340", UTC)
    assert "1962" not in str(exc.value)


def test_instant_needs_minutes() -> None:
    assert parse_ts("202403150830", UTC, need="minute") == "2024-03-15T08:30:00Z"
    with pytest.raises(Invalid):
        parse_ts("20240315", UTC, need="minute")


def test_birth_date_keeps_the_calendar_date_as_written() -> None:
    assert parse_date("198808181126+0215") == "1988-08-18"
    assert parse_date("1962") == "1962"
    with pytest.raises(Invalid):
        parse_date("19620230")


def test_time() -> None:
    assert parse_time("1430") == "14:30:00"
    assert parse_time("143005.25") == "14:30:05.25"
    with pytest.raises(Invalid):
        parse_time("2460")


def test_unknown_zone() -> None:
    with pytest.raises(ValueError):
        zone("Mars/Olympus_Mons")
