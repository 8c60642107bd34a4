"""Transaction ids are unique per Space across events and redemptions (no double deduction).

A redemption's id coming back as an event is a duplicate when the caller names it an echo
(``echo_ids``: the written-back redemption returning from Perkville); anywhere else it is the id
reused for another action, a 409 ``transaction_id_conflict``.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from perkamo_core import storage as st
from perkamo_core.errors import TransactionIdConflictError
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SEED_PROGRAM, SPACE, count, make_service, purchase

PROGRAM: dict[str, Any] = copy.deepcopy(SEED_PROGRAM)
PROGRAM["events"]["rules"].append(
    {"event": "perkville.points_redeemed", "label": "Redeemed in Perkville", "wallet": "points",
     "formula": "0 - {{amount}}"}
)


def echo(user: str, txid: str, amount: int = 40) -> EventInput:
    """What the next Perkville sync brings back for a written-back redemption."""
    return EventInput(user_id=user, event="perkville.points_redeemed", transaction_id=txid,
                      context={"amount": amount}, occurred_at="2026-06-01T11:00:00Z")


def rows(engine: Engine) -> dict[str, int]:
    return {t.name: count(engine, t) for t in (st.events, st.ledger, st.outbox, st.redemptions)}


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    svc = make_service(db_engine, program=PROGRAM)
    svc.ingest(SPACE, purchase("a", "t1"))  # 50 points
    return svc


def test_event_with_a_redemptions_id_is_a_duplicate_and_changes_nothing(
    service: CoreService, db_engine: Engine
) -> None:
    redeemed = service.redeem(SPACE, "a", "free_shipping", "r1")
    before = rows(db_engine)

    (outcome,) = service.ingest_bulk(SPACE, [echo("a", "r1")], echo_ids={"r1"})
    result = outcome.result
    assert result is not None

    assert result["applied"] is False and result["duplicate"] is True
    assert result["delta"] == redeemed["delta"]
    assert result["wallet_state"] == {"points": 10}
    assert rows(db_engine) == before
    assert service.wallet_balances(SPACE) == {"a": Decimal(10)}
    assert service.ledger_sums(SPACE, "a") == {"points": Decimal(10)}
    assert service.usage(SPACE)["meters"]["duplicates"] == 1


def test_an_api_event_with_a_redemptions_id_is_a_conflict_and_changes_nothing(
    service: CoreService, db_engine: Engine
) -> None:
    service.redeem(SPACE, "a", "free_shipping", "r1")
    before = rows(db_engine)
    with pytest.raises(TransactionIdConflictError) as info:
        service.ingest(SPACE, echo("a", "r1"))
    assert info.value.status == 409 and "free_shipping" not in info.value.message
    assert rows(db_engine) == before


@pytest.mark.parametrize("echoed", [True, False], ids=["echo", "not-an-echo"])
@pytest.mark.parametrize("user", ["a", "someone-else"], ids=["same-user", "other-user"])
def test_bulk_page_with_a_redemptions_id_applies_only_the_others(
    service: CoreService, db_engine: Engine, user: str, echoed: bool
) -> None:
    service.redeem(SPACE, "a", "free_shipping", "r1")

    page = [purchase("b", "t2"), echo(user, "r1"), echo("a", "e3", 5)]
    outcomes = service.ingest_bulk(SPACE, page, echo_ids={"r1"} if echoed else ())

    assert [(o.result or {}).get("applied") for o in outcomes] == [True, False if echoed else None, True]
    if not echoed:
        assert outcomes[1].error is not None and outcomes[1].error.code == "transaction_id_conflict"
    else:
        assert outcomes[1].result is not None and outcomes[1].result["duplicate"] is True
    assert service.wallet_balances(SPACE) == {"a": Decimal(5), "b": Decimal(50)}
    assert count(db_engine, st.customers) == 2  # the duplicate creates nobody


def test_redeem_with_an_events_id_is_a_conflict_and_changes_nothing(
    service: CoreService, db_engine: Engine
) -> None:
    before = rows(db_engine)

    with pytest.raises(TransactionIdConflictError):
        service.redeem(SPACE, "a", "free_shipping", "t1")

    assert rows(db_engine) == before
    assert service.wallet_balances(SPACE) == {"a": Decimal(50)}
    assert service.usage(SPACE)["meters"]["redemptions"] == 0


def test_ids_stay_per_space(service: CoreService) -> None:
    service.redeem(SPACE, "a", "free_shipping", "r1")
    service.ensure_space("other")
    service.load_program("other", PROGRAM)
    service.ingest("other", purchase("a", "t0"))
    assert service.ingest("other", echo("a", "r1"))["applied"] is True
    assert service.wallet_balances("other") == {"a": Decimal(10)}


def test_concurrent_redeem_and_event_with_one_id_apply_once(db_engine: Engine) -> None:
    from tests.perkamo_core.test_concurrency import run_together

    rounds = 8
    setup = make_service(db_engine, program=PROGRAM)
    setup.ingest_bulk(SPACE, [purchase("a", f"t{i}") for i in range(rounds)])  # 50 each
    setup.ingest(SPACE, purchase("b", "tb"))
    applied: list[bool] = []

    def redeemer() -> None:
        service = CoreService(db_engine)
        for i in range(rounds):
            try:
                applied.append(service.redeem(SPACE, "a", "free_shipping", f"x{i}")["applied"])
            except TransactionIdConflictError:
                applied.append(False)

    def ingester() -> None:
        service = CoreService(db_engine)
        for i in range(rounds):
            # Another customer's event with the same id: no shared row lock, only the id clash.
            try:
                applied.append(service.ingest(SPACE, echo("b", f"x{i}", 1))["applied"])
            except TransactionIdConflictError:
                applied.append(False)

    run_together(redeemer, ingester)

    assert applied.count(True) == rounds  # one of each pair; the other is a conflict
    balances = setup.wallet_balances(SPACE)
    redeemed = count(db_engine, st.redemptions)
    assert balances["a"] == Decimal(50 * rounds - 40 * redeemed)
    assert balances["b"] == Decimal(50 - (rounds - redeemed))
    assert count(db_engine, st.events) == rounds + 1 + (rounds - redeemed)
