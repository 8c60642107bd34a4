"""A transaction_id the core holds for another payload is a dead letter with a clear reason at
either target (never a crash, never counted as a duplicate); a write-back coming home is a
duplicate at either target."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine

from bridge.targets import CONFLICT_CODE, Delivery, EmbeddedTarget, RemoteTarget
from connectors.perkamo import PerkamoClient
from mapping.types import PerkamoEvent
from perkamo_core.api import create_app
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.api.server import live_server

SPACE = "bridge-space"
PROGRAM = {"events": {"rules": [
    {"event": "perkville.points_earned", "wallet": "points", "formula": "{{amount}}"},
    {"event": "visit.checked_in", "wallet": "points", "amount": 7},
]}}


def _event(user: str, txid: str, amount: int = 3) -> PerkamoEvent:
    return PerkamoEvent(
        user_id=user, event="perkville.points_earned", transaction_id=txid,
        context={"amount": amount, "source": "perkville"}, occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def _deliver(target: Any, events: list[PerkamoEvent]) -> list[Delivery]:
    got: list[Delivery] = []

    def commit(_conn: Connection, _ids: Sequence[Delivery], evs: Sequence[Delivery]) -> None:
        got.extend(evs)

    target.deliver([], events, commit)
    return got


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    core = CoreService(db_engine)
    core.migrate()
    core.ensure_space(SPACE)
    core.load_program(SPACE, PROGRAM)
    # What the core already holds: a Perkville-born event, and an app event written back.
    core.ingest(SPACE, EventInput(user_id="perkville:1", event="perkville.points_earned",
                                  transaction_id="perkville:25:txn:1", context={"amount": 3, "source": "perkville"}))
    core.ingest(SPACE, EventInput(user_id="perkville:1", event="visit.checked_in", transaction_id="pos:checkin:1"))
    return core


def _check(outcomes: list[Delivery]) -> None:
    replay, conflict, fresh, homecoming = outcomes
    assert replay.status == "duplicate"
    assert conflict.status == "rejected" and conflict.reason == CONFLICT_CODE
    assert conflict.detail is not None and "already used for a different payload" in conflict.detail
    assert fresh.status == "applied"
    assert homecoming.status == "duplicate"  # perkamo:pos:checkin:1 read back from Perkville


PAGE = [
    _event("perkville:1", "perkville:25:txn:1"),
    _event("perkville:2", "perkville:25:txn:1"),  # another member under the same id
    _event("perkville:2", "perkville:25:txn:2"),
    _event("perkville:1", "pos:checkin:1", 7),
]


def test_the_embedded_target_dead_letters_a_conflict(service: CoreService, db_engine: Engine) -> None:
    _check(_deliver(EmbeddedTarget(service, db_engine, SPACE), PAGE))
    assert service.wallet_balances(SPACE) == {"perkville:1": 10, "perkville:2": 3}


@pytest.fixture
def remote(service: CoreService) -> Iterator[PerkamoClient]:
    key = service.create_api_key(SPACE).key
    with live_server(create_app(service)) as base_url:
        client = PerkamoClient(key, base_url=base_url, timeout=30.0)
        try:
            yield client
        finally:
            client.close()


def test_the_remote_target_dead_letters_a_409(remote: PerkamoClient, service: CoreService, db_engine: Engine) -> None:
    _check(_deliver(RemoteTarget(remote, db_engine), PAGE))
    assert service.wallet_balances(SPACE) == {"perkville:1": 10, "perkville:2": 3}
