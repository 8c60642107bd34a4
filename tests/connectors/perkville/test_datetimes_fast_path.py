"""The canonical-shape fast path of ``parse_perkville_datetime`` reads every string as the tolerant path does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.perkville.datetimes import _parse_tolerant, parse_perkville_datetime, to_tzinfo

ZONES = ["UTC", "America/Chicago", "Europe/Berlin", "Australia/Lord_Howe"]


def outcome(parse: object, value: object, tz: str | tzinfo) -> tuple[str, object]:
    """What a parser does with ``value``: its result with the result's tzinfo, or its error."""
    try:
        result = parse(value, tz)  # type: ignore[operator]
    except (ValueError, OverflowError) as exc:
        return ("error", (type(exc), str(exc)))
    return ("value", (result, None if result is None else result.tzinfo))


def reference(value: object, tz: str | tzinfo) -> datetime | None:
    """``parse_perkville_datetime`` as it was before the fast path: tolerant path only."""
    if value is None:
        return None
    return _parse_tolerant(value, to_tzinfo(tz))


def digits(count: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=count, max_size=count)


# Near-canonical strings: every piece is either the canonical one or a variant the fast path must
# refuse (or read exactly like the tolerant path does).
def two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map("{:02d}".format)


near_canonical = st.builds(
    lambda year, month, day, sep, hour, minute, second, fraction, offset: (
        f"{year}-{month}-{day}{sep}{hour}:{minute}{second}{fraction}{offset}"
    ),
    year=st.one_of(st.sampled_from(["2024", "1999", "0001", "9999"]), digits(4)),
    month=st.one_of(two(1, 12), st.sampled_from(["13", "00"]), digits(2)),
    day=st.one_of(two(1, 28), st.sampled_from(["29", "30", "31", "32", "00"])),
    sep=st.sampled_from(["T", " ", "T", " ", "t", "  ", "T ", "X", "\t"]),
    hour=st.one_of(two(0, 23), st.sampled_from(["24", "99"])),
    minute=st.one_of(two(0, 59), st.just("60")),
    second=st.one_of(two(0, 59).map(":{}".format), st.sampled_from(["", ":60", ":5"])),
    fraction=st.one_of(
        st.just(""),
        st.builds(lambda mark, body: mark + body, st.sampled_from([".", ".", ","]), st.text("0123456789", max_size=10)),
    ),
    offset=st.one_of(
        st.sampled_from(["", "Z", "+00:00", "-00:00"]),
        st.builds("{}{}:{}".format, st.sampled_from("+-"), two(0, 25), two(0, 60)),
        st.sampled_from(["z", "+0000", "+00", " +00:00", "+02", "UTC", " Z", "\n", "+00:00:00"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(near_canonical, st.text(max_size=40)), zone=st.sampled_from(ZONES))
@example(text="2024-01-02 00:13:55", zone="UTC")
@example(text="2024-01-02T00:13:55.5Z", zone="America/Chicago")
@example(text="2024-03-10 02:30:00", zone="America/Chicago")  # a local time that does not exist
@example(text="2024-11-03 01:30:00", zone="America/Chicago")  # a local time that happens twice
@example(text="9999-12-31 23:00:00", zone="America/Chicago")  # past datetime.max in UTC
@example(text="0001-01-01 00:00:00", zone="Europe/Berlin")  # before datetime.min in UTC
@example(text="٢٠٢٤-01-02 00:13:55", zone="UTC")  # non-ASCII digits: the tolerant path only
@example(text="2024-05-02T18:14:09+02:00", zone="UTC")  # an offset other than zero: tolerant path
@example(text="2024-05-02 18:14:09,5", zone="UTC")
@example(text="2024-05-02 18:14:09.1234567", zone="UTC")
@example(text="2024-05-02t18:14:09", zone="UTC")  # fromisoformat takes any separator; Perkville's T or space
@example(text="2024-05-02X18:14:09", zone="UTC")
def test_fast_path_equals_the_tolerant_path(text: str, zone: str) -> None:
    assert outcome(parse_perkville_datetime, text, zone) == outcome(reference, text, zone)


@pytest.mark.parametrize(
    ("raw", "tz", "expected"),
    [
        ("2024-01-02 00:13:55", "UTC", datetime(2024, 1, 2, 0, 13, 55, tzinfo=UTC)),
        ("2024-01-02T00:13:55", "UTC", datetime(2024, 1, 2, 0, 13, 55, tzinfo=UTC)),
        ("2024-01-02T00:13:55.5", "UTC", datetime(2024, 1, 2, 0, 13, 55, 500000, tzinfo=UTC)),
        ("2024-01-02T00:13:55.123456", "UTC", datetime(2024, 1, 2, 0, 13, 55, 123456, tzinfo=UTC)),
        ("2024-01-02T00:13:55Z", "America/Chicago", datetime(2024, 1, 2, 0, 13, 55, tzinfo=UTC)),
        ("2024-01-02T00:13:55+00:00", "Europe/Berlin", datetime(2024, 1, 2, 0, 13, 55, tzinfo=UTC)),
        ("2024-01-02T00:13:55.25-00:00", "UTC", datetime(2024, 1, 2, 0, 13, 55, 250000, tzinfo=UTC)),
        ("2024-01-02 00:13:55", "America/Chicago", datetime(2024, 1, 2, 6, 13, 55, tzinfo=UTC)),
        ("2024-01-02 00:13:55", timezone(timedelta(hours=2)), datetime(2024, 1, 1, 22, 13, 55, tzinfo=UTC)),
        ("2024-01-02 00:13:55", ZoneInfo("UTC"), datetime(2024, 1, 2, 0, 13, 55, tzinfo=UTC)),
    ],
    ids=[
        "space", "T", "fraction-1", "fraction-6", "Z-ignores-zone", "plus-zero", "minus-zero",
        "naive-in-zone", "fixed-offset-zone", "zoneinfo-utc",
    ],
)
def test_canonical_shapes(raw: str, tz: str | tzinfo, expected: datetime) -> None:
    parsed = parse_perkville_datetime(raw, tz)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2024-13-01 00:00:00", "month must be in 1..12"),
        ("2024-02-30 00:00:00", "day is out of range for month"),
        ("2024-01-02 24:00:00", "hour must be in 0..23"),
        ("2024-01-02 23:59:60", "second must be in 0..59"),
        ("0000-01-02 00:00:00", "year 0 is out of range"),
    ],
    ids=["month-13", "feb-30", "hour-24", "leap-second", "year-0"],
)
def test_invalid_canonical_strings_keep_the_tolerant_error(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_perkville_datetime(raw, "UTC")


def test_unknown_zone_is_still_checked_on_the_fast_path() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_perkville_datetime("2024-01-02 00:13:55", "Mars/Olympus")
    assert parse_perkville_datetime(None, "Mars/Olympus") is None  # null never needs the zone
