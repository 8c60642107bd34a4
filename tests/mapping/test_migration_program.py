"""The shipped migration program reconciles: replaying Perkville history through the engine gives
exactly the balance Perkville reports, whatever the order, repetition and void timing of deliveries."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from config.programs import load_migration_program
from mapping import (
    PERKVILLE_EVENTS,
    PerkamoEvent,
    to_adjustment_event,
    to_events,
    to_opening_balance_event,
)
from perkamo_core.engine import CustomerState, EngineEvent, apply_outcome, evaluate
from perkamo_core.program import Program

BUSINESS = 25
START = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)


class Replay:
    """The engine plus the service's idempotency on transaction_id, in memory."""

    def __init__(self) -> None:
        self.program = Program.from_modules(load_migration_program())
        self.states: dict[str, CustomerState] = defaultdict(CustomerState)
        self.seen: set[str] = set()
        self.duplicates = 0

    def apply(self, event: PerkamoEvent) -> None:
        if event.transaction_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(event.transaction_id)
        assert event.occurred_at is not None
        engine_event = EngineEvent(event.event, event.occurred_at, event.context, event.transaction_id)
        state = self.states[event.user_id]
        outcome = evaluate(self.program, state, engine_event, UTC)
        assert all("failed" not in (t.reason or "") for t in outcome.trace), outcome.trace
        self.states[event.user_id] = apply_outcome(state, outcome)

    def balance(self, user_id: str) -> Decimal:
        return self.states[user_id].balances.get("points", Decimal(0))


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Perkville ledger rows (final state) with both redemption sign conventions and voids."""
    rows: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 30))):
        classification = draw(st.sampled_from(["EARN", "EARN", "REDEEM"]))
        points = draw(st.integers(0, 1000))
        if classification == "REDEEM" and draw(st.booleans()):
            points = -points  # Perkville may report redemptions as negative
        source = draw(st.sampled_from([None, f"pos:{i}", f"perkamo:tx_{i}", f"a:txn:{i}"]))
        rows.append({
            "transaction_id": 1000 + i,
            "business": f"/v2/businesses/{BUSINESS}/",
            "user": f"/v2/users/{draw(st.integers(1, 3))}/",
            "perk": "/v2/perks/7788/",
            "classification": classification,
            "points": points if draw(st.booleans()) else str(points),
            "quantity": draw(st.integers(1, 3)),
            "transaction_dt": (START + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S"),
            "transaction_status": "VOID" if draw(st.integers(0, 3)) == 0 else "ACTIVE",
            "trans_source_id": source,
        })
    return rows


def perkville_balances(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    """What Perkville reports: active rows only, sign from classification."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row["transaction_status"] != "ACTIVE":
            continue
        sign = 1 if row["classification"] == "EARN" else -1
        totals["perkville:" + row["user"].split("/")[-2]] += sign * abs(Decimal(row["points"])) * row["quantity"]
    return totals


def void_refs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reversing VOID_REF rows Perkville adds when it voids a row."""
    return [
        dict(row, transaction_id=row["transaction_id"] + 500_000, transaction_status="VOID_REF",
             points=-int(row["points"]), trans_source_id=None)
        for row in rows if row["transaction_status"] == "VOID"
    ]


@settings(max_examples=60, deadline=None)
@given(rows=histories(), data=st.data())
def test_history_replay_reproduces_point_balance(rows: list[dict[str, Any]], data: st.DataObject) -> None:
    # First sync: voided rows may be seen while still active, or already void.
    first = [dict(row, transaction_status="ACTIVE") if row["transaction_status"] == "VOID" and data.draw(st.booleans())
             else row for row in rows]
    # Look-back re-reads: the final rows and the VOID_REF rows, in any order, some twice.
    later = data.draw(st.permutations(rows + void_refs(rows)))
    repeats = data.draw(st.lists(st.sampled_from(rows), max_size=5)) if rows else []
    replay = Replay()
    skipped = 0
    for raw in [*first, *later, *repeats]:
        result = to_events(raw, business_id=BUSINESS)
        assert result.ok, result.issues
        skipped += len(result.skipped)
        for event in result.events:
            assert event.event in PERKVILLE_EVENTS
            replay.apply(event)
    assert skipped == sum(1 for r in later if r["transaction_status"] == "VOID_REF")
    expected = perkville_balances(rows)
    for user in {"perkville:1", "perkville:2", "perkville:3"}:
        assert replay.balance(user) == expected.get(user, Decimal(0)), user


@settings(max_examples=40, deadline=None)
@given(rows=histories(), cut=st.integers(0, 30), lost=st.integers(0, 30))
def test_balance_mode_and_repair_reproduce_point_balance(rows: list[dict[str, Any]], cut: int, lost: int) -> None:
    """Opening balances at the cut-over, replay after it, then a repair for a row that went missing."""
    before, after = rows[:cut], rows[cut:]
    opening = perkville_balances(before)
    cutover = START + timedelta(hours=cut) - timedelta(minutes=1)
    replay = Replay()
    for user in ("1", "2", "3"):
        connection = {"connection_id": f"c{user}", "business": BUSINESS, "user": f"/v2/users/{user}/",
                      "point_balance": str(opening.get(f"perkville:{user}", Decimal(0)))}
        (event,) = to_opening_balance_event(connection, business_id=BUSINESS, cutover_at=cutover).events
        replay.apply(event)
    for index, raw in enumerate(after):
        if index == lost:
            continue  # a row that never arrived: reconcile must repair it
        for event in to_events(raw, business_id=BUSINESS).events:
            replay.apply(event)
    expected = perkville_balances(rows)
    for n, user in enumerate(("1", "2", "3")):
        customer = f"perkville:{user}"
        difference = expected.get(customer, Decimal(0)) - replay.balance(customer)
        result = to_adjustment_event(business_id=BUSINESS, perkville_user_id=user, n=n, amount=difference,
                                     occurred_at=START + timedelta(days=30))
        for event in result.events:
            replay.apply(event)
        assert replay.balance(customer) == expected.get(customer, Decimal(0))


def test_migration_program_is_valid_and_allows_negative_points() -> None:
    modules = load_migration_program()
    program = Program.from_modules(modules)
    assert program.wallet("points").allow_negative
    assert {rule.event for rule in program.events.rules} == set(PERKVILLE_EVENTS) - {"perkville.activity"}
    assert load_migration_program() is not modules  # a fresh copy each time


def test_redemption_past_zero_is_not_clamped() -> None:
    """A member redeeming more than the replay has seen so far keeps the exact negative balance."""
    replay = Replay()
    row = {"transaction_id": 1, "user": 1, "classification": "REDEEM", "points": 300, "quantity": 1,
           "transaction_dt": "2024-01-01 10:00:00", "transaction_status": "ACTIVE"}
    for event in to_events(row, business_id=BUSINESS).events:
        replay.apply(event)
    assert replay.balance("perkville:1") == -300
