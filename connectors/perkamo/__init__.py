"""Remote Perkamo v1 client that behaves like the official SDKs."""

from __future__ import annotations

from connectors.perkamo.client import (
    DEFAULT_BASE_URL,
    MAX_BATCH,
    RESERVED_CONTEXT_KEYS,
    PerkamoClient,
    check_context,
    new_transaction_id,
)
from connectors.perkamo.errors import (
    PerkamoApiError,
    PerkamoConnectionError,
    PerkamoError,
    PerkamoInputError,
    RateLimit,
)
from connectors.perkamo.signing import sign

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BATCH",
    "RESERVED_CONTEXT_KEYS",
    "PerkamoApiError",
    "PerkamoClient",
    "PerkamoConnectionError",
    "PerkamoError",
    "PerkamoInputError",
    "RateLimit",
    "check_context",
    "new_transaction_id",
    "sign",
]
