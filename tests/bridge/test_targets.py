"""Unit tests of the remote target's outcome handling (a fake client; HTTP is covered end to end)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine

from bridge.errors import TargetError
from bridge.targets import Delivery, RemoteTarget
from connectors.perkamo.errors import PerkamoApiError
from mapping.types import IdentifyCall, PerkamoEvent


def _event(txid: str) -> PerkamoEvent:
    return PerkamoEvent(
        user_id="perkville:1",
        event="perkville.points_earned",
        transaction_id=txid,
        context={"amount": Decimal(3), "source": "perkville"},
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


class FakeClient:
    """Answers like the v1 API: a 400 for a batch containing ``bad``; ``dup`` comes back duplicate."""

    def __init__(self, *, server_error: bool = False) -> None:
        self.batches: list[int] = []
        self.server_error = server_error

    def batch(self, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
        self.batches.append(len(events))
        assert len(events) <= 100
        if self.server_error:
            raise PerkamoApiError(503, {"message": "down"})
        if any(e["transaction_id"] == "bad" for e in events):
            raise PerkamoApiError(400, {"message": "context.amount is invalid", "code": "invalid_request"})
        assert all(isinstance(e["context"]["amount"], int) for e in events)  # Decimals go as numbers
        return {"results": [{"applied": e["transaction_id"] != "dup", "duplicate": e["transaction_id"] == "dup"} for e in events]}

    def identify(self, user_id: str, traits: dict[str, Any]) -> dict[str, Any]:
        if user_id == "refused":
            raise PerkamoApiError(400, {"message": "bad traits", "code": "invalid_request"})
        if user_id == "unauthorised":
            raise PerkamoApiError(401, {"message": "unknown key"})
        return {}

    def customer(self, user_id: str) -> dict[str, Any]:
        if user_id == "missing":
            raise PerkamoApiError(404, {"message": "not found"})
        return {"wallets": {"points": 12}}


@pytest.fixture
def engine() -> Any:
    return create_engine("sqlite://")


def _deliver(target: RemoteTarget, calls: list[IdentifyCall], events: list[PerkamoEvent]) -> tuple[list[Delivery], list[Delivery]]:
    got: dict[str, list[Delivery]] = {}

    def commit(_conn: Connection, ids: Sequence[Delivery], evs: Sequence[Delivery]) -> None:
        got["ids"], got["evs"] = list(ids), list(evs)

    target.deliver(calls, events, commit)
    return got["ids"], got["evs"]


def test_batches_hold_at_most_the_batch_size_and_a_refused_batch_is_split(engine: Any) -> None:
    client = FakeClient()
    target = RemoteTarget(client, engine, batch_size=100)
    events = [_event(f"t{i}") for i in range(150)] + [_event("dup"), _event("bad")]
    _, outcomes = _deliver(target, [], events)
    assert [o.status for o in outcomes[:150]] == ["applied"] * 150
    assert outcomes[150].status == "duplicate"
    assert outcomes[151] == Delivery("rejected", "invalid_request", "HTTP 400: context.amount is invalid")
    assert client.batches[:2] == [100, 52]  # then the refused batch item by item


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [("perkville:1", "applied"), ("refused", "rejected")],
    ids=["accepted", "4xx-dead-letters-the-member"],
)
def test_identify_outcomes(engine: Any, user_id: str, expected: str) -> None:
    ids, _ = _deliver(RemoteTarget(FakeClient(), engine), [IdentifyCall(user_id=user_id, traits={}, perkville_user_id="1")], [])
    assert ids[0].status == expected


@pytest.mark.parametrize(
    ("client", "calls", "events"),
    [
        (FakeClient(server_error=True), [], [_event("t1")]),
        (FakeClient(), [IdentifyCall(user_id="unauthorised", traits={}, perkville_user_id="1")], []),
    ],
    ids=["5xx-after-retries", "401"],
)
def test_target_failures_stop_the_page_before_commit(engine: Any, client: FakeClient, calls: list[IdentifyCall], events: list[PerkamoEvent]) -> None:
    committed = []
    with pytest.raises(TargetError):
        RemoteTarget(client, engine).deliver(calls, events, lambda *a: committed.append(a))
    assert committed == []


def test_remote_balances_read_customers(engine: Any) -> None:
    balances = RemoteTarget(FakeClient(), engine).balances(["perkville:1", "missing"])
    assert balances == {"perkville:1": Decimal(12), "missing": Decimal(0)}
