"""Shared fixtures for the Perkville connector tests: strict respx routers and a recording clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from connectors.perkville import PerkvilleClient

API = "https://api.perkville.test/v2/"
TOKEN_URL = "https://www.perkville.test/api/token/"
CLIENT_ID = "client-abc"
CLIENT_SECRET = "s3cret-client-VALUE-9f8e7d"
USERNAME = "staff@example.com"
PASSWORD = "pa55word-VALUE-1234"
SECRETS = (CLIENT_SECRET, PASSWORD)


class FakeTime:
    """An injectable clock whose ``sleep`` records the requested sleeps and advances time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


def token_route(
    router: respx.MockRouter, token: str = "tok-1", scope: str | None = "PUBLIC ADMIN_CUSTOMER_INFO"
) -> respx.Route:
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
    if scope is not None:
        body["scope"] = scope
    return router.post(TOKEN_URL).mock(return_value=httpx.Response(200, json=body))


def make_client(router: respx.MockRouter, fake: FakeTime, **overrides: Any) -> PerkvilleClient:
    kwargs: dict[str, Any] = {
        "api_url": API,
        "token_url": TOKEN_URL,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "username": USERNAME,
        "password": PASSWORD,
        "requests_per_second": None,
        "transport": httpx.MockTransport(router.handler),
        "sleep": fake.sleep,
        "clock": fake.clock,
    }
    kwargs.update(overrides)
    return PerkvilleClient(**kwargs)


def page(objects: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {"meta": meta, "objects": objects}
