"""The sandbox ledger's records and constants: rows, aggregates, businesses, the error it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CONNECTION_STATUSES = ("ACTIVE", "PENDING", "IMPORTED", "INACTIVE")
ALL_SCOPES = (
    "PUBLIC",
    "ADMIN_CUSTOMER_INFO",
    "ADMIN_CUSTOMER_REDEEM",
    "ADMIN_CUSTOMER_GRANT_POINTS",
    "ADMIN_CUSTOMER_REFERRAL",
    "ADMIN_PERK",
    "ADMIN_LOCATION",
)
# How redeemed points are shown: "negative" as Perkville's docs describe its ledger (N2: a
# redemption -250, its VOID_REF +250), or "positive" (a magnitude; VOID_REF rows negated), for tests.
REDEEM_SIGNS = ("negative", "positive")
# Generated history ends here (fixed, so every seed gives the same data whatever the date).
HISTORY_END = datetime(2026, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 730

INTERVAL_CODES = {"DAY": 1, "WEEK": 2, "MONTH": 3, "YEAR": 4}  # use_integer_intervals


@dataclass(slots=True)
class Txn:
    """One ledger row; ``points`` is the per-unit magnitude, the sign comes from ``classification``."""

    id: int
    business_id: int
    user_id: int
    connection_id: int
    perk_id: int
    location_id: int
    classification: str
    points: int
    quantity: int
    dt: datetime
    last_mod: datetime
    status: str = "ACTIVE"
    trans_source_id: str | None = None
    voucher_id: int | None = None
    title: str = ""
    void_of: int | None = None

    @property
    def signed_total(self) -> int:
        """Balance effect of an ACTIVE row (earn +, redeem −)."""
        total = self.points * self.quantity
        return -total if self.classification == "REDEEM" else total


@dataclass
class Aggregate:
    """Per-connection figures derived from the ledger."""

    balance: int = 0
    lifetime: int = 0
    last_txn: datetime | None = None
    last_location: int | None = None


@dataclass
class SandboxError(Exception):
    """A request the sandbox refuses: HTTP status plus Perkville-style error body."""

    status: int
    field: str
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {
            "error_type": "validation_error",
            "errors": {self.field: [{"code": self.code, "message": self.message}]},
        }


@dataclass
class Business:
    id: int
    record: dict[str, Any]
    location_ids: list[int] = field(default_factory=list)
    perk_ids: list[int] = field(default_factory=list)
    connection_ids: list[int] = field(default_factory=list)
    txns: list[Txn] = field(default_factory=list)


def to_int(value: object) -> int | None:
    """``25``, ``"25"`` or ``"/v2/businesses/25/"`` → 25 (None when not an id)."""
    if value is None:
        return None
    text = str(value).rstrip("/").rsplit("/", 1)[-1]
    try:
        return int(text)
    except ValueError:
        return None
