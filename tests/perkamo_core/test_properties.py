"""Hypothesis properties of the stored core (on both databases): ledger = balance, replay is a
no-op, and the interleaving of different customers' events does not change any customer."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from sqlalchemy import Engine

from perkamo_core.models import EventInput
from perkamo_core.service import CoreService

START = datetime(2026, 3, 1, 9, tzinfo=UTC)
CUSTOMERS = ("c0", "c1", "c2")

PROGRAM: dict[str, Any] = {
    "wallets": {"wallets": [{"key": "points", "precision": 0}, {"key": "xp", "precision": 1}]},
    "events": {"rules": [
        {"event": "earn", "wallet": "points", "formula": "{{n}}"},
        {"event": "earn", "wallet": "xp", "formula": "{{n}} / 4"},
        {"event": "spend", "wallet": "points", "formula": "0 - {{n}}"},
        {"event": "visit", "wallet": "points", "amount": 5, "limits": {"per_day": 1}},
    ]},
    "leveling": {"wallet": "points", "thresholds": [0, 40, 120]},
    "perks": {
        "perks": [
            {"key": "starter", "name": "Starter",
             "trigger": {"type": "points_threshold", "wallet": "points", "amount": 25}},
            {"key": "regular", "name": "Regular",
             "trigger": {"type": "event_count", "event": "visit", "count": 2}},
        ],
        "rewards": [{"key": "coffee", "name": "Coffee", "wallet": "points", "cost": 30}],
    },
    "achievements": {
        "achievements": [{"key": "three_earns", "name": "Three earns", "event": "earn",
                          "measure": "count", "target": 3}],
        "streaks": [{"key": "daily_visit", "event": "visit", "period": "day"}],
    },
}

event_specs = hs.lists(
    hs.tuples(
        hs.sampled_from(CUSTOMERS),
        hs.sampled_from(("earn", "spend", "visit", "browse")),
        hs.integers(min_value=0, max_value=60),
        hs.integers(min_value=0, max_value=4),  # day offset
    ),
    min_size=1,
    max_size=18,
)

_spaces = itertools.count()
# The database fixture is shared by the examples of one test on purpose: every example works in a
# Space of its own, so examples cannot see each other's customers.


def fresh_space(service: CoreService) -> str:
    slug = f"prop-{next(_spaces)}"
    service.ensure_space(slug, timezone="Europe/Prague")
    service.load_program(slug, PROGRAM)
    return slug


def to_events(specs: list[tuple[str, str, int, int]]) -> list[EventInput]:
    return [
        EventInput(user_id=user, event=kind, transaction_id=f"t{i}", context={"n": n},
                   occurred_at=START + timedelta(days=day, minutes=i))
        for i, (user, kind, n, day) in enumerate(specs)
    ]


def snapshot(service: CoreService, space: str) -> dict[str, Any]:
    users = sorted(service.wallet_balances(space))
    return {
        "customers": {u: service.customer(space, u) for u in users},
        "points": service.wallet_balances(space, "points"),
        "xp": service.wallet_balances(space, "xp"),
        "meters": service.usage(space)["meters"]["events"],
        "outbox": len(service.iter_outbox(space, limit=10_000)),
    }


def make(engine: Engine) -> CoreService:
    service = CoreService(engine, clock=lambda: START + timedelta(days=5))
    service.migrate()
    return service


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=event_specs, page=hs.integers(min_value=1, max_value=7), redeem_at=hs.integers(0, 18))
def test_every_balance_equals_the_sum_of_its_ledger(
    db_engine: Engine, specs: list[tuple[str, str, int, int]], page: int, redeem_at: int
) -> None:
    service = make(db_engine)
    space = fresh_space(service)
    events = to_events(specs)
    for start in range(0, len(events), page):
        service.ingest_bulk(space, events[start:start + page])
        if start <= redeem_at < start + page:
            try:
                service.redeem(space, events[0].user_id, "coffee", f"r{start}")
            except Exception as exc:  # noqa: BLE001 - only a business refusal is acceptable
                assert getattr(exc, "code", None) == "insufficient_balance"
    for user in service.wallet_balances(space):
        ledger = service.ledger_sums(space, user)
        for wallet in ("points", "xp"):
            balance = service.wallet_balances(space, wallet, [user])[user]
            assert balance == ledger.get(wallet, Decimal(0))
            assert balance >= 0  # neither wallet allows negative balances


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=event_specs, split=hs.integers(min_value=1, max_value=7), data=hs.data())
def test_replaying_any_sequence_changes_nothing(
    db_engine: Engine, specs: list[tuple[str, str, int, int]], split: int, data: hs.DataObject
) -> None:
    service = make(db_engine)
    space = fresh_space(service)
    events = to_events(specs)
    first = [o.result for o in service.ingest_bulk(space, events)]
    before = snapshot(service, space)

    replay = data.draw(hs.permutations(events))
    again: dict[str | None, Any] = {}
    for start in range(0, len(replay), split):
        for event, outcome in zip(replay[start:start + split],
                                  service.ingest_bulk(space, replay[start:start + split])):
            again[event.transaction_id] = outcome.result

    assert snapshot(service, space) == before
    for event, result in zip(events, first):
        assert result is not None
        assert again[event.transaction_id] == {**result, "applied": False, "duplicate": True}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=event_specs, data=hs.data())
def test_interleaving_of_different_customers_does_not_change_the_result(
    db_engine: Engine, specs: list[tuple[str, str, int, int]], data: hs.DataObject
) -> None:
    service = make(db_engine)
    events = to_events(specs)
    per_customer = {u: [e for e in events if e.user_id == u] for u in CUSTOMERS}
    # Another interleaving that keeps each customer's own order.
    queues = {u: list(es) for u, es in per_customer.items() if es}
    shuffled: list[EventInput] = []
    while queues:
        user = data.draw(hs.sampled_from(sorted(queues)))
        shuffled.append(queues[user].pop(0))
        if not queues[user]:
            del queues[user]
    page = data.draw(hs.integers(min_value=1, max_value=6))

    a = fresh_space(service)
    service.ingest_bulk(a, events)
    b = fresh_space(service)
    for start in range(0, len(shuffled), page):
        service.ingest_bulk(b, shuffled[start:start + page])

    left, right = snapshot(service, a), snapshot(service, b)
    for profile in itertools.chain(left["customers"].values(), right["customers"].values()):
        profile.pop("tenant")
    assert left == right
