"""Fixtures for dashboard tests: the app over the bridge's database, and a signed-in client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bridge.cli.serve_cmd import build_app
from config.settings import Settings, load_settings
from tests.bridge.conftest import SPACE, Bridge, sandbox_settings

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def dashboard_settings(bridge: Bridge, **environ: str) -> Settings:
    """The settings ``serve`` would read for ``bridge`` (its sandbox, database and Space)."""
    url = bridge.engine.url.render_as_string(hide_password=False)
    values = {**sandbox_settings(bridge.box, url), "PERKAMO_SPACE": SPACE, **environ}
    return load_settings(None, environ=values)


def dashboard_app(bridge: Bridge, **environ: str) -> Any:
    settings = dashboard_settings(bridge, **environ)
    return build_app(settings.database_url, rate_limit=None, require_signatures=False, dashboard=settings)


@dataclass
class SignedIn:
    """A TestClient signed in to the dashboard with ``key`` (scopes ``admin:config``)."""

    client: TestClient
    key: str
    bridge: Bridge

    def csrf(self, page: str = "/dashboard") -> str:
        """The CSRF token the forms of ``page`` carry."""
        found = _CSRF.search(self.client.get(page).text)
        assert found, f"no csrf_token on {page}"
        return found.group(1)

    def post(self, path: str, data: dict[str, Any], *, csrf: bool = True) -> Any:
        """A form POST, with this session's CSRF token unless ``csrf`` is false."""
        form = {**data, **({"csrf_token": self.csrf()} if csrf else {})}
        return self.client.post(path, data=form, follow_redirects=False)


def sign_in(client: TestClient, key: str) -> Any:
    return client.post("/dashboard/login", data={"key": key, "next": "/dashboard"}, follow_redirects=False)


@pytest.fixture
def dashboard_client(bridge: Bridge) -> Iterator[TestClient]:
    """The app (v1 API + dashboard) over ``bridge``'s database; nobody signed in."""
    bridge.service.ensure_space(SPACE)
    with TestClient(dashboard_app(bridge)) as client:
        yield client


@pytest.fixture
def signed_in(bridge: Bridge, dashboard_client: TestClient) -> SignedIn:
    """``dashboard_client`` signed in with a fresh ``admin:config`` key of the bridge's Space."""
    key = bridge.service.create_api_key(SPACE, ["admin:config"]).key
    answer = sign_in(dashboard_client, key)
    assert answer.status_code == 303, answer.text
    return SignedIn(dashboard_client, key, bridge)
