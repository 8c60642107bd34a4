"""Unit tests of cursors, signposts, look-back, cut-over and lag in the source's clock (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.source_clock import CutOver, lag_seconds, lookback_start, next_cursor, to_stamp
from connectors.perkville.datetimes import format_filter_datetime


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, 5, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("before", "read", "signpost", "ordered", "expected"),
    [
        pytest.param(at(9), None, at(12), True, at(9), id="read-nothing:stays"),
        pytest.param(None, None, at(12), False, None, id="read-nothing-first-pass:none"),
        pytest.param(at(9), at(11), at(10), True, at(11), id="ordered:newest-read-even-past-signpost"),
        pytest.param(at(9), at(11), at(10), False, at(10), id="unordered:not-past-signpost"),
        pytest.param(at(9), at(10), at(11), False, at(10), id="unordered:newest-read-below-signpost"),
        pytest.param(at(9), at(11), None, False, at(9), id="unordered-no-signpost:stays"),
        pytest.param(at(9), at(8), at(12), True, at(9), id="overlap-only:never-back"),
        pytest.param(None, at(8), at(12), True, at(8), id="first-pass:newest-read"),
    ],
)
def test_next_cursor(
    before: datetime | None, read: datetime | None, signpost: datetime | None, ordered: bool,
    expected: datetime | None,
) -> None:
    assert next_cursor(before, read, signpost, ordered=ordered) == expected


@pytest.mark.parametrize(
    ("cursor", "newest", "expected"),
    [
        pytest.param(at(9), at(12), 3 * 3600.0, id="behind"),
        pytest.param(at(12), at(12), 0.0, id="caught-up"),
        pytest.param(at(13), at(12), 0.0, id="past-the-signpost"),
        pytest.param(at(9), None, None, id="never-observed"),
    ],
)
def test_lag_is_the_sources_newest_change_minus_the_cursor(
    cursor: datetime, newest: datetime | None, expected: float | None
) -> None:
    assert lag_seconds(cursor, newest) == expected


def test_the_look_back_counts_back_from_the_sources_newest_change_not_before_the_cut_over() -> None:
    assert lookback_start(at(12), 45) == at(12) - timedelta(days=45)
    assert lookback_start(at(12), 45, floor=at(1)) == at(1)


@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        pytest.param("2026-12-05 02:09:21", "UTC", at(2, 9, 21), id="naive-utc"),
        pytest.param("2026-12-05 02:09:21", "America/Los_Angeles", at(10, 9, 21), id="naive-la"),
        pytest.param("2026-12-05T02:09:21+01:00", "America/Los_Angeles", at(1, 9, 21), id="offset-wins"),
        # 02:30 does not exist in New York on 8 March 2026 (clocks jump 02:00 → 03:00): read as
        # 07:30Z it would show as 03:30; the cursor steps back an hour instead.
        pytest.param(
            "2026-03-08 02:30:00", "America/New_York", datetime(2026, 3, 8, 6, 30, tzinfo=UTC), id="dst-gap"
        ),
        pytest.param(None, "UTC", None, id="null"),
        pytest.param("not a date", "UTC", None, id="unreadable"),
    ],
)
def test_to_stamp(text: str | None, tz: str, expected: datetime | None) -> None:
    assert to_stamp(text, tz) == expected


_ZONES = st.sampled_from(["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Tokyo"])


@given(
    moment=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)),
    tz=_ZONES,
    overlap=st.integers(min_value=0, max_value=7200),
)
def test_a_filter_from_a_cursor_never_passes_the_sources_own_text(
    moment: datetime, tz: str, overlap: int
) -> None:
    """Whatever zone the bridge is told, ``cursor − overlap`` sent back as a filter is at or
    before the naive text the source showed (so that row and the overlap are read again)."""
    text = moment.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
    stamp = to_stamp(text, tz)
    assert stamp is not None
    sent = format_filter_datetime(stamp - timedelta(seconds=overlap), tz)
    assert datetime.fromisoformat(sent) <= datetime.fromisoformat(text)
    if overlap == 0 and tz == "UTC":
        assert sent == text.replace(" ", "T")


CUT = CutOver.after(at(12, 0, 0), last_id=500)


@pytest.mark.parametrize(
    ("dt", "row_id", "carried"),
    [
        pytest.param(at(11, 59, 59), 900, True, id="earlier-second"),
        pytest.param(at(12), 500, True, id="the-newest-row-itself"),
        pytest.param(at(12), 499, True, id="same-second-older-id"),
        pytest.param(at(12), 501, False, id="same-second-recorded-later"),
        pytest.param(at(12, 0, 1), 1, False, id="after"),
        pytest.param(None, 1, False, id="undated"),
        pytest.param(at(12), "/v2/transactions/17/", True, id="uri-id"),
        pytest.param(at(12), "x", False, id="unreadable-id"),
    ],
)
def test_the_cut_over_is_a_position_after_the_sources_newest_row(
    dt: datetime | None, row_id: object, carried: bool
) -> None:
    assert CUT.at == at(12, 0, 1) and CUT.floor == at(12)
    assert CUT.carries(dt, row_id) is carried


def test_a_cut_over_round_trips_through_its_cursor_text_and_reads_older_values() -> None:
    assert CutOver.from_text(CUT.to_text()) == CUT
    assert CUT.to_text() == "2026-12-05T12:00:01+00:00|500"
    legacy = CutOver.from_text("2026-12-05T12:00:00+00:00")  # an earlier version's cut-over
    assert legacy.floor == legacy.at == at(12)
    assert legacy.carries(at(11, 59, 59), 1) and not legacy.carries(at(12), 1)
