"""CoreService: writes that keep colliding end in ConflictError (409), never a driver error."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from perkamo_core import service as service_module
from perkamo_core import storage as st
from perkamo_core.errors import ConflictError
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SPACE, count, make_service, purchase


def always_locked(service: CoreService) -> list[int]:
    """Make every write transaction of ``service`` fail as a lock timeout; returns the attempt log."""
    attempts: list[int] = []
    original = service._write

    def locked(fn: Callable[[Connection], Any], conn: Connection | None = None) -> Any:
        def collide(c: Connection) -> Any:
            attempts.append(1)
            raise OperationalError("INSERT …", {}, sqlite3.OperationalError("database is locked"))
        return original(collide, conn)

    service._write = locked  # type: ignore[method-assign]
    return attempts


CALLS = [
    pytest.param(lambda s: s.ingest(SPACE, purchase("a", "t1")), id="ingest"),
    pytest.param(lambda s: s.ingest_bulk(SPACE, [purchase("a", "t1")]), id="ingest-bulk"),
    pytest.param(lambda s: s.identify(SPACE, "a", {"plan": "x"}), id="identify"),
    pytest.param(lambda s: s.redeem(SPACE, "a", "free_shipping", "r1"), id="redeem"),
]


@pytest.mark.parametrize("call", CALLS)
def test_a_write_that_keeps_colliding_is_a_conflict_after_bounded_retries(
    db_engine: Engine, monkeypatch: pytest.MonkeyPatch, call: Callable[[CoreService], Any]
) -> None:
    monkeypatch.setattr(service_module, "MAX_WRITE_ATTEMPTS", 3)
    service = make_service(db_engine)
    attempts = always_locked(service)
    with pytest.raises(ConflictError) as raised:
        call(service)
    assert raised.value.status == 409
    assert raised.value.to_dict() == {"message": raised.value.message, "code": "conflict"}
    assert len(attempts) == 3
    assert count(db_engine, st.events) == 0


def test_in_the_callers_transaction_a_collision_is_a_conflict_at_once(db_engine: Engine) -> None:
    service = make_service(db_engine)
    attempts = always_locked(service)
    with db_engine.begin() as conn, pytest.raises(ConflictError):
        service.ingest_bulk(SPACE, [purchase("a", "t1")], conn=conn)
    assert len(attempts) == 1
