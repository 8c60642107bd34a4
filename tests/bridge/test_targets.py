"""Unit tests of the remote target's outcome handling (a fake client; HTTP is covered end to end)."""

from __future__ import annotations

import threading
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


# ----------------------------------------------------------------- batches in flight (lanes)
class LaneClient:
    """Records each batch it is sent; ``together`` batches must be in flight at once to pass."""

    def __init__(self, together: int = 1) -> None:
        self.sent: list[list[str]] = []
        self.lock = threading.Lock()
        self.calls = 0
        self.barrier = threading.Barrier(together) if together > 1 else None

    def batch(self, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
            first = self.barrier is not None and self.calls <= self.barrier.parties
        if first and self.barrier is not None:
            self.barrier.wait(timeout=60)  # the first calls meet here only if sent at once
        with self.lock:
            self.sent.append([e["transaction_id"] for e in events])
        return {"results": [{"applied": e["transaction_id"] != "dup", "duplicate": e["transaction_id"] == "dup"} for e in events]}

    def identify(self, user_id: str, traits: dict[str, Any]) -> dict[str, Any]:
        return {}


def _member_event(member: int, n: int) -> PerkamoEvent:
    return _event(f"m{member}-{n}").model_copy(update={"user_id": f"perkville:{member}"})


def test_batches_go_in_lanes_at_once_with_each_members_events_in_order(engine: Any) -> None:
    events = [_member_event(member, n) for n in range(30) for member in range(12)]
    client = LaneClient(together=2)
    _, outcomes = _deliver(RemoteTarget(client, engine, batch_size=10, max_in_flight=4), [], events)
    assert [o.status for o in outcomes] == ["applied"] * len(events)  # in the events' order
    assert len(client.sent) >= 4 and all(len(batch) <= 10 for batch in client.sent)
    for member in range(12):
        sent = [tx for batch in client.sent for tx in batch if tx.startswith(f"m{member}-")]
        assert sent == [f"m{member}-{n}" for n in range(30)]  # one member's events stay in order


def test_outcomes_come_back_in_the_events_order_across_lanes(engine: Any) -> None:
    events = [_member_event(member, 0) for member in range(8)]
    events[5] = events[5].model_copy(update={"transaction_id": "dup"})
    _, outcomes = _deliver(RemoteTarget(LaneClient(), engine, max_in_flight=3), [], events)
    assert [o.status for o in outcomes] == ["applied"] * 5 + ["duplicate"] + ["applied"] * 2


def test_a_failing_lane_fails_the_page_and_nothing_commits(engine: Any) -> None:
    events = [_member_event(member, 0) for member in range(8)]
    committed: list[Any] = []
    with pytest.raises(TargetError):
        RemoteTarget(FakeClient(server_error=True), engine, max_in_flight=4).deliver(
            [], events, lambda *a: committed.append(a)
        )
    assert committed == []
