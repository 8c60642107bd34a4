"""Tolerant Perkville datetime parsing and filter formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.perkville import format_filter_datetime, parse_perkville_datetime

UTC = UTC


@pytest.mark.parametrize(
    ("raw", "tz", "expected"),
    [
        ("2024-05-02 18:14:09", "UTC", datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC)),
        ("2024-05-02T18:14:09", "UTC", datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC)),
        ("2024-05-02 18:14", "UTC", datetime(2024, 5, 2, 18, 14, tzinfo=UTC)),
        ("2024-05-02 18:14:09.5", "UTC", datetime(2024, 5, 2, 18, 14, 9, 500000, tzinfo=UTC)),
        ("2024-05-02T18:14:09.123456789", "UTC", datetime(2024, 5, 2, 18, 14, 9, 123456, tzinfo=UTC)),
        ("2024-05-02T18:14:09Z", "America/Chicago", datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC)),
        ("2024-05-02T18:14:09+02:00", "UTC", datetime(2024, 5, 2, 16, 14, 9, tzinfo=UTC)),
        ("2024-05-02 18:14:09-0530", "UTC", datetime(2024, 5, 2, 23, 44, 9, tzinfo=UTC)),
        ("2024-05-02 18:14:09 +01", "UTC", datetime(2024, 5, 2, 17, 14, 9, tzinfo=UTC)),
        ("2024-05-02 18:14:09", "America/Chicago", datetime(2024, 5, 2, 23, 14, 9, tzinfo=UTC)),
        ("2024-01-02 18:14:09", "America/Chicago", datetime(2024, 1, 3, 0, 14, 9, tzinfo=UTC)),
        ("2024-05-02", "Europe/Berlin", datetime(2024, 5, 1, 22, 0, tzinfo=UTC)),
        ("  2024-05-02 18:14:09  ", "UTC", datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC)),
        (None, "UTC", None),
        ("", "UTC", None),
        (datetime(2024, 5, 2, 18, 0), "Europe/Berlin", datetime(2024, 5, 2, 16, 0, tzinfo=UTC)),
    ],
    ids=[
        "space",
        "T",
        "no-seconds",
        "one-fraction-digit",
        "nanoseconds-truncated",
        "Z-ignores-zone",
        "offset-colon",
        "offset-compact",
        "offset-hours-only",
        "naive-in-zone-DST",
        "naive-in-zone-winter",
        "date-only",
        "padded",
        "null",
        "empty",
        "naive-datetime-object",
    ],
)
def test_parse_accepts_perkville_variants(raw: object, tz: str, expected: datetime | None) -> None:
    parsed = parse_perkville_datetime(raw, tz)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "raw",
    [
        "yesterday",
        "2024-13-01 00:00:00",
        "2024-05-02 25:00:00",
        "2024-05-02 18:14:09+25:00",
        "05/02/2024",
        1714673649,
    ],
    ids=["word", "month-13", "hour-25", "offset-25h", "us-format", "epoch-int"],
)
def test_parse_rejects_garbage(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_perkville_datetime(raw, "UTC")


def test_unknown_zone_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_perkville_datetime("2024-05-02 18:14:09", "Mars/Olympus")


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        (datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC), "UTC", "2024-05-02T18:14:09"),
        (datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC), "America/Chicago", "2024-05-02T13:14:09"),
        (datetime(2024, 5, 2, 18, 14, 9, 250000, tzinfo=UTC), "UTC", "2024-05-02T18:14:09.250000"),
        (datetime(2024, 5, 2, 18, 14, 9), "America/Chicago", "2024-05-02T18:14:09"),
    ],
    ids=["utc", "to-zone", "keeps-micros", "naive-taken-as-zone"],
)
def test_format_filter_datetime(value: datetime, tz: str, expected: str) -> None:
    assert format_filter_datetime(value, tz) == expected


@settings(max_examples=60, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
    sep=st.sampled_from([" ", "T"]),
)
def test_format_then_parse_round_trips(moment: datetime, zone: str, sep: str) -> None:
    from zoneinfo import ZoneInfo

    text = format_filter_datetime(moment, zone).replace("T", sep)
    parsed = parse_perkville_datetime(text, zone)
    assert parsed is not None
    local = moment.astimezone(UTC if zone == "UTC" else ZoneInfo(zone)).replace(tzinfo=None)
    zoneinfo = UTC if zone == "UTC" else ZoneInfo(zone)
    ambiguous = (
        local.replace(fold=0, tzinfo=zoneinfo).utcoffset()
        != local.replace(fold=1, tzinfo=zoneinfo).utcoffset()
    )
    if ambiguous:  # a naive local time in a DST fall-back hour has two readings; we take the first
        assert abs(parsed - moment) <= timedelta(hours=1)
    else:
        assert parsed == moment
