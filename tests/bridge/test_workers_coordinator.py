"""Worker coordination through leases, in-process with a controllable clock, on both databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from bridge.scheduler import JobContext, JobSkipped
from bridge.state import LeaseStore, StateStore
from bridge.workers import NoFreeSlotError, WorkerCoordinator, fair_share

BUSINESSES = ["b1", "b2", "b3", "b4", "b5"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(
    ("businesses", "workers", "share"),
    [(6, 3, 2), (5, 2, 3), (1, 4, 1), (0, 1, 1), (7, 0, 7)],
    ids=["even", "odd", "more-workers", "none", "no-live-worker"],
)
def test_fair_share(businesses: int, workers: int, share: int) -> None:
    assert fair_share(businesses, workers) == share


def _worker(engine: Engine, clock: Clock, name: str, **kwargs: object) -> WorkerCoordinator:
    return WorkerCoordinator(
        engine, BUSINESSES, owner=name, lease_seconds=10,
        store=LeaseStore(engine, clock=clock), clock=clock, **kwargs,  # type: ignore[arg-type]
    )


def _context(business: str) -> JobContext:
    return JobContext("sync", business, None, None, threading.Event(), "w", None)  # type: ignore[arg-type]


def test_workers_share_hand_back_and_take_over(db_engine: Engine) -> None:
    StateStore(db_engine).migrate()
    clock = Clock()
    a, b, c = (_worker(db_engine, clock, name) for name in ("a", "b", "c"))
    assert a.claim_slot() == 1
    a.heartbeat()
    assert a.owned() == frozenset(BUSINESSES)  # alone: everything

    assert b.claim_slot() == 2
    b.heartbeat()  # at its share already held by a: nothing yet
    a.heartbeat()  # a sees two workers and hands back the excess
    b.heartbeat()
    assert len(a.owned()) == 3 and len(b.owned()) == 2
    assert a.owned().isdisjoint(b.owned())

    # A business whose job is running is never handed back.
    c.claim_slot()
    running = sorted(a.owned())
    with a.gate(_context(running[-1])):
        a.heartbeat()
        assert running[-1] in a.owned()
    with pytest.raises(JobSkipped):
        with b.gate(_context(running[-1])):
            pass

    # c dies without a word; after its leases expire the others take everything over.
    c.heartbeat()
    a.heartbeat()
    b.heartbeat()
    c.heartbeat()
    assert a.owned() | b.owned() | c.owned() == frozenset(BUSINESSES)
    assert c.owned()
    for _ in range(4):  # a and b keep beating every 4 s; c's leases run out after 10 s
        clock.now += timedelta(seconds=4)
        a.heartbeat()
        b.heartbeat()
    assert a.owned() | b.owned() == frozenset(BUSINESSES)
    assert a.owned().isdisjoint(b.owned())
    # Should c come back (a long stall), it finds its businesses gone and rejoins with none.
    c.heartbeat()
    assert c.owned() == frozenset()
    assert not c.lost.is_set()  # nobody had taken its slot

    # A clean stop hands everything back at once; the others share it.
    a.close()
    for worker in (b, c, b, c):
        worker.heartbeat()
    assert b.owned() | c.owned() == frozenset(BUSINESSES)
    assert b.owned().isdisjoint(c.owned())
    assert {len(b.owned()), len(c.owned())} == {2, 3}


def test_a_worker_whose_slot_was_taken_over_stops(db_engine: Engine) -> None:
    StateStore(db_engine).migrate()
    clock = Clock()
    stalled = _worker(db_engine, clock, "stalled", max_slots=1)
    stalled.claim_slot()
    newcomer = _worker(db_engine, clock, "newcomer", max_slots=1)
    with pytest.raises(NoFreeSlotError):
        newcomer.claim_slot()
    clock.now += timedelta(seconds=11)  # the stalled worker missed its renewals
    assert newcomer.claim_slot() == 1
    stalled.heartbeat()
    assert stalled.lost.is_set()
    assert not newcomer.lost.is_set()
