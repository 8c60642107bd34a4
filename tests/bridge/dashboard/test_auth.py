"""Signing in to the dashboard, sessions, CSRF, and what a request without a session gets."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from bridge.cli.serve_cmd import build_app, is_loopback
from bridge.dashboard.auth import safe_next
from bridge.dashboard.sessions import COOKIE_NAME, SessionSigner
from tests.bridge.conftest import SPACE, Bridge
from tests.bridge.dashboard.conftest import SignedIn, dashboard_settings, sign_in

pytestmark = pytest.mark.db


def test_without_a_session_a_page_redirects_to_sign_in_and_shows_nothing(
    bridge: Bridge, dashboard_client: TestClient
) -> None:
    bridge.backfill()
    answer = dashboard_client.get("/dashboard", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/login?next=%2Fdashboard"
    assert answer.text == ""
    refused = dashboard_client.post("/dashboard/logout", data={"csrf_token": "x"})
    assert refused.status_code == 401 and refused.text == ""
    page = dashboard_client.get("/dashboard/login")
    assert page.status_code == 200 and "Sign in" in page.text and bridge.business not in page.text


def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_shows_the_overview(
    bridge: Bridge, dashboard_client: TestClient
) -> None:
    key = bridge.service.create_api_key(SPACE, ["dashboard"]).key
    answer = sign_in(dashboard_client, key)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for flag in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age=28800"):
        assert flag.lower() in cookie.lower(), flag
    assert key not in cookie
    overview = dashboard_client.get("/dashboard")
    assert overview.status_code == 200
    assert "Overview" in overview.text and key not in overview.text
    assert overview.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("scopes", "message"),
    [(["events:write", "profile:read"], "neither the admin:config nor the dashboard scope")],
)
def test_a_key_without_a_dashboard_scope_cannot_sign_in(
    bridge: Bridge, dashboard_client: TestClient, scopes: list[str], message: str
) -> None:
    key = bridge.service.create_api_key(SPACE, scopes).key
    answer = sign_in(dashboard_client, key)
    assert answer.status_code == 401 and message in answer.text
    assert COOKIE_NAME not in answer.headers.get("set-cookie", "")
    assert dashboard_client.get("/dashboard", follow_redirects=False).status_code == 303


def test_unknown_keys_and_keys_of_another_space_are_refused_without_echoing_them(
    bridge: Bridge, dashboard_client: TestClient
) -> None:
    wrong = "sk_test_" + "0" * 48
    answer = sign_in(dashboard_client, wrong)
    assert answer.status_code == 401 and wrong not in answer.text
    assert "not a valid, unrevoked server key" in answer.text
    bridge.service.ensure_space("elsewhere")
    other = bridge.service.create_api_key("elsewhere", ["admin:config"]).key
    answer = sign_in(dashboard_client, other)
    assert answer.status_code == 401 and "belongs to Space elsewhere" in answer.text and other not in answer.text
    assert sign_in(dashboard_client, "").status_code == 401


def test_revoking_the_key_ends_its_sessions(bridge: Bridge, signed_in: SignedIn) -> None:
    assert signed_in.client.get("/dashboard").status_code == 200
    key_id = bridge.service.authenticate(signed_in.key).key_id
    bridge.service.revoke_api_key(key_id)
    assert signed_in.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_tampered_or_expired_cookie_is_no_session(bridge: Bridge, signed_in: SignedIn) -> None:
    client = signed_in.client
    cookie = client.cookies.get(COOKIE_NAME)
    assert cookie
    body, tag = cookie.split(".")
    client.cookies.set(COOKIE_NAME, body + "x." + tag, path="/dashboard")
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    client.cookies.set(COOKIE_NAME, cookie, path="/dashboard")
    assert client.get("/dashboard").status_code == 200
    dashboard = client.app.state.dashboard  # type: ignore[attr-defined]
    started = dashboard.clock()
    dashboard.clock = lambda: started + dashboard.signer.ttl_seconds + 1
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(signed_in: SignedIn) -> None:
    refused = signed_in.post("/dashboard/logout", {}, csrf=False)
    assert refused.status_code == 403 and "nothing was changed" in refused.text
    forged = signed_in.post("/dashboard/logout", {"csrf_token": "forged"}, csrf=False)
    assert forged.status_code == 403
    not_a_form = signed_in.client.post("/dashboard/logout", json={"csrf_token": signed_in.csrf()})
    assert not_a_form.status_code == 403
    assert signed_in.client.get("/dashboard").status_code == 200  # still signed in
    out = signed_in.post("/dashboard/logout", {})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert signed_in.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_overview_shows_each_run_with_its_counts(bridge: Bridge, signed_in: SignedIn) -> None:
    empty = signed_in.client.get("/dashboard").text
    assert "perkbridge backfill" in empty  # the empty state says what to do next
    summary = bridge.backfill()
    page = signed_in.client.get("/dashboard").text
    row = re.search(rf'<tr id="run-{summary.run_id}">(.*?)</tr>', page, re.S)
    assert row, page
    counts = dict(re.findall(r'data-count="(\w+)">([\d,]+)<', row.group(1)))
    c = summary.counts
    assert counts == {
        "read": f"{c.read:,}", "applied": f"{c.applied:,}", "duplicate": f"{c.duplicate:,}",
        "skipped": f"{c.skipped:,}", "dead_lettered": f"{c.dead_lettered:,}",
    }
    assert f"Business {bridge.business}" in page


def test_session_cookies_are_signed_and_expire() -> None:
    signer = SessionSigner.from_setting("s" * 32, ttl_seconds=60)
    session, cookie = signer.issue("key_1", "test", now=1000)
    assert signer.read(cookie, now=1059) == session
    assert signer.read(cookie, now=1060) is None
    assert SessionSigner.from_setting("t" * 32, ttl_seconds=60).read(cookie, now=1000) is None
    assert signer.read("garbage", now=1000) is None and signer.read(None, now=1000) is None
    assert signer.csrf_ok(session, signer.csrf_token(session))
    assert not signer.csrf_ok(session, None) and not signer.csrf_ok(session, "x")
    other, _ = signer.issue("key_1", "test", now=1000)
    assert not signer.csrf_ok(other, signer.csrf_token(session))


def test_sign_in_goes_back_only_to_dashboard_paths() -> None:
    assert safe_next("/dashboard/runs/3?x=1") == "/dashboard/runs/3?x=1"
    for target in ("https://evil.example/", "//evil.example/dashboard", "/v1/customers", None, "/dashboard\\@x"):
        assert safe_next(target) == "/dashboard"


def test_metrics_beyond_loopback_need_a_dashboard_key(bridge: Bridge) -> None:
    bridge.service.ensure_space(SPACE)
    settings = dashboard_settings(bridge)
    app = build_app(settings.database_url, rate_limit=None, require_signatures=False, metrics=True, loopback=False)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        writer = bridge.service.create_api_key(SPACE, ["events:write"]).key
        assert client.get("/metrics", headers={"Authorization": f"Bearer {writer}"}).status_code == 401
        reader = bridge.service.create_api_key(SPACE, ["dashboard"]).key
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert scraped.status_code == 200 and "perkbridge_state_up 1.0" in scraped.text
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
