"""The core's tables (SQLAlchemy Core) and the ``core_balances`` view."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from perkamo_core.storage.columns import DecimalText, JSONText, UTCDateTime

metadata = MetaData()

spaces = Table(
    "core_spaces",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("slug", String(128), nullable=False, unique=True),
    Column("environment", String(8), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("require_signatures", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "core_api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", String(40), nullable=False, unique=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_hint", String(24), nullable=False),  # prefix + last 4, for listings
    Column("scopes", String(200), nullable=False),  # space-separated
    Column("environment", String(8), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

program_modules = Table(
    "core_program_modules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("module", String(32), nullable=False),
    Column("version", String(128), nullable=False),
    Column("body", JSONText, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("space_id", "module", "version", name="uq_core_program_version"),
    Index("ix_core_program_active", "space_id", "module", "active"),
)

customers = Table(
    "core_customers",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("traits", JSONText, nullable=False),
    Column("state", JSONText, nullable=False),  # the engine's state minus balances and perks
    Column("event_count", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("space_id", "user_id", name="uq_core_customer"),
)

views = MetaData()
"""Views (created by migrations, never by ``create_all``): read-only, for queries and audits."""

balances = Table(
    "core_balances",
    views,
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite")),
    Column("wallet", String(64)),
    Column("space_id", Integer),
    Column("balance", DecimalText),
    Column("lifetime", DecimalText),
)
"""Balance and lifetime total per customer and wallet, read from the state documents (migration 4)."""

perks = Table(
    "core_perks",
    metadata,
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite"),
           ForeignKey("core_customers.id"), primary_key=True),
    Column("perk_key", String(128), primary_key=True),
    Column("unlocked_at", UTCDateTime, nullable=False),
    Column("trigger", JSONText, nullable=False),
)

events = Table(
    "core_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite"),
           ForeignKey("core_customers.id"), nullable=False),
    Column("transaction_id", String(256), nullable=False),
    Column("event", String(128), nullable=False),
    Column("context", JSONText, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("result", JSONText, nullable=False),  # the wire result of the first application
    # sha256 of the canonical (user_id, event, context) (``service.payload_fingerprint``): a
    # reused transaction_id with another payload is a conflict, not a duplicate. NULL on rows
    # written before migration 5 (their fingerprint is computed from the stored payload).
    Column("fingerprint", String(64), nullable=True),
    UniqueConstraint("space_id", "transaction_id", name="uq_core_event_txid"),
    Index("ix_core_events_customer_seq", "space_id", "customer_id", "id"),
)

ledger = Table(
    "core_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("space_id", Integer, nullable=False),
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite"),
           ForeignKey("core_customers.id"), nullable=False),
    Column("wallet", String(64), nullable=False),
    Column("amount", DecimalText, nullable=False),
    Column("event_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("redemption_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Ledger rows are found through their event or redemption (whose ids only grow, so these
    # indexes are appended to); an index by customer was rewritten all over on every page.
    Index("ix_core_ledger_event", "event_id"),
    Index("ix_core_ledger_redemption", "redemption_id"),
)

redemptions = Table(
    "core_redemptions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite"),
           ForeignKey("core_customers.id"), nullable=False),
    Column("transaction_id", String(256), nullable=False),
    Column("reward_key", String(128), nullable=False),
    Column("wallet", String(64), nullable=False),
    Column("cost", DecimalText, nullable=False),
    Column("result", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("space_id", "transaction_id", name="uq_core_redemption_txid"),
    Index("ix_core_redemptions_customer", "customer_id", "reward_key"),
)

usage = Table(
    "core_usage",
    metadata,
    Column("space_id", Integer, ForeignKey("core_spaces.id"), primary_key=True),
    Column("period", String(7), primary_key=True),  # YYYY-MM (UTC calendar month)
    Column("meter", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

outbox = Table(
    "core_outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("space_id", Integer, ForeignKey("core_spaces.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # "event" (incl. redemptions) | "identify"
    Column("customer_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("event_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("redemption_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("traits", JSONText, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
