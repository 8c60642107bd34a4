"""The v1 API answers a core ConflictError with 409 and the ``{"message", "code"}`` body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from perkamo_core import service as service_module
from perkamo_core.api import create_app
from tests.perkamo_core.api.support import SPACE, body_bytes, make_core
from tests.perkamo_core.test_service_conflict import always_locked

EVENT = {"user_id": "a", "event": "purchase.completed", "transaction_id": "t1"}


@pytest.fixture(params=[{}, {"fast_lane": False, "group_commit": False}], ids=["default", "router-direct"])
def api(request: pytest.FixtureRequest, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[tuple[TestClient, str]]:
    monkeypatch.setattr(service_module, "MAX_WRITE_ATTEMPTS", 2)
    service, keys = make_core(db_engine)
    always_locked(service)
    with TestClient(create_app(service, **request.param), raise_server_exceptions=False) as client:
        yield client, keys.full


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        pytest.param("/v1/events", EVENT, id="event"),
        pytest.param("/v1/events:batch", {"events": [EVENT]}, id="batch"),
        pytest.param("/v1/identify", {"user_id": "a", "traits": {"plan": "x"}}, id="identify"),
        pytest.param("/v1/rewards/redeem",
                     {"user_id": "a", "reward_key": "free_shipping", "transaction_id": "r1"},
                     id="redeem"),
    ],
)
def test_conflict_is_409_with_message_and_code(
    api: tuple[TestClient, str], path: str, payload: dict[str, Any]
) -> None:
    client, key = api
    response = client.post(path, content=body_bytes({"tenant": SPACE, **payload}),
                           headers={"content-type": "application/json", "x-perkamo-api-key": key})
    assert response.status_code == 409, response.text
    body = response.json()
    assert set(body) == {"message", "code"}
    assert body["code"] == "conflict"
    assert "retry" in body["message"]
