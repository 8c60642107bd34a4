"""Tables of the embedded core (SQLAlchemy 2 Core) and the ``perkamo_core`` schema migrations.

Layout (every row belongs to one Space):

- ``core_spaces``, ``core_api_keys`` (sha256 of the key, never the key), ``core_program_modules``
  (every upload a version, one active per module).
- ``core_customers``: traits and the engine's compact state document (balances and lifetime
  totals per wallet, perks, counters, achievements, streaks) plus ``core_perks`` (unlocked perks),
  all loadable by customer id for one event or a whole page. ``core_balances`` (customer,
  wallet, balance, lifetime) is a view over the state documents since migration 4 (it was a
  materialized copy rewritten on every page).
- ``core_events``: the append-only event log, ``UNIQUE(space_id, transaction_id)``, with the
  stored wire result so a duplicate answers with the first outcome; indexed on
  ``(space_id, customer_id, id)`` so the latest events of a customer are an index range scan.
- ``core_ledger``: every wallet movement (events and redemptions); a balance is its ledger's sum.
  Indexed by ``event_id`` and ``redemption_id`` (append-only indexes; migration 3).
- ``core_redemptions`` (``UNIQUE(space_id, transaction_id)``), ``core_usage`` (meters per billing
  period), ``core_outbox`` (applied events and identify calls in commit order for write-back).

Decimals are stored as text (exact on both backends); datetimes as timezone-aware UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.types import TypeDecorator

from perkamo_core.migrations import Migration, migrate

COMPONENT = "perkamo_core"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def dump_json(value: Any) -> str:
    """Compact JSON with Decimals as numbers (ints when integral) and datetimes as ISO-8601.

    orjson writes the common documents about ten times faster; what it refuses (non-string keys,
    integers beyond 64 bits, lone surrogates) goes through the standard library's encoder, which
    gives the same text for everything orjson accepts.
    """
    try:
        return orjson.dumps(value, default=_json_default).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value)


def load_json_exact(text: str | bytes) -> Any:
    """Parse JSON without float literals or integers beyond 64 bits (the state document, whose
    Decimals are strings) about five times faster than :func:`load_json`.

    Either would come back as a binary ``float``: documents with decimals need :func:`load_json`.
    """
    return orjson.loads(text)


def load_json(text: str) -> Any:
    """Parse stored JSON; non-integral numbers come back as Decimal (never float)."""
    return json.loads(text, parse_float=Decimal)


class JSONText(TypeDecorator[Any]):
    """JSON stored as text on both backends (no JSON operators needed, exact and fast).

    A ``str`` bound value is taken as already-serialized JSON (the bulk path serializes once).
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return dump_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else load_json(value)


class DecimalText(TypeDecorator[Decimal]):
    """A Decimal stored as its exact text (SQLite has no exact numeric type)."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value if isinstance(value, Decimal) else Decimal(str(value)))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("a UTC column needs a timezone-aware datetime")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


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

_V1_TABLES = [spaces, api_keys, program_modules, customers, perks, events, ledger, redemptions]
_V2_TABLES = [usage, outbox]


def _create(tables: list[Table]) -> Any:
    def upgrade(conn: Connection) -> None:
        metadata.create_all(conn, tables=tables, checkfirst=False)

    return upgrade


def _ledger_indexes_by_entry(conn: Connection) -> None:
    # IF [NOT] EXISTS: a database created after this change got the new indexes from migration 1.
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_core_ledger_customer")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_core_ledger_event ON core_ledger (event_id)")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_core_ledger_redemption ON core_ledger (redemption_id)"
    )


_BALANCES_VIEW = {
    "sqlite": (
        "CREATE VIEW core_balances AS SELECT c.id AS customer_id, b.key AS wallet, "
        "c.space_id AS space_id, b.value AS balance, "
        "COALESCE(json_extract(c.state, '$.lifetime.\"' || b.key || '\"'), '0') AS lifetime "
        "FROM core_customers AS c, json_each(c.state, '$.balances') AS b"
    ),
    "postgresql": (
        "CREATE VIEW core_balances AS SELECT c.id AS customer_id, b.key AS wallet, "
        "c.space_id AS space_id, b.value AS balance, "
        "COALESCE((c.state::jsonb -> 'lifetime') ->> b.key, '0') AS lifetime "
        "FROM core_customers AS c CROSS JOIN LATERAL "
        "jsonb_each_text(COALESCE(c.state::jsonb -> 'balances', '{}'::jsonb)) AS b(key, value)"
    ),
}


def _balances_as_view(conn: Connection) -> None:
    conn.exec_driver_sql("DROP TABLE IF EXISTS core_balances")
    conn.exec_driver_sql(_BALANCES_VIEW[conn.dialect.name])


def _event_fingerprints(conn: Connection) -> None:
    # A database created after this change got the columns from migration 1 (create_all of the
    # current table). Nullable, no default: existing rows keep NULL and cost nothing to migrate.
    present = {column["name"] for column in inspect(conn).get_columns("core_events")}
    if "fingerprint" not in present:
        conn.exec_driver_sql("ALTER TABLE core_events ADD COLUMN fingerprint VARCHAR(64)")


# Append-only: a shipped migration is never edited; schema changes add a new entry with explicit
# DDL (and the table definitions above move with it).
MIGRATIONS: list[Migration] = [
    Migration(1, "core tables: spaces, keys, program, customers, state, event log, ledger",
              _create(_V1_TABLES)),
    Migration(2, "usage meters and write-back outbox", _create(_V2_TABLES)),
    Migration(3, "ledger indexed by event and redemption instead of by customer",
              _ledger_indexes_by_entry),
    Migration(4, "core_balances becomes a view over the customers' state documents",
              _balances_as_view),
    Migration(5, "events keep the fingerprint of their payload (a reused transaction_id with "
              "another payload is a conflict)", _event_fingerprints),
]


def migrate_core(engine: Engine) -> list[int]:
    """Apply the missing ``perkamo_core`` migrations; return the versions applied now."""
    return migrate(engine, COMPONENT, MIGRATIONS)
