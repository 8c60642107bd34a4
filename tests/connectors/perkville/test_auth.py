"""Authentication: the password grant, a given token, scopes, re-auth on 401, and secret hygiene."""

from __future__ import annotations

import base64
import logging
import ssl
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from authlib.integrations.httpx_client import OAuth2Client

from connectors.perkville import AuthError, ConfigurationError, PerkvilleClient
from connectors.perkville import auth as auth_module

from .conftest import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    SECRETS,
    TOKEN_URL,
    USERNAME,
    FakeTime,
    make_client,
    page,
    token_route,
)

URL = API + "connections/"
INVALID_TOKEN = {
    "error_type": "oauth_error",
    "errors": {"__all__": [{"code": "invalid_token", "message": "bad"}]},
}


def token_only_client(router: respx.MockRouter, fake_time: FakeTime, token: str) -> PerkvilleClient:
    """A client holding only a given access token (no password grant configured)."""
    return make_client(
        router, fake_time, client_id=None, client_secret=None, username=None, password=None, access_token=token
    )


def test_password_grant_request_follows_the_reference(router: respx.MockRouter, fake_time: FakeTime) -> None:
    route = token_route(router, scope="PUBLIC ADMIN_CUSTOMER_INFO")
    client = make_client(router, fake_time)
    assert client.authenticate() == frozenset({"PUBLIC", "ADMIN_CUSTOMER_INFO"})
    request = route.calls.last.request
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    form = parse_qs(request.content.decode())
    assert form["grant_type"] == ["password"]
    assert form["username"] == [USERNAME]
    assert form["password"] == [PASSWORD]
    assert "scope" not in form  # optional and not configured
    assert "client_secret" not in form  # Basic auth only


def test_scope_is_sent_when_configured_and_assumed_granted_when_not_echoed(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    route = token_route(router, scope=None)
    client = make_client(router, fake_time, scope="PUBLIC ADMIN_CUSTOMER_GRANT_POINTS")
    assert client.authenticate() == frozenset({"PUBLIC", "ADMIN_CUSTOMER_GRANT_POINTS"})
    assert parse_qs(route.calls.last.request.content.decode())["scope"] == [
        "PUBLIC ADMIN_CUSTOMER_GRANT_POINTS"
    ]


def test_check_scopes_warns_about_missing_ones(
    router: respx.MockRouter, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    token_route(router, scope="PUBLIC ADMIN_CUSTOMER_INFO")
    client = make_client(router, fake_time)
    client.authenticate()
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"):
        missing = client.check_scopes({"ADMIN_CUSTOMER_INFO", "ADMIN_CUSTOMER_GRANT_POINTS"})
    assert missing == {"ADMIN_CUSTOMER_GRANT_POINTS"}
    assert "ADMIN_CUSTOMER_GRANT_POINTS" in caplog.text
    caplog.clear()
    assert client.check_scopes({"PUBLIC"}) == frozenset()
    assert caplog.text == ""


def test_given_access_token_skips_the_grant(router: respx.MockRouter, fake_time: FakeTime) -> None:
    route = router.get(URL).mock(
        return_value=httpx.Response(200, json=page([{"connection_id": 1}], next=None))
    )
    client = token_only_client(router, fake_time, "given-token-xyz")
    assert [p.objects for p in client.iter_connections(business=25)] == [[{"connection_id": 1}]]
    assert route.calls.last.request.headers["Authorization"] == "Bearer given-token-xyz"
    assert client.granted_scopes is None
    assert client.check_scopes({"ADMIN_CUSTOMER_INFO"}) == frozenset()


def test_secretstr_like_values_are_accepted(router: respx.MockRouter, fake_time: FakeTime) -> None:
    from pydantic import SecretStr

    route = token_route(router)
    client = make_client(
        router, fake_time, client_secret=SecretStr(CLIENT_SECRET), password=SecretStr(PASSWORD)
    )
    client.authenticate()
    assert parse_qs(route.calls.last.request.content.decode())["password"] == [PASSWORD]


def test_missing_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="credentials missing"):
        PerkvilleClient(API, TOKEN_URL, client_id="x", client_secret=None, username=None, password=None)


def test_reauthenticates_once_on_401_mid_run(router: respx.MockRouter, fake_time: FakeTime) -> None:
    tokens = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json={"access_token": "tok-1", "token_type": "Bearer", "scope": "PUBLIC"}),
            httpx.Response(200, json={"access_token": "tok-2", "token_type": "Bearer", "scope": "PUBLIC"}),
        ]
    )
    api = router.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=page([{"connection_id": 1}], limit=1, offset=0)),
            httpx.Response(401, json=INVALID_TOKEN),
            httpx.Response(200, json=page([{"connection_id": 2}], limit=1, offset=1)),
            httpx.Response(200, json=page([], limit=1, offset=2)),
        ]
    )
    client = make_client(router, fake_time, page_size=1)
    ids = [row["connection_id"] for p in client.iter_connections() for row in p.objects]
    assert ids == [1, 2]
    assert tokens.call_count == 2
    assert [c.request.headers["Authorization"] for c in api.calls] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
        "Bearer tok-2",
    ]
    assert client.stats["reauths"] == 1


def test_401_after_reauth_raises_auth_error(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(return_value=httpx.Response(401, json=INVALID_TOKEN))
    client = make_client(router, fake_time)
    with pytest.raises(AuthError, match="even after re-authenticating"):
        list(client.iter_connections())


@pytest.mark.parametrize(
    ("response", "advice"),
    [
        (httpx.Response(401, json={"error": "invalid_client"}), "client id and client secret"),
        (
            httpx.Response(400, json={"error": "invalid_grant", "error_description": f"bad {PASSWORD}"}),
            "username and password",
        ),
        (httpx.Response(400, json={"error": "invalid_scope"}), "scope"),
        (httpx.Response(404, text="<html>nope</html>"), "PERKVILLE_TOKEN_URL"),
    ],
    ids=["bad-client", "bad-password", "bad-scope", "wrong-token-url"],
)
def test_failed_grant_says_what_to_check_without_secrets(
    router: respx.MockRouter,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
    response: httpx.Response,
    advice: str,
) -> None:
    router.post(TOKEN_URL).mock(return_value=response)
    client = make_client(router, fake_time)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as info:
        client.authenticate()
    assert advice in str(info.value)
    for secret in SECRETS:
        assert secret not in str(info.value)
        assert secret not in repr(info.value)
        assert secret not in caplog.text


def test_reauth_that_fails_raises_auth_error(router: respx.MockRouter, fake_time: FakeTime) -> None:
    router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json={"access_token": "tok-1", "token_type": "Bearer"}),
            httpx.Response(400, json={"error": "invalid_grant"}),
        ]
    )
    router.get(URL).mock(return_value=httpx.Response(401, json=INVALID_TOKEN))
    client = make_client(router, fake_time)
    with pytest.raises(AuthError, match="username and password"):
        list(client.iter_connections())


def test_rejected_given_token_without_grant_says_what_to_check(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    router.get(URL).mock(return_value=httpx.Response(401, json=INVALID_TOKEN))
    client = token_only_client(router, fake_time, "given-token-xyz")
    with pytest.raises(AuthError, match="PERKVILLE_ACCESS_TOKEN") as info:
        list(client.iter_connections())
    assert "given-token-xyz" not in str(info.value)


def test_token_endpoint_outage_is_retried(router: respx.MockRouter, fake_time: FakeTime) -> None:
    router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(503),
            httpx.ConnectError("boom"),
            httpx.Response(200, json={"access_token": "tok-1", "token_type": "Bearer"}),
        ]
    )
    client = make_client(router, fake_time, backoff_base=1.0)
    client.authenticate()
    assert len(fake_time.sleeps) == 2


def test_repr_never_shows_secrets(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router, token="tok-secret-abcdef")
    client = make_client(router, fake_time)
    client.authenticate()
    for secret in (*SECRETS, "tok-secret-abcdef"):
        assert secret not in repr(client) and secret not in repr(client._auth)
    assert "token=set" in repr(client._auth)


def tls_context(transport: httpx.BaseTransport) -> ssl.SSLContext:
    """The TLS context of a real httpx transport (httpcore's pool holds it)."""
    assert isinstance(transport, httpx.HTTPTransport)
    context = transport._pool._ssl_context
    assert context is not None
    return context


def test_the_api_client_and_the_token_client_share_one_strict_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # No transport given: both clients build real httpx transports. The token client is made at
    # each grant; this one records the TLS context its transport got instead of calling out.
    seen: list[ssl.SSLContext] = []

    class RecordingOAuth2Client(OAuth2Client):  # type: ignore[misc]
        def fetch_token(self, url: str | None = None, **kwargs: Any) -> dict[str, Any]:
            seen.append(tls_context(self._transport))
            return {"access_token": "tok-1", "token_type": "Bearer"}

    monkeypatch.setattr(auth_module, "OAuth2Client", RecordingOAuth2Client)
    with PerkvilleClient(
        API, TOKEN_URL, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, username=USERNAME, password=PASSWORD
    ) as client:
        client.authenticate()
        client._auth.invalidate()
        client.authenticate()  # a re-grant after a 401 uses it too
        context = tls_context(client._http._transport)
    assert len(seen) == 2
    assert all(each is context for each in seen)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
