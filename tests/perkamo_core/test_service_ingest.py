"""CoreService ingest: the seed's wire result, duplicates, bulk pages, caller transactions, outbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from perkamo_core import storage as st
from perkamo_core.errors import NotFoundError, TransactionIdConflictError, ValidationError
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService

SPACE = "commerce-test"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

SEED_PROGRAM: dict[str, Any] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points"}]},
    "events": {"rules": [
        {"event": "purchase.completed", "label": "Purchase", "wallet": "points", "amount": 50},
    ]},
    "leveling": {"wallet": "points", "thresholds": [0, 100]},
    "perks": {
        "perks": [
            {"key": "welcome_member", "name": "Welcome member",
             "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
            {"key": "active_user", "name": "Active user",
             "description": "Daily habit perk for apps like progress trackers or banking.",
             "trigger": {"type": "points_threshold", "wallet": "points", "amount": 1000}},
        ],
        "rewards": [
            {"key": "free_shipping", "name": "Free shipping", "wallet": "points", "cost": 40,
             "effect": {"type": "free_shipping"}},
        ],
    },
}

SEED_EVENT = {
    "user_id": "customer_123",
    "event": "purchase.completed",
    "transaction_id": "order_1092",
    "context": {"amount": 12900, "currency": "CZK"},
    "occurred_at": "2026-06-01T10:00:00.000Z",
}

SEED_RESULT = {
    "applied": True,
    "duplicate": False,
    "delta": [{"wallet": "points", "amount": 50}],
    "leveled_up": False,
    "unlocked": [{"type": "perk", "key": "welcome_member", "name": "Welcome member"}],
    "wallet_state": {"points": 50},
    "level": {"wallet": "points", "level": 1, "current": 50, "nextLevelAt": 100,
              "currentLevelAt": 0, "progress": 0.5},
}


class Clock:
    """A settable clock for the service."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_service(engine: Engine, clock: Callable[[], datetime] | None = None,
                 program: dict[str, Any] | None = None) -> CoreService:
    service = CoreService(engine, clock=clock or Clock())
    service.migrate()
    service.ensure_space(SPACE)
    service.load_program(SPACE, program if program is not None else SEED_PROGRAM)
    return service


def purchase(user: str, txid: str, **extra: Any) -> EventInput:
    return EventInput(user_id=user, event="purchase.completed", transaction_id=txid,
                      occurred_at=extra.pop("occurred_at", "2026-06-01T10:00:00Z"), **extra)


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def assert_refused_writing_nothing(
    engine: Engine, service: CoreService, event: EventInput, field: str
) -> None:
    """``ingest`` refuses ``event`` with a 400 naming ``field``, and no event or customer exists."""
    with pytest.raises(ValidationError) as raised:
        service.ingest(SPACE, event)
    assert raised.value.field == field
    assert raised.value.status == 400
    assert count(engine, st.events) == 0
    assert count(engine, st.customers) == 0


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    return make_service(db_engine)


def test_seed_event_gives_the_seed_result_and_a_duplicate_changes_nothing(
    service: CoreService, db_engine: Engine
) -> None:
    first = service.ingest(SPACE, EventInput(**SEED_EVENT))
    assert first == SEED_RESULT
    assert type(first["delta"][0]["amount"]) is int
    rows = {t.name: count(db_engine, t) for t in (st.events, st.ledger, st.outbox, st.perks)}

    again = service.ingest(SPACE, EventInput(**SEED_EVENT))

    assert again == {**SEED_RESULT, "applied": False, "duplicate": True}
    assert {t.name: count(db_engine, t) for t in (st.events, st.ledger, st.outbox, st.perks)} == rows
    assert service.wallet_balances(SPACE) == {"customer_123": Decimal(50)}
    assert service.usage(SPACE)["meters"]["events"] == 1
    assert service.usage(SPACE)["meters"]["duplicates"] == 1


def test_bulk_results_in_input_order_with_duplicates_in_page_and_in_db(service: CoreService) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    page = [purchase("b", "t2"), purchase("a", "t1"), purchase("b", "t2"), purchase("a", "t3")]

    outcomes = service.ingest_bulk(SPACE, page)

    assert [(o.result or {}).get("duplicate") for o in outcomes] == [False, True, True, False]
    assert [(o.result or {}).get("applied") for o in outcomes] == [True, False, False, True]
    assert outcomes[2].result is not None and outcomes[2].result["delta"] == outcomes[0].result["delta"]  # type: ignore[index]
    assert outcomes[3].result["wallet_state"] == {"points": 100}  # type: ignore[index]
    assert outcomes[3].result["leveled_up"] is True  # type: ignore[index]
    assert service.wallet_balances(SPACE) == {"a": Decimal(100), "b": Decimal(50)}


def test_an_id_reused_under_another_user_is_a_conflict_and_creates_no_customer(service: CoreService) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    with pytest.raises(TransactionIdConflictError):
        service.ingest(SPACE, purchase("b", "t1"))
    with pytest.raises(NotFoundError):
        service.customer(SPACE, "b")


def test_bulk_reports_invalid_items_and_applies_the_rest(service: CoreService, db_engine: Engine) -> None:
    page = [
        purchase("a", "ok-1"),
        EventInput(user_id="a", event="purchase.completed", transaction_id="bad",
                   context={"Level": 3}),
        purchase("x" * 257, "bad-user"),
        purchase("a", "ok-2"),
    ]
    outcomes = service.ingest_bulk(SPACE, page)

    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert isinstance(outcomes[1].error, ValidationError)
    assert outcomes[1].error.field == "context.Level"
    assert outcomes[2].error is not None and outcomes[2].error.field == "user_id"
    assert count(db_engine, st.events) == 2


def test_bulk_with_caller_connection_commits_only_with_the_caller(
    service: CoreService, db_engine: Engine
) -> None:
    with pytest.raises(RuntimeError):
        with db_engine.begin() as conn:
            outcomes = service.ingest_bulk(SPACE, [purchase("a", "t1")], conn=conn)
            assert outcomes[0].ok
            raise RuntimeError("the bridge failed to store its cursor")
    assert count(db_engine, st.events) == 0
    assert service.wallet_balances(SPACE) == {}

    with db_engine.begin() as conn:
        service.ingest_bulk(SPACE, [purchase("a", "t1")], conn=conn)
    assert service.wallet_balances(SPACE) == {"a": Decimal(50)}


def test_transaction_id_and_occurred_at_default(db_engine: Engine) -> None:
    clock = Clock(datetime(2026, 7, 1, 8, 30, tzinfo=UTC))
    service = make_service(db_engine, clock)
    service.ingest(SPACE, EventInput(user_id="a", event="purchase.completed"))
    service.ingest(SPACE, EventInput(user_id="a", event="purchase.completed"))

    events = service.customer(SPACE, "a")["events"]
    assert len(events) == 2
    assert all(e["transaction_id"].startswith("tx_") for e in events)
    assert events[0]["transaction_id"] != events[1]["transaction_id"]
    assert {e["occurred_at"] for e in events} == {"2026-07-01T08:30:00.000Z"}


def test_unknown_event_is_recorded_with_an_empty_delta(service: CoreService) -> None:
    result = service.ingest(SPACE, EventInput(user_id="a", event="page.viewed", transaction_id="p1"))
    assert result["applied"] is True
    assert result["delta"] == []
    assert service.customer(SPACE, "a")["events"][0]["event"] == "page.viewed"


def test_unknown_space_is_not_found(service: CoreService) -> None:
    with pytest.raises(NotFoundError):
        service.ingest("nope", purchase("a", "t1"))
    with pytest.raises(NotFoundError):
        service.customer(SPACE, "nobody")


def test_read_model_lists_the_latest_20_events_newest_first(service: CoreService) -> None:
    page = [
        EventInput(user_id="a", event="page.viewed", transaction_id=f"p{i}",
                   occurred_at=NOW + timedelta(minutes=i))
        for i in range(25)
    ]
    service.ingest_bulk(SPACE, page)
    events = service.customer(SPACE, "a")["events"]
    assert [e["transaction_id"] for e in events] == [f"p{i}" for i in range(24, 4, -1)]


def test_outbox_lists_events_and_identifies_in_commit_order(service: CoreService) -> None:
    service.ingest(SPACE, purchase("a", "t1", context={"amount": 1}))
    service.identify(SPACE, "a", {"plan": "gold"})
    service.ingest_bulk(SPACE, [purchase("b", "t2"), purchase("a", "t1")])

    items = service.iter_outbox(SPACE)
    assert [(i.kind, i.user_id, i.transaction_id) for i in items] == [
        ("event", "a", "t1"), ("identify", "a", None), ("event", "b", "t2"),
    ]
    assert items[0].context == {"amount": 1}
    assert items[0].occurred_at == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert items[1].traits == {"plan": "gold"}
    assert [i.seq for i in service.iter_outbox(SPACE, after_seq=items[0].seq)] == [
        items[1].seq, items[2].seq
    ]
    assert len(service.iter_outbox(SPACE, limit=1)) == 1


def test_ledger_and_materialized_balance_agree(service: CoreService) -> None:
    service.ingest_bulk(SPACE, [purchase("a", f"t{i}") for i in range(3)])
    service.redeem(SPACE, "a", "free_shipping", "r1")
    assert service.ledger_sums(SPACE, "a") == {"points": Decimal(110)}
    assert service.wallet_balances(SPACE, user_ids=["a", "ghost"]) == {"a": Decimal(110)}


def test_usage_counts_events_identifies_and_requests(service: CoreService) -> None:
    service.ingest_bulk(SPACE, [purchase("a", "t1"), purchase("a", "t1")])
    service.identify_bulk(SPACE, [("a", {"x": 1}), ("b", {})])
    service.record_usage(SPACE, "requests", 3)
    usage = service.usage(SPACE)
    assert usage["period"] == "2026-06"
    assert usage["meters"] == {"events": 1, "duplicates": 1, "identify_calls": 2,
                               "redemptions": 0, "requests": 3}


def test_bulk_accepts_plain_mappings_and_reports_type_errors(service: CoreService) -> None:
    outcomes = service.ingest_bulk(SPACE, [
        {"user_id": "a", "event": "purchase.completed", "transaction_id": "m1"},
        {"user_id": 42, "event": "purchase.completed"},
        {"event": "purchase.completed"},
    ])
    assert outcomes[0].ok
    assert [o.error.field for o in outcomes[1:] if o.error is not None] == ["user_id", "user_id"]


def test_state_document_stays_bounded_over_a_long_history(db_engine: Engine) -> None:
    from perkamo_core.service import PRUNE_ABOVE_KEYS, STATE_PRUNE_MARGIN_DAYS

    program = {"events": {"rules": [
        {"event": "visit", "wallet": "points", "amount": 1, "limits": {"per_day": 1}}]}}
    service = make_service(db_engine, program=program)
    start = datetime(2025, 1, 1, 12, tzinfo=UTC)
    days = PRUNE_ABOVE_KEYS + STATE_PRUNE_MARGIN_DAYS + 100
    page = [EventInput(user_id="a", event="visit", transaction_id=f"v{d}-{n}",
                       occurred_at=start + timedelta(days=d, hours=n))
            for d in range(days) for n in range(2)]
    for first in range(0, len(page), 40):
        service.ingest_bulk(SPACE, page[first:first + 40])

    assert service.wallet_balances(SPACE) == {"a": Decimal(days)}  # one per day, not two
    with db_engine.connect() as conn:
        doc = conn.execute(select(st.customers.c.state)).scalar_one()
    assert len(doc["counters"]) <= PRUNE_ABOVE_KEYS + 40
    # A late event within the margin still sees its day's counter.
    late = service.ingest(SPACE, EventInput(user_id="a", event="visit", transaction_id="late",
                                            occurred_at=start + timedelta(days=days - 10, hours=5)))
    assert late["delta"] == []


def test_bulk_without_outbox_applies_the_page_but_records_no_outbox_rows(
    service: CoreService, db_engine: Engine
) -> None:
    service.ingest_bulk(SPACE, [purchase("a", "t1")])
    outcomes = service.ingest_bulk(SPACE, [purchase("a", "t2"), purchase("b", "t3")], outbox=False)

    assert [o.result["applied"] for o in outcomes] == [True, True]  # type: ignore[index]
    assert [i.transaction_id for i in service.iter_outbox(SPACE)] == ["t1"]
    assert count(db_engine, st.events) == 3
    assert service.wallet_balances(SPACE) == {"a": Decimal(100), "b": Decimal(50)}
    # A later duplicate of an outbox-less event is still a duplicate.
    assert service.ingest(SPACE, purchase("b", "t3"))["duplicate"] is True
