"""Typed errors of the embedded Perkamo core; each carries the HTTP status the v1 API answers with.

::

    CoreError (500, code "internal")              base: message, code, field, status
    ├── ValidationError (400)                     a request field is invalid; ``field`` names it
    │   ├── ProgramValidationError (400)          a program module body is invalid; ``path`` names it
    │   └── InsufficientBalanceError (400)        code "insufficient_balance": redeem cost > balance
    ├── AuthenticationError (401)                 missing, unknown or revoked API key
    ├── PermissionDeniedError (403)               key lacks the scope or belongs to another Space
    ├── NotFoundError (404)                       Space, customer, reward or API key does not exist
    ├── ConflictError (409)                       concurrent writers kept colliding after retries
    ├── TransactionIdConflictError (409)          code "transaction_id_conflict": the id is taken
    │                                             by another event or redemption (not a replay)
    └── RateLimitedError (429)                    rate or usage limit exceeded; retry later

Messages say what failed and for which id; they never contain API keys or other secrets.
"""

from __future__ import annotations

from typing import Any


class CoreError(Exception):
    """Base of every error the core raises on purpose."""

    status: int = 500
    default_code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body of the v1 API: ``{"message", "code"}`` plus ``field`` if known."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, field={self.field!r})"


class ValidationError(CoreError):
    """A request value is invalid; ``field`` names it (``context.xp``, ``occurred_at``, …)."""

    status = 400
    default_code = "invalid_request"


class ProgramValidationError(ValidationError):
    """A program module body is invalid; ``path`` names the offending spot (``events.rules[0].formula``)."""

    default_code = "invalid_program"

    def __init__(self, message: str, *, path: str, code: str | None = None) -> None:
        super().__init__(message, code=code, field=path)
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["path"] = self.path
        return body


class InsufficientBalanceError(ValidationError):
    """A redemption costs more than the wallet holds; nothing was changed."""

    default_code = "insufficient_balance"


class AuthenticationError(CoreError):
    """The API key is missing, unknown or revoked."""

    status = 401
    default_code = "unauthenticated"


class PermissionDeniedError(CoreError):
    """The API key lacks the scope, or belongs to another Space."""

    status = 403
    default_code = "forbidden"


class NotFoundError(CoreError):
    """The Space, customer, reward or API key does not exist."""

    status = 404
    default_code = "not_found"


class ConflictError(CoreError):
    """Concurrent writers kept colliding on the same rows after the bounded retries."""

    status = 409
    default_code = "conflict"


class TransactionIdConflictError(CoreError):
    """A ``transaction_id`` reused for a different payload (another customer, event, context or
    reward); like Stripe's idempotency keys.  The message tells nothing of the first use."""

    status = 409
    default_code = "transaction_id_conflict"


class RateLimitedError(CoreError):
    """A rate or usage limit was exceeded; retry later (``retry_after`` seconds when known)."""

    status = 429
    default_code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.retry_after = retry_after
