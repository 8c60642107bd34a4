"""Errors raised by the Perkville connector, classified by what the caller should do.

::

    PerkvilleError                     base; messages never contain secrets or query strings
    ├── ConfigurationError             bad constructor arguments (fix the settings)
    ├── AuthError                      credentials rejected; fix client id/secret, username/password,
    │                                  token URL or access token, then rerun
    ├── RetriableError                 transient; the run may be retried later as it is
    │   └── RetryBudgetExhausted       the bounded retry budget ran out (carries the sanitized path)
    │       └── InvalidPageError       a page stayed truncated / not JSON after every retry
    ├── PaginationError                the server's paging went wrong (repeated or foreign next link)
    └── PerkvilleHTTPError             a non-retriable HTTP answer (status, sanitized path, error code)
        ├── NotFound                   404: the path or object does not exist
        └── RequestRejected            400/409/422: the server refused the request body
"""

from __future__ import annotations

from typing import Any


class PerkvilleError(Exception):
    """Base of every connector error."""


class ConfigurationError(PerkvilleError):
    """The connector was constructed with unusable arguments."""


class AuthError(PerkvilleError):
    """Perkville rejected the credentials or the token, even after one re-authentication."""


class RetriableError(PerkvilleError):
    """A transient failure: network error, 429, 5xx or a broken page."""


class RetryBudgetExhausted(RetriableError):
    """Every retry of one request failed; ``path`` is the request path without its query string."""

    def __init__(self, message: str, *, path: str, attempts: int, last_error: str) -> None:
        super().__init__(message)
        self.path = path
        self.attempts = attempts
        self.last_error = last_error


class InvalidPageError(RetryBudgetExhausted):
    """A response body stayed truncated or invalid JSON after every retry."""


class PaginationError(PerkvilleError):
    """The server's paging cannot be followed safely (repeated next link, link to another host)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class PerkvilleHTTPError(PerkvilleError):
    """A non-retriable HTTP status; ``body`` is the decoded JSON error body when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        path: str,
        body: Any = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.path = path
        self.body = body
        self.error_code = error_code


class NotFound(PerkvilleHTTPError):
    """HTTP 404."""


class RequestRejected(PerkvilleHTTPError):
    """HTTP 400/409/422: Perkville refused the request (validation error)."""


DOCUMENTED_REFUSALS: dict[str, tuple[str, str]] = {
    "pv_txn_insufficient_points": (
        "insufficient_points",
        "the customer has too few points for this redemption",
    ),
    "pv_perk_redemption_limit_reached": (
        "redemption_limit_reached",
        "the customer already redeemed this perk as often as its redemption limit allows",
    ),
}
"""The refusal codes Perkville documents (docs N4), as ``code: (short name, plain words)``. Every
other ``pv_*`` code the sandbox answers is its own invention; no logic may key on those."""


def documented_refusal(body: Any) -> str | None:
    """The first code of an error body that is a documented refusal (``DOCUMENTED_REFUSALS``).

    Reads ``errors.<field>[].code`` (any field) and a top-level ``error`` or ``code``.
    """
    if not isinstance(body, dict):
        return None
    candidates: list[Any] = [body.get("error"), body.get("code")]
    errors = body.get("errors")
    if isinstance(errors, dict):
        for items in errors.values():
            for item in items if isinstance(items, list) else [items]:
                candidates.append(item.get("code") if isinstance(item, dict) else item)
    return next((c for c in candidates if isinstance(c, str) and c in DOCUMENTED_REFUSALS), None)
