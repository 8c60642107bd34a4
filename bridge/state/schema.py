"""The bridge's own tables (cursors, runs, id map, dead letters, leases, staged users) and their migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
)

from perkamo_core.migrations import Migration

metadata = MetaData()

cursors = Table(
    "bridge_cursors",
    metadata,
    Column("business", String(64), primary_key=True),
    Column("resource", String(64), primary_key=True),
    Column("value", String(400), nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The source's newest ``last_mod_dt`` the last run saw for this resource (the signpost), in the
    # source's clock like the value: status measures lag as this minus the value.  NULL on rows
    # written before cursors came from the source's own stamps (migration 2).
    Column("source_newest", String(64), nullable=True),
)

runs = Table(
    "bridge_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("business", String(64), nullable=False),
    Column("direction", String(32), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("mode", String(32), nullable=True),
    Column("target", String(32), nullable=True),
    Column("status", String(32), nullable=False),
    Column("owner", String(200), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("duration_ms", BigInteger, nullable=True),
    Column("read", BigInteger, nullable=False, default=0),
    Column("applied", BigInteger, nullable=False, default=0),
    Column("duplicate", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("dead_lettered", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("details", Text, nullable=True),
    Index("ix_bridge_runs_business_started", "business", "started_at"),
)

id_map = Table(
    "bridge_id_map",
    metadata,
    Column("business", String(64), primary_key=True),
    Column("perkville_user_id", String(64), primary_key=True),
    Column("customer_id", String(256), nullable=False),
    Column("strategy", String(32), nullable=False),
    Column("connection_id", String(64), nullable=True),
    Column("connection_status", String(32), nullable=True),
    Column("perkville_balance", Numeric(24, 6), nullable=True),
    Column("traits_hash", String(64), nullable=True),
    Column("adjustments", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("business", "customer_id", name="uq_bridge_id_map_customer"),
)

dead_letters = Table(
    "bridge_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("business", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("record_id", String(256), nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("raw", Text, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("business", "kind", "record_id", name="uq_bridge_dead_letters_record"),
    Index("ix_bridge_dead_letters_status", "business", "status", "reason"),
)

leases = Table(
    "bridge_leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

staged_users = Table(
    "bridge_staged_users",
    metadata,
    Column("business", String(64), primary_key=True),
    Column("perkville_user_id", String(64), primary_key=True),
    Column("raw", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

_V1_TABLES = (cursors, runs, id_map, dead_letters, leases, staged_users)


def _v1(conn: Connection) -> None:
    for table in _V1_TABLES:
        table.create(conn)


def _v2(conn: Connection) -> None:
    # A database created after this change got the column from migration 1 (which creates the
    # tables as defined above); an older one gets it now.  Its NULLs mark cursors kept on the
    # bridge's own clock by earlier versions.
    if "source_newest" not in {c["name"] for c in inspect(conn).get_columns("bridge_cursors")}:
        conn.exec_driver_sql("ALTER TABLE bridge_cursors ADD COLUMN source_newest VARCHAR(64)")


# Append-only: a shipped migration is never edited; schema changes add a new entry.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "bridge state: cursors, runs, id map, dead letters, leases", _v1),
    Migration(2, "cursors record the source's newest change (lag in the source's clock)", _v2),
)
"""The bridge component's migrations, applied with ``perkamo_core.migrations.migrate``."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A database datetime as aware UTC (SQLite hands back naive values written in UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
