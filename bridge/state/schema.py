"""The bridge's own tables (cursors, runs, id map, dead letters, leases, staged users) and their migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from perkamo_core.migrations import Migration

AwareDateTime = DateTime(timezone=True)


class BridgeTable(SQLModel, registry=registry(metadata=MetaData())):
    """Base of the bridge's table models: their own registry, so ``metadata`` holds the bridge's
    tables only (apart from ``SQLModel.metadata`` and the core's ``perkamo_core.storage.metadata``).

    The stores read and write through SQLAlchemy Core on each model's ``__table__`` (bound below
    to the names ``cursors``, ``runs``, …).
    """


class CursorRow(BridgeTable, table=True):
    __tablename__ = "bridge_cursors"

    business: str = Field(max_length=64, primary_key=True)
    resource: str = Field(max_length=64, primary_key=True)
    value: str = Field(max_length=400)
    run_id: int | None = None
    updated_at: datetime = Field(sa_type=AwareDateTime)
    # The source's newest ``last_mod_dt`` the last run saw for this resource (the signpost), in the
    # source's clock like the value: status measures lag as this minus the value.  NULL on rows
    # written before cursors came from the source's own stamps (migration 2).
    source_newest: str | None = Field(default=None, max_length=64)


class RunRow(BridgeTable, table=True):
    __tablename__ = "bridge_runs"
    __table_args__ = (Index("ix_bridge_runs_business_started", "business", "started_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})
    business: str = Field(max_length=64)
    direction: str = Field(max_length=32)
    kind: str = Field(max_length=32)
    mode: str | None = Field(default=None, max_length=32)
    target: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=32)
    owner: str | None = Field(default=None, max_length=200)
    started_at: datetime = Field(sa_type=AwareDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=AwareDateTime)
    duration_ms: int | None = Field(default=None, sa_type=BigInteger)
    read: int = Field(default=0, sa_type=BigInteger)
    applied: int = Field(default=0, sa_type=BigInteger)
    duplicate: int = Field(default=0, sa_type=BigInteger)
    skipped: int = Field(default=0, sa_type=BigInteger)
    dead_lettered: int = Field(default=0, sa_type=BigInteger)
    error: str | None = Field(default=None, sa_type=Text)
    details: str | None = Field(default=None, sa_type=Text)


class IdMapRow(BridgeTable, table=True):
    __tablename__ = "bridge_id_map"
    __table_args__ = (UniqueConstraint("business", "customer_id", name="uq_bridge_id_map_customer"),)

    business: str = Field(max_length=64, primary_key=True)
    perkville_user_id: str = Field(max_length=64, primary_key=True)
    customer_id: str = Field(max_length=256)
    strategy: str = Field(max_length=32)
    connection_id: str | None = Field(default=None, max_length=64)
    connection_status: str | None = Field(default=None, max_length=32)
    perkville_balance: Decimal | None = Field(default=None, sa_type=Numeric(24, 6))
    traits_hash: str | None = Field(default=None, max_length=64)
    adjustments: int = 0
    tier_level: int | None = None
    created_at: datetime = Field(sa_type=AwareDateTime)
    updated_at: datetime = Field(sa_type=AwareDateTime)


class DeadLetterRow(BridgeTable, table=True):
    __tablename__ = "bridge_dead_letters"
    __table_args__ = (
        UniqueConstraint("business", "kind", "record_id", name="uq_bridge_dead_letters_record"),
        Index("ix_bridge_dead_letters_status", "business", "status", "reason"),
        # A run's dead letters (the dashboard's run page, the audit pack), in id order.
        Index("ix_bridge_dead_letters_run", "run_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})
    business: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    record_id: str = Field(max_length=256)
    run_id: int | None = None
    raw: str = Field(sa_type=Text)
    reason: str = Field(max_length=64)
    detail: str | None = Field(default=None, sa_type=Text)
    attempts: int = 1
    status: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=AwareDateTime)
    updated_at: datetime = Field(sa_type=AwareDateTime)


class LeaseRow(BridgeTable, table=True):
    __tablename__ = "bridge_leases"

    name: str = Field(max_length=200, primary_key=True)
    owner: str = Field(max_length=200)
    acquired_at: datetime = Field(sa_type=AwareDateTime)
    heartbeat_at: datetime = Field(sa_type=AwareDateTime)
    expires_at: datetime = Field(sa_type=AwareDateTime)


class StagedUserRow(BridgeTable, table=True):
    __tablename__ = "bridge_staged_users"

    business: str = Field(max_length=64, primary_key=True)
    perkville_user_id: str = Field(max_length=64, primary_key=True)
    raw: str = Field(sa_type=Text)
    updated_at: datetime = Field(sa_type=AwareDateTime)


class ProbeRow(BridgeTable, table=True):
    """What ``perkbridge probe`` found about a business's Perkville API (one row per probe)."""

    __tablename__ = "bridge_probes"
    __table_args__ = (Index("ix_bridge_probes_business_at", "business", "probed_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})
    business: str = Field(max_length=64)
    probed_at: datetime = Field(sa_type=AwareDateTime)
    report: str = Field(sa_type=Text)  # JSON: schema, reach, write test, assumptions; no secrets


class RunEventRow(BridgeTable, table=True):
    """An event a run applied in the core: the link from a run to its wallet effects.

    Written in the page's own transaction (``Pipeline._deliver``, ``bridge.rollback``), one row
    per event whose outcome was ``applied``; duplicates and refusals get none. ``perkbridge
    rollback`` reverses exactly these; an audit of a run reads them in ``id`` (commit) order.
    """

    __tablename__ = "bridge_run_events"
    __table_args__ = (Index("ix_bridge_run_events_run", "run_id", "id"),)

    id: int | None = Field(
        default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer, "sqlite"),
        sa_column_kwargs={"autoincrement": True},
    )
    run_id: int
    business: str = Field(max_length=64)
    space: str | None = Field(default=None, max_length=128)  # None: a remote Perkamo
    transaction_id: str = Field(max_length=256)  # as the core stores it
    base_id: str | None = Field(default=None, max_length=256)  # the mapped id, when reissued


class ReissueRow(BridgeTable, table=True):
    """How often the application of a mapped transaction id was rolled back (its generation).

    A mapped id T whose application a rollback reversed is sent again as ``{T}:again:{n}``
    (``bridge.reissue``): the core keeps T, and its reversal, as they are.
    """

    __tablename__ = "bridge_reissues"

    business: str = Field(max_length=64, primary_key=True)
    transaction_id: str = Field(max_length=256, primary_key=True)
    generation: int
    run_id: int | None = None  # the rollback run that set this generation
    updated_at: datetime = Field(sa_type=AwareDateTime)


class ReconciledRow(BridgeTable, table=True):
    """The latest reconcile result of one member: both balances, the difference and a status.

    Written page by page by ``bridge.reconcile.Reconciler`` (one upsert per page), updated by its
    repair; read by the dashboard's reconciliation page (``bridge.state.reconciled``).  ``flagged``
    is 1 when the member needs a look (balances differ, or a demoted tier) and ``abs_difference``
    orders the flagged rows, so "mismatches first, largest first" is one walk of
    ``ix_bridge_reconciled_order``.
    """

    __tablename__ = "bridge_reconciled"
    __table_args__ = (
        Index("ix_bridge_reconciled_order", "business", "flagged", "abs_difference", "perkville_user_id"),
        Index("ix_bridge_reconciled_customer", "business", "customer_id"),
        Index("ix_bridge_reconciled_status", "business", "status"),
    )

    business: str = Field(max_length=64, primary_key=True)
    perkville_user_id: str = Field(max_length=64, primary_key=True)
    customer_id: str = Field(max_length=256)
    perkville_balance: Decimal = Field(sa_type=Numeric(24, 6))
    perkamo_balance: Decimal = Field(sa_type=Numeric(24, 6))
    difference: Decimal = Field(sa_type=Numeric(24, 6))  # Perkville − Perkamo
    abs_difference: Decimal = Field(sa_type=Numeric(24, 6))
    status: str = Field(max_length=16)  # match, mismatch, repaired, pending
    flagged: int = 0
    tier_status: str | None = Field(default=None, max_length=16)  # ok, demoted; NULL without [tiers]
    perkville_level: str | None = Field(default=None, max_length=128)
    mapped_level: int | None = None
    perkamo_level: int | None = None
    run_id: int | None = None  # the reconcile run (bridge_runs) that wrote the row
    checked_at: datetime = Field(sa_type=AwareDateTime)


metadata = BridgeTable.metadata
cursors = CursorRow.__table__  # type: ignore[attr-defined]
runs = RunRow.__table__  # type: ignore[attr-defined]
id_map = IdMapRow.__table__  # type: ignore[attr-defined]
dead_letters = DeadLetterRow.__table__  # type: ignore[attr-defined]
leases = LeaseRow.__table__  # type: ignore[attr-defined]
staged_users = StagedUserRow.__table__  # type: ignore[attr-defined]
probes = ProbeRow.__table__  # type: ignore[attr-defined]
run_events = RunEventRow.__table__  # type: ignore[attr-defined]
reissues = ReissueRow.__table__  # type: ignore[attr-defined]
reconciled = ReconciledRow.__table__  # type: ignore[attr-defined]

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


def _v3(conn: Connection) -> None:
    probes.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    run_events.create(conn, checkfirst=True)
    reissues.create(conn, checkfirst=True)


def _v5(conn: Connection) -> None:
    # As in _v2: a database created after this change got the column from migration 1.
    if "tier_level" not in {c["name"] for c in inspect(conn).get_columns("bridge_id_map")}:
        conn.exec_driver_sql("ALTER TABLE bridge_id_map ADD COLUMN tier_level INTEGER")


def _v6(conn: Connection) -> None:
    reconciled.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    # Procrastinate's tables, functions and triggers (the job queue of ``perkbridge worker``),
    # exactly as the pinned Procrastinate 3 ships them.  PostgreSQL only: on SQLite there are no
    # workers (``perkbridge schedule`` runs the jobs in-process), so nothing is created.
    # A later Procrastinate release whose schema changes gets its own migration here, applying
    # its migration scripts; the version pin in pyproject.toml keeps the two in step.
    if conn.dialect.name != "postgresql":
        return
    from procrastinate.schema import SchemaManager

    # The DB-API cursor, without parameters: the script is run as one simple query, its
    # ``%`` characters untouched (SQLAlchemy's ``exec_driver_sql`` would pass parameters).
    cursor = conn.connection.cursor()
    try:
        cursor.execute(SchemaManager.get_schema())
    finally:
        cursor.close()


def _v8(conn: Connection) -> None:
    # As in _v2: a database created after this change got the index from migration 1.
    (index,) = [ix for ix in dead_letters.indexes if ix.name == "ix_bridge_dead_letters_run"]
    index.create(conn, checkfirst=True)


# Append-only: a shipped migration is never edited; schema changes add a new entry.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "bridge state: cursors, runs, id map, dead letters, leases", _v1),
    Migration(2, "cursors record the source's newest change (lag in the source's clock)", _v2),
    Migration(3, "probes: what perkbridge probe found about each business's API", _v3),
    Migration(4, "run events (what each run applied) and reissued ids (rollback)", _v4),
    Migration(5, "id map: the highest Perkamo level a member's Perkville tier was migrated to", _v5),
    Migration(6, "reconciled: each member's latest reconcile result (the dashboard's reconciliation)", _v6),
    Migration(7, "the job queue: Procrastinate 3's schema (PostgreSQL only; nothing on SQLite)", _v7),
    Migration(8, "dead letters: an index on run_id (a run's dead letters, for its page and audit pack)", _v8),
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
