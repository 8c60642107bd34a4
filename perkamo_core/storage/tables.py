"""The core's tables as SQLModel models, and the ``core_balances`` view.

Each model's ``__table__`` is also bound to a module name (``spaces``, ``events``, …): the
service reads and writes through SQLAlchemy Core on these tables (``select``/``insert``/
``update``), and the bulk path (``storage.bulk``) writes rows without building model instances.
The models have a registry of their own, so ``metadata`` holds the core's tables only, apart
from ``SQLModel.metadata`` and the bridge's tables (``bridge.state.schema.metadata``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from perkamo_core.storage.columns import DecimalText, JSONText, UTCDateTime

ID = BigInteger().with_variant(Integer, "sqlite")
"""The type of the ids that grow with the traffic (customers, events, ledger, …)."""


class CoreTable(SQLModel, registry=registry(metadata=MetaData())):
    """Base of the core's table models: their own registry and ``metadata``."""


class SpaceRow(CoreTable, table=True):
    __tablename__ = "core_spaces"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=128, unique=True)
    environment: str = Field(max_length=8)
    timezone: str = Field(max_length=64)
    require_signatures: bool = Field(default=False)
    created_at: datetime = Field(sa_type=UTCDateTime)


class ApiKeyRow(CoreTable, table=True):
    __tablename__ = "core_api_keys"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(max_length=40, unique=True)
    space_id: int = Field(foreign_key="core_spaces.id")
    key_hash: str = Field(max_length=64, unique=True)
    key_hint: str = Field(max_length=24)  # prefix + last 4, for listings
    scopes: str = Field(max_length=200)  # space-separated
    environment: str = Field(max_length=8)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ProgramModuleRow(CoreTable, table=True):
    __tablename__ = "core_program_modules"
    __table_args__ = (
        UniqueConstraint("space_id", "module", "version", name="uq_core_program_version"),
        Index("ix_core_program_active", "space_id", "module", "active"),
    )

    id: int | None = Field(default=None, primary_key=True)
    space_id: int = Field(foreign_key="core_spaces.id")
    module: str = Field(max_length=32)
    version: str = Field(max_length=128)
    body: dict[str, Any] = Field(sa_type=JSONText, nullable=False)
    active: bool
    created_at: datetime = Field(sa_type=UTCDateTime)


class CustomerRow(CoreTable, table=True):
    __tablename__ = "core_customers"
    __table_args__ = (UniqueConstraint("space_id", "user_id", name="uq_core_customer"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    space_id: int = Field(foreign_key="core_spaces.id")
    user_id: str = Field(max_length=256)
    traits: dict[str, Any] = Field(sa_type=JSONText, nullable=False)
    # The engine's state document (``storage.state``): balances, lifetime totals, perks, …
    state: dict[str, Any] = Field(sa_type=JSONText, nullable=False)
    event_count: int = Field(default=0)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class PerkRow(CoreTable, table=True):
    __tablename__ = "core_perks"

    customer_id: int = Field(primary_key=True, foreign_key="core_customers.id", sa_type=ID)
    perk_key: str = Field(primary_key=True, max_length=128)
    unlocked_at: datetime = Field(sa_type=UTCDateTime)
    trigger: dict[str, Any] = Field(sa_type=JSONText, nullable=False)


class EventRow(CoreTable, table=True):
    __tablename__ = "core_events"
    __table_args__ = (
        UniqueConstraint("space_id", "transaction_id", name="uq_core_event_txid"),
        Index("ix_core_events_customer_seq", "space_id", "customer_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    space_id: int = Field(foreign_key="core_spaces.id")
    customer_id: int = Field(foreign_key="core_customers.id", sa_type=ID)
    transaction_id: str = Field(max_length=256)
    event: str = Field(max_length=128)
    context: dict[str, Any] = Field(sa_type=JSONText, nullable=False)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    recorded_at: datetime = Field(sa_type=UTCDateTime)
    result: dict[str, Any] = Field(sa_type=JSONText, nullable=False)  # the first application's
    # sha256 of the canonical (user_id, event, context) (``service.payload_fingerprint``): a
    # reused transaction_id with another payload is a conflict, not a duplicate. NULL on rows
    # written before migration 5 (their fingerprint is computed from the stored payload).
    fingerprint: str | None = Field(default=None, max_length=64)


class LedgerRow(CoreTable, table=True):
    __tablename__ = "core_ledger"
    # Ledger rows are found through their event or redemption (whose ids only grow, so these
    # indexes are appended to); an index by customer was rewritten all over on every page.
    __table_args__ = (
        Index("ix_core_ledger_event", "event_id"),
        Index("ix_core_ledger_redemption", "redemption_id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    space_id: int
    customer_id: int = Field(foreign_key="core_customers.id", sa_type=ID)
    wallet: str = Field(max_length=64)
    amount: Decimal = Field(sa_type=DecimalText)
    event_id: int | None = Field(default=None, sa_type=ID)
    redemption_id: int | None = Field(default=None, sa_type=ID)
    created_at: datetime = Field(sa_type=UTCDateTime)


class RedemptionRow(CoreTable, table=True):
    __tablename__ = "core_redemptions"
    __table_args__ = (
        UniqueConstraint("space_id", "transaction_id", name="uq_core_redemption_txid"),
        Index("ix_core_redemptions_customer", "customer_id", "reward_key"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    space_id: int = Field(foreign_key="core_spaces.id")
    customer_id: int = Field(foreign_key="core_customers.id", sa_type=ID)
    transaction_id: str = Field(max_length=256)
    reward_key: str = Field(max_length=128)
    wallet: str = Field(max_length=64)
    cost: Decimal = Field(sa_type=DecimalText)
    result: dict[str, Any] = Field(sa_type=JSONText, nullable=False)
    created_at: datetime = Field(sa_type=UTCDateTime)


class UsageRow(CoreTable, table=True):
    __tablename__ = "core_usage"

    space_id: int = Field(primary_key=True, foreign_key="core_spaces.id")
    period: str = Field(primary_key=True, max_length=7)  # YYYY-MM (UTC calendar month)
    meter: str = Field(primary_key=True, max_length=32)
    count: int = Field(sa_type=BigInteger)


class OutboxRow(CoreTable, table=True):
    __tablename__ = "core_outbox"

    seq: int | None = Field(default=None, primary_key=True, sa_type=ID)
    space_id: int = Field(foreign_key="core_spaces.id")
    kind: str = Field(max_length=16)  # "event" (incl. redemptions) | "identify"
    customer_id: int = Field(sa_type=ID)
    event_id: int | None = Field(default=None, sa_type=ID)
    redemption_id: int | None = Field(default=None, sa_type=ID)
    traits: dict[str, Any] | None = Field(default=None, sa_type=JSONText)
    created_at: datetime = Field(sa_type=UTCDateTime)


def _table(model: type[CoreTable]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


metadata = CoreTable.metadata
"""The core's tables (created by migrations)."""

spaces = _table(SpaceRow)
api_keys = _table(ApiKeyRow)
program_modules = _table(ProgramModuleRow)
customers = _table(CustomerRow)
perks = _table(PerkRow)
events = _table(EventRow)
ledger = _table(LedgerRow)
redemptions = _table(RedemptionRow)
usage = _table(UsageRow)
outbox = _table(OutboxRow)

views = MetaData()
"""Views (created by migrations, never by ``create_all``): read-only, for queries and audits.

A view stays a Core ``Table``: a SQLModel ``table=True`` model is a table its metadata creates."""

balances = Table(
    "core_balances",
    views,
    Column("customer_id", ID),
    Column("wallet", String(64)),
    Column("space_id", Integer),
    Column("balance", DecimalText),
    Column("lifetime", DecimalText),
)
"""Balance and lifetime total per customer and wallet, read from the state documents (migration 4)."""
