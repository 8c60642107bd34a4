"""Value types of the core service: the event input and the frozen results it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perkamo_core.errors import CoreError

SERVER_SCOPES: tuple[str, ...] = ("events:write", "profile:read", "rewards:redeem", "admin:config")
"""The four server-key scopes of the v1 API (a key created without scopes gets all four)."""

KEY_SCOPES: tuple[str, ...] = (*SERVER_SCOPES, "dashboard")
"""Every scope a server key may hold: the v1 API's four, plus ``dashboard`` (signs in to the
operator dashboard of ``perkbridge serve`` and reads ``/metrics``; no v1 route accepts it)."""

ENVIRONMENTS: tuple[str, ...] = ("test", "live")

RESERVED_CONTEXT_KEYS: frozenset[str] = frozenset(
    {"xp", "wallet", "wallets", "rewards", "level", "perks", "achievements"}
)
"""Top-level context keys rejected case-insensitively (they name customer state)."""

MAX_USER_ID = 256
MAX_EVENT = 128
MAX_TRANSACTION_ID = 256
MAX_SPACE_SLUG = 128


class EventInput(BaseModel):
    """One event as a caller sends it; the service validates it and fills the defaults.

    Types are checked here; limits, reserved context keys and ``occurred_at`` parsing are checked
    by the service, which raises ``ValidationError`` naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: str
    event: str
    transaction_id: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | str | None = None


@dataclass(frozen=True)
class SpaceInfo:
    """A Space of the embedded core."""

    slug: str
    environment: str
    timezone: str
    require_signatures: bool
    created_at: datetime


@dataclass(frozen=True)
class CreatedKey:
    """A freshly created server key: ``key`` is the plaintext, shown once and stored only hashed."""

    key: str = field(repr=False)
    key_id: str
    space: str
    scopes: tuple[str, ...]
    environment: str


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an authenticated server key may do (never the key itself)."""

    key_id: str
    space: str
    scopes: frozenset[str]
    environment: str


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """One item of a bulk ingest: the wire result, or the typed error that rejected the item."""

    result: dict[str, Any] | None
    error: CoreError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class OutboxItem:
    """An applied event or identify call, in commit order, for write-back consumers."""

    seq: int
    kind: Literal["event", "identify"]
    user_id: str
    event: str | None
    transaction_id: str | None
    context: dict[str, Any]
    occurred_at: datetime | None
    traits: dict[str, Any]


@dataclass(frozen=True)
class CustomerEvent:
    """One logged event of a customer, as ``CoreService.customer_events`` lists them (newest first)."""

    seq: int
    event: str
    transaction_id: str
    occurred_at: datetime
    recorded_at: datetime
    deltas: tuple[tuple[str, Decimal], ...]
    """``(wallet, amount)`` of each movement the event's first application made."""

