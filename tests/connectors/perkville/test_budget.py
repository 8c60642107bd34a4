"""The adaptive request budget (AIMD): halving on 429, Retry-After, ceiling, floor, growth."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.perkville.pacing import RequestBudget

from .conftest import API, FakeTime, make_client, page, token_route


def budget(fake: FakeTime, ceiling: float | None = 10.0, **kwargs: float) -> RequestBudget:
    return RequestBudget(ceiling, clock=fake.clock, sleep=fake.sleep, **kwargs)  # type: ignore[arg-type]


def test_it_starts_at_half_the_ceiling_and_spaces_requests_by_the_rate() -> None:
    fake = FakeTime()
    pace = budget(fake)
    assert pace.rate == 5.0
    pace.acquire()
    pace.acquire()
    pace.acquire()
    assert fake.sleeps == [pytest.approx(0.2), pytest.approx(0.2)]


def test_slow_start_grows_by_one_per_quick_answer_up_to_the_ceiling() -> None:
    fake = FakeTime()
    pace = budget(fake)
    for expected in (6.0, 7.0, 8.0, 9.0, 10.0, 10.0, 10.0):
        pace.succeeded(pace.acquire(), 0.1)
        assert pace.rate == expected


def test_a_429_halves_the_rate_and_nothing_goes_until_retry_after_has_passed() -> None:
    fake = FakeTime()
    pace = budget(fake, start=8.0)
    ticket = pace.acquire()
    pace.throttled_for(ticket, 3.0)
    assert pace.rate == 4.0
    paused_at = fake.now
    sent = pace.acquire()
    assert sent == pytest.approx(paused_at + 3.0)
    assert fake.sleeps == [pytest.approx(3.0)]
    pace.acquire()
    assert fake.sleeps[-1] == pytest.approx(0.25)  # then at the halved rate


def test_answers_to_requests_sent_before_a_decrease_do_not_decrease_it_again() -> None:
    fake = FakeTime()
    pace = budget(fake, start=8.0)
    in_flight = [pace.acquire() for _ in range(3)]
    pace.throttled_for(in_flight[0], 1.0)
    pace.throttled_for(in_flight[1], 1.0)
    pace.troubled(in_flight[2])
    assert pace.rate == 4.0
    assert pace.throttled == 2
    later = pace.acquire()
    pace.throttled_for(later, 1.0)
    assert pace.rate == 2.0


def test_after_congestion_it_grows_additively() -> None:
    fake = FakeTime()
    pace = budget(fake, start=8.0, increase=0.5)
    pace.throttled_for(pace.acquire(), 0.0)
    assert pace.rate == 4.0
    pace.succeeded(pace.acquire(), 0.1)
    assert pace.rate == pytest.approx(4.0 + 0.5 / 4.0)


def test_server_errors_and_network_errors_slow_it_down() -> None:
    fake = FakeTime()
    pace = budget(fake, start=8.0)
    pace.troubled(pace.acquire())
    assert pace.rate == 6.0
    assert pace.troubles == 1


def test_slow_answers_do_not_make_it_grow() -> None:
    fake = FakeTime()
    pace = budget(fake, slow_seconds=2.0)
    pace.succeeded(pace.acquire(), 2.5)
    assert pace.rate == 5.0


def test_the_floor_keeps_a_run_moving() -> None:
    fake = FakeTime()
    pace = budget(fake, floor=0.5)
    for _ in range(20):
        pace.throttled_for(pace.acquire(), 0.0)
    assert pace.rate == 0.5


def test_a_learned_start_is_kept_inside_the_bounds() -> None:
    fake = FakeTime()
    assert budget(fake, start=50.0).rate == 10.0
    assert budget(fake, start=0.001, floor=0.5).rate == 0.5


def test_unpaced_sends_at_once_but_still_honours_retry_after() -> None:
    fake = FakeTime()
    pace = budget(fake, ceiling=None)
    for _ in range(50):
        pace.succeeded(pace.acquire(), 0.01)
    assert fake.sleeps == []
    assert pace.rate is None
    pace.throttled_for(pace.acquire(), 2.0)
    pace.acquire()
    assert fake.sleeps == [pytest.approx(2.0)]


@settings(max_examples=200, deadline=None)
@given(
    ceiling=st.floats(min_value=0.5, max_value=50.0),
    start=st.one_of(st.none(), st.floats(min_value=0.01, max_value=100.0)),
    events=st.lists(
        st.tuples(
            st.sampled_from(["ok", "slow", "429", "5xx"]),
            st.floats(min_value=0.0, max_value=5.0),
            st.floats(min_value=0.0, max_value=2.0),
        ),
        max_size=60,
    ),
)
def test_the_rate_never_leaves_its_bounds_and_requests_never_come_faster_than_the_ceiling(
    ceiling: float, start: float | None, events: list[tuple[str, float, float]]
) -> None:
    fake = FakeTime()
    pace = budget(fake, ceiling=ceiling, start=start) if start is not None else budget(fake, ceiling=ceiling)
    sent: list[float] = []
    for kind, wait, idle in events:
        fake.now += idle
        ticket = pace.acquire()
        sent.append(ticket)
        if kind == "ok":
            pace.succeeded(ticket, 0.1)
        elif kind == "slow":
            pace.succeeded(ticket, 10.0)
        elif kind == "429":
            pace.throttled_for(ticket, wait)
        else:
            pace.troubled(ticket)
        assert pace.rate is not None
        assert pace.floor <= pace.rate <= ceiling
    gaps = [later - earlier for earlier, later in zip(sent, sent[1:])]
    assert all(gap >= 1.0 / ceiling - 1e-6 for gap in gaps)


# ----------------------------------------------------------------- threads waiting together
class SteppedTime:
    """A clock shared by real threads that moves only when the test moves it.

    ``sleep`` blocks its thread until the test has advanced the clock to the moment the sleep
    was for, so the waits of several threads are asserted without measuring real time.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._wakes: list[float] = []  # when each sleeping thread is to wake
        self._changed = threading.Condition()

    def clock(self) -> float:
        with self._changed:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._changed:
            wake = self.now + seconds
            self.sleeps.append(seconds)
            self._wakes.append(wake)
            self._changed.wait_for(lambda: self.now >= wake)

    @property
    def asleep(self) -> int:
        with self._changed:
            return len(self._wakes)

    def advance(self) -> None:
        """Move the clock to the earliest wake-up and wake the sleepers due then."""
        with self._changed:
            self.now = min(self._wakes)
            self._wakes = [wake for wake in self._wakes if wake > self.now]
            self._changed.notify_all()


class Senders:
    """Threads that each ``acquire`` once from one budget, started and stepped by the test."""

    def __init__(self, pace: RequestBudget, stepped: SteppedTime) -> None:
        self.pace = pace
        self.stepped = stepped
        self.left: list[tuple[int, float]] = []  # (sender, ticket) in the order they left
        self.failed: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, count: int = 1) -> None:
        """Start ``count`` senders, one at a time: each is queued before the next one comes."""
        for _ in range(count):
            number = len(self._threads)
            thread = threading.Thread(target=self._send, args=(number,), daemon=True)
            self._threads.append(thread)
            thread.start()
            self.settle()

    def _send(self, number: int) -> None:
        try:
            ticket = self.pace.acquire()
        except BaseException as exc:  # KeyboardInterrupt too: the test asserts what it was
            with self._lock:
                self.failed.append(exc)
            return
        with self._lock:
            self.left.append((number, ticket))

    def settle(self) -> None:
        """Wait until every sender has left, failed or is queued, and a queued one is asleep."""
        deadline = time.monotonic() + 10.0
        while True:
            with self._lock:
                done = len(self.left) + len(self.failed)
            waiting = self.pace.waiting
            if done + waiting == len(self._threads) and (waiting == 0 or self.stepped.asleep > 0):
                return
            assert time.monotonic() < deadline, "the senders did not settle"
            time.sleep(0.001)  # polls the observable state above; the bound is the deadline

    def run(self, between: Callable[[], None] = lambda: None) -> None:
        """Advance the clock from wake-up to wake-up until every sender has left or failed."""
        self.settle()
        while self.pace.waiting:
            between()
            self.stepped.advance()
            self.settle()
        for thread in self._threads:
            thread.join(timeout=10.0)
            assert not thread.is_alive()

    def gaps(self) -> list[float]:
        tickets = [ticket for _number, ticket in self.left]
        return [later - earlier for earlier, later in zip(tickets, tickets[1:])]


def test_waiters_leave_at_the_rate_of_their_turn_not_the_rate_they_queued_at() -> None:
    # A traced backfill: the signposts' answers raised the rate to 8, six lists were opened at
    # once, and two more answers raised it to 10 before the second of them left.
    stepped = SteppedTime()
    pace = RequestBudget(10.0, clock=stepped.clock, sleep=stepped.sleep)
    for _ in range(3):
        pace.succeeded(stepped.now, 0.12)
    assert pace.rate == 8.0
    senders = Senders(pace, stepped)
    senders.start(6)
    pace.succeeded(stepped.now, 0.12)
    pace.succeeded(stepped.now, 0.12)
    assert pace.rate == 10.0
    senders.run()
    # The second was given its moment as the first left (at 8/s); the later ones at 10/s.
    assert senders.gaps() == [pytest.approx(0.125)] + [pytest.approx(0.1)] * 4


def test_a_rate_rising_while_they_leave_shortens_each_next_gap() -> None:
    stepped = SteppedTime()
    pace = RequestBudget(10.0, clock=stepped.clock, sleep=stepped.sleep)
    senders = Senders(pace, stepped)
    senders.start(4)
    senders.run(between=lambda: pace.succeeded(stepped.now, 0.1))  # one quick answer per departure
    assert senders.gaps() == [pytest.approx(1 / 5), pytest.approx(1 / 6), pytest.approx(1 / 7)]


def test_waiters_leave_in_arrival_order_one_interval_apart() -> None:
    stepped = SteppedTime()
    pace = RequestBudget(10.0, start=4.0, clock=stepped.clock, sleep=stepped.sleep)
    senders = Senders(pace, stepped)
    senders.start(5)
    senders.run()
    assert [number for number, _ticket in senders.left] == [0, 1, 2, 3, 4]
    assert senders.gaps() == [pytest.approx(0.25)] * 4
    assert stepped.sleeps == [pytest.approx(0.25)] * 4  # one sleep each, no polling


def test_a_429_while_they_wait_pauses_every_waiter_then_they_leave_at_the_halved_rate() -> None:
    stepped = SteppedTime()
    pace = RequestBudget(10.0, start=8.0, clock=stepped.clock, sleep=stepped.sleep)
    senders = Senders(pace, stepped)
    senders.start(4)
    (_first, ticket), = senders.left
    pace.throttled_for(ticket, 2.0)  # the first one's answer: 429, Retry-After 2
    senders.run()
    assert [number for number, _ticket in senders.left] == [0, 1, 2, 3]
    assert [sent - ticket for _number, sent in senders.left] == [
        0.0, pytest.approx(2.0), pytest.approx(2.25), pytest.approx(2.5)
    ]


def test_a_waiter_whose_sleep_fails_gives_its_turn_to_the_next() -> None:
    stepped = SteppedTime()
    failures = iter([KeyboardInterrupt()])

    def sleep(seconds: float) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        stepped.sleep(seconds)

    pace = RequestBudget(10.0, clock=stepped.clock, sleep=sleep)
    senders = Senders(pace, stepped)
    senders.start(3)  # the second one's sleep fails; the third takes its turn
    senders.run()
    assert [type(exc) for exc in senders.failed] == [KeyboardInterrupt]
    assert [number for number, _ticket in senders.left] == [0, 2]
    assert senders.gaps() == [pytest.approx(0.2)]
    assert pace.waiting == 0


# ----------------------------------------------------------------- the client draws from it
def test_the_client_halves_its_budget_on_a_429_and_waits_out_retry_after(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    ok = httpx.Response(200, json=page([{"transaction_id": 1}], next=None))
    router.get(API + "transactions/").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "2"}), ok])
    client = make_client(router, fake_time, requests_per_second=10.0)
    assert client.budget.rate == 5.0
    assert len(list(client.iter_transactions())) == 1
    assert fake_time.sleeps == [pytest.approx(2.0)]  # the pause, nothing else: the rate is not exceeded
    assert client.budget.rate is not None and client.budget.rate < 3.0
    assert client.stats["throttled"] == 1 and client.budget.throttled == 1


def test_the_client_starts_from_a_learned_rate(router: respx.MockRouter, fake_time: FakeTime) -> None:
    client = make_client(router, fake_time, requests_per_second=10.0, start_rate=8.5)
    assert client.budget.rate == 8.5
