"""Errors of the remote Perkamo client, classified by what the caller should do.

::

    PerkamoError                         base; never carries the API key
    ├── PerkamoInputError (ValueError)   rejected before sending (reserved context key, limits):
    │                                    fix the call, do not retry
    ├── PerkamoConnectionError           network failure that outlasted the retries: retry later
    │                                    with the same transaction ids
    └── PerkamoApiError                  non-2xx answer: ``status``, ``body``, ``request_id``,
                                         ``retry_after``, ``rate_limit``; ``retriable`` tells
                                         5xx/429 (retry with the same ids) from 4xx (fix the call)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PerkamoError(Exception):
    """Base of every error raised by ``connectors.perkamo``."""


class PerkamoInputError(PerkamoError, ValueError):
    """The call was rejected locally, before anything was sent; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PerkamoConnectionError(PerkamoError):
    """The API could not be reached (connect, read or protocol error) after every retry."""

    def __init__(self, message: str, *, method: str, path: str, attempts: int) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.attempts = attempts


@dataclass(frozen=True)
class RateLimit:
    """The rate-limit headers of a response (``ratelimit-*`` or ``x-ratelimit-*``)."""

    limit: int | None
    remaining: int | None
    reset: str | None


class PerkamoApiError(PerkamoError):
    """The API answered with a non-2xx status; mirrors the SDKs' ``PerkamoApiError``."""

    def __init__(
        self,
        status: int,
        body: Any,
        request_id: str | None = None,
        retry_after: float | None = None,
        rate_limit: RateLimit | None = None,
        *,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        self.rate_limit = rate_limit
        self.method = method
        self.path = path
        super().__init__(self._describe())

    @property
    def message(self) -> str:
        """The server's ``message`` field, or a generic text when the body has none."""
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return str(self.body["message"])
        return f"HTTP {self.status}"

    @property
    def code(self) -> str | None:
        """The server's machine-readable ``code`` field, when present."""
        if isinstance(self.body, dict) and isinstance(self.body.get("code"), str):
            return str(self.body["code"])
        return None

    @property
    def retriable(self) -> bool:
        """True for 5xx and 429: the same request (same transaction id) may be sent again."""
        return self.status >= 500 or self.status == 429

    def _describe(self) -> str:
        where = f" for {self.method} {self.path}" if self.method else ""
        text = f"Perkamo API answered {self.status}{where}: {self.message}"
        if self.request_id:
            text += f" (request {self.request_id})"
        return text
