"""Perkville OAuth2 tokens: the resource-owner password grant through authlib, or a given token."""

from __future__ import annotations

import logging
import ssl
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import authlib.deprecate
import httpx

with warnings.catch_warnings():
    # authlib >= 1.7 warns at import that it would prefer the httpx2 fork; this project uses httpx.
    # (authlib.deprecate installs an "always" filter when imported, so it is imported first.)
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client

from connectors.perkville.errors import AuthError, ConfigurationError, RetriableError

log = logging.getLogger("connectors.perkville")

# What to check for each standard OAuth2 error code (RFC 6749 §5.2).
_ADVICE = {
    "invalid_client": "check the client id and client secret (PERKVILLE_CLIENT_ID / PERKVILLE_CLIENT_SECRET)",
    "unauthorized_client": "this API client may not use the password grant; ask api@perkville.com to enable it",
    "invalid_grant": "check the staff username and password (PERKVILLE_USERNAME / PERKVILLE_PASSWORD)",
    "invalid_scope": "check the requested scope (perkville.scope); new clients may only get PUBLIC",
    "unsupported_grant_type": "the token URL does not accept the password grant; check PERKVILLE_TOKEN_URL",
    "invalid_request": "the token request was malformed; check PERKVILLE_TOKEN_URL and the credentials",
}


def reveal(value: object) -> str | None:
    """The plain text of a ``str`` or pydantic ``SecretStr`` (None stays None)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return str(text) if text is not None else None


class Redactor:
    """Replaces known secret values in any text before it reaches a log line or an exception."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        # Very short values would redact ordinary words; real secrets are long.
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret(s))"


class TokenSource:
    """Holds the bearer token; obtains it with the password grant and re-obtains it after a 401.

    The token, the client secret and the password live only here and never appear in ``repr``.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str | None,
        client_secret: object,
        username: str | None,
        password: object,
        access_token: object = None,
        scope: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        headers: dict[str, str] | None = None,
        redact: Redactor,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = reveal(client_secret)
        self.username = username
        self._password = reveal(password)
        self._token = reveal(access_token)
        self.scope = scope.strip() if scope and scope.strip() else None
        self._timeout = timeout
        self._transport = transport
        self._verify = verify  # the API client's TLS context, so the CA bundle is loaded once
        self._headers = dict(headers or {})
        self._redact = redact
        for secret in (self._client_secret, self._password, self._token):
            redact.add(secret)
        self.granted_scopes: frozenset[str] | None = None
        self.given_token = self._token is not None

    def __repr__(self) -> str:
        state = "set" if self._token else "unset"
        return f"TokenSource(token_url={self.token_url!r}, client_id={self.client_id!r}, token={state})"

    @property
    def can_grant(self) -> bool:
        """Whether the password grant is configured (so a rejected token can be replaced)."""
        return bool(self.client_id and self._client_secret and self.username and self._password)

    @property
    def token(self) -> str | None:
        return self._token

    def authorization(self) -> str:
        """The ``Authorization`` header value; obtains a token first when none is held."""
        if self._token is None:
            self.obtain()
        assert self._token is not None
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        self._token = None

    def obtain(self) -> None:
        """Run the password grant once. ``AuthError`` when refused, ``RetriableError`` when transient."""
        if not self.can_grant:
            if self.given_token:
                raise AuthError(
                    "Perkville rejected the access token (HTTP 401) and no password grant is configured; "
                    "check PERKVILLE_ACCESS_TOKEN, or set PERKVILLE_CLIENT_ID, PERKVILLE_CLIENT_SECRET, "
                    "PERKVILLE_USERNAME and PERKVILLE_PASSWORD"
                )
            raise AuthError(
                "no Perkville credentials: set PERKVILLE_ACCESS_TOKEN, or PERKVILLE_CLIENT_ID, "
                "PERKVILLE_CLIENT_SECRET, PERKVILLE_USERNAME and PERKVILLE_PASSWORD"
            )
        oauth = OAuth2Client(
            client_id=self.client_id,
            client_secret=self._client_secret,
            token_endpoint_auth_method="client_secret_basic",
            scope=self.scope,
            transport=self._transport,
            verify=self._verify,
            timeout=self._timeout,
            headers=self._headers,
        )
        try:
            token = oauth.fetch_token(
                self.token_url,
                grant_type="password",
                username=self.username,
                password=self._password,
            )
        except OAuthError as exc:
            code = str(exc.error or "unknown_error")
            advice = _ADVICE.get(
                code, "check the client id/secret, username/password and PERKVILLE_TOKEN_URL"
            )
            raise AuthError(
                self._redact(f"Perkville refused the password grant ({code}): {advice}")
            ) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status >= 500 or status == 429:
                raise RetriableError(f"the Perkville token endpoint answered HTTP {status}") from None
            raise AuthError(
                f"the Perkville token endpoint answered HTTP {status} without an OAuth2 error body; "
                "check PERKVILLE_TOKEN_URL and the client id/secret"
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigurationError(
                f"PERKVILLE_TOKEN_URL cannot be requested ({type(exc).__name__}); "
                "give an http(s) URL such as https://www.perkville.com/api/token/"
            ) from None
        except httpx.TransportError as exc:
            raise RetriableError(
                f"could not reach the Perkville token endpoint ({type(exc).__name__})"
            ) from None
        except ValueError:
            raise AuthError(
                "the Perkville token endpoint did not return JSON; check PERKVILLE_TOKEN_URL"
            ) from None
        finally:
            oauth.close()
        access = token.get("access_token") if isinstance(token, dict) else None
        if not isinstance(access, str) or not access:
            raise AuthError("the Perkville token response had no access_token; check PERKVILLE_TOKEN_URL")
        self._redact.add(access)
        self._token = access
        self.granted_scopes = _scopes(token, self.scope)
        log.info(
            "perkville: obtained a token by password grant for client %s (scopes: %s)",
            self.client_id,
            " ".join(sorted(self.granted_scopes)) if self.granted_scopes is not None else "not reported",
        )


def _scopes(token: dict[str, Any], requested: str | None) -> frozenset[str] | None:
    raw = token.get("scope")
    if isinstance(raw, list):
        return frozenset(str(item) for item in raw)
    if isinstance(raw, str):
        return frozenset(raw.replace(",", " ").split())
    # RFC 6749 §5.1: an omitted scope means the requested one was granted.
    return frozenset(requested.split()) if requested else None


def with_retries(
    action: Callable[[], None],
    *,
    attempts: int,
    delay: Callable[[int], float],
    sleep: Callable[[float], None],
) -> None:
    """Run ``action``, retrying ``RetriableError`` up to ``attempts`` more times."""
    for attempt in range(attempts + 1):
        try:
            action()
            return
        except RetriableError:
            if attempt >= attempts:
                raise
            sleep(delay(attempt))
