"""``CoreService.customer_events``: one customer's logged events with their transaction ids and
movements, newest first, bounded, paged by ``before_seq``; an unknown customer is a 404."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine

from perkamo_core.errors import NotFoundError, ValidationError
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SPACE, make_service, purchase


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    svc = make_service(db_engine)
    for n in range(1, 6):
        svc.ingest(SPACE, purchase("a", f"t{n}", occurred_at=f"2026-06-0{n}T10:00:00Z"))
    svc.ingest(SPACE, purchase("b", "other"))
    return svc


def test_newest_first_with_transaction_ids_and_movements(service: CoreService) -> None:
    events = service.customer_events(SPACE, "a", limit=3)
    assert [e.transaction_id for e in events] == ["t5", "t4", "t3"]
    top = events[0]
    assert top.event == "purchase.completed" and top.occurred_at.isoformat() == "2026-06-05T10:00:00+00:00"
    assert top.recorded_at.tzinfo is not None
    wallet_total = service.wallet_balances(SPACE, user_ids=["a"])["a"]
    every = service.customer_events(SPACE, "a")
    assert sum(amount for e in every for wallet, amount in e.deltas if wallet == "points") == wallet_total
    assert all(isinstance(amount, Decimal) for e in every for _, amount in e.deltas)


def test_pages_by_before_seq(service: CoreService) -> None:
    first = service.customer_events(SPACE, "a", limit=2)
    rest = service.customer_events(SPACE, "a", limit=10, before_seq=first[-1].seq)
    assert [e.transaction_id for e in first + rest] == ["t5", "t4", "t3", "t2", "t1"]


def test_an_unknown_customer_and_a_limit_out_of_bounds_are_refused(service: CoreService) -> None:
    with pytest.raises(NotFoundError):
        service.customer_events(SPACE, "nobody")
    for limit in (0, 501):
        with pytest.raises(ValidationError, match="limit"):
            service.customer_events(SPACE, "a", limit=limit)
