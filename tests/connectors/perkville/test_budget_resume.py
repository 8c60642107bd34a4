"""``RequestBudget.resume``: the rate the business's last run learned, taken once known (a run
opens its client, and sends its first requests, before its state is open)."""

from __future__ import annotations

from connectors.perkville.pacing import RequestBudget

from .conftest import FakeTime


def budget(fake: FakeTime, ceiling: float | None = 10.0) -> RequestBudget:
    return RequestBudget(ceiling, clock=fake.clock, sleep=fake.sleep)


def test_it_goes_on_from_the_learned_rate_as_if_it_had_started_there() -> None:
    fake = FakeTime()
    pace = budget(fake)
    for _ in range(2):
        pace.succeeded(pace.acquire(), 0.1)  # slow start: 5 -> 7
    pace.resume(9.0)
    assert pace.rate == 9.0
    pace.succeeded(pace.acquire(), 0.1)
    assert 9.0 < pace.rate < 9.1  # slow start is over: additive increase only


def test_a_learned_rate_below_where_slow_start_got_is_taken_too() -> None:
    fake = FakeTime()
    pace = budget(fake)
    pace.succeeded(pace.acquire(), 0.1)
    pace.resume(2.0)  # the last run was throttled down to 2 requests/s
    assert pace.rate == 2.0


def test_congestion_seen_meanwhile_wins_over_the_last_run() -> None:
    fake = FakeTime()
    pace = budget(fake)
    pace.throttled_for(pace.acquire(), 0.0)
    assert pace.rate == 2.5
    pace.resume(9.0)
    assert pace.rate == 2.5


def test_nothing_learned_or_no_pacing_changes_nothing() -> None:
    fake = FakeTime()
    pace = budget(fake)
    pace.resume(None)
    assert pace.rate == 5.0
    unpaced = budget(fake, ceiling=None)
    unpaced.resume(4.0)
    assert unpaced.rate is None


def test_the_learned_rate_is_kept_under_the_ceiling() -> None:
    fake = FakeTime()
    pace = budget(fake)
    pace.resume(50.0)  # learned under an earlier, higher ceiling
    assert pace.rate == 10.0
