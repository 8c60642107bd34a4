"""An explicit, versioned schema-migration runner shared by every component that owns tables.

Each component (``perkamo_core``, ``bridge``) declares an ordered list of ``Migration``s.  The
runner records the applied versions in ``schema_migrations`` and applies the missing ones, each
in its own transaction, so an existing database upgrades in place and nothing relies on
``create_all`` at every start.  Concurrent runners (several workers starting at once) serialize
on a lock: an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    inspect,
    select,
    text,
)

_meta = MetaData()
schema_migrations = Table(
    "schema_migrations",
    _meta,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


@dataclass(frozen=True)
class Migration:
    """One schema step: ``upgrade`` runs inside the transaction that records it."""

    version: int
    name: str
    upgrade: Callable[[Connection], None]


def applied_versions(conn: Connection, component: str) -> set[int]:
    rows = conn.execute(
        select(schema_migrations.c.version).where(schema_migrations.c.component == component)
    )
    return {row[0] for row in rows}


def _applied_now(engine: Engine, component: str) -> set[int]:
    """The applied versions, read without a write lock (empty before the first migration)."""
    with engine.connect() as conn:
        reader = conn.execution_options(sqlite_begin="DEFERRED")
        if not inspect(reader).has_table(schema_migrations.name):
            return set()
        return applied_versions(reader, component)


def migrate(engine: Engine, component: str, migrations: Sequence[Migration]) -> list[int]:
    """Apply the missing migrations of ``component``; return the versions applied now."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"{component}: migration versions must be unique and ascending")
    if set(versions) <= _applied_now(engine, component):
        # Up to date (every start but the first): no write lock.  A busy SQLite writer (a backfill
        # holding the write lock page after page) would otherwise keep a second process waiting
        # here until "database is locked", before it could even see the lease and say "already
        # running".
        return []
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7415201)"))
        _meta.create_all(conn, checkfirst=True)
    done: list[int] = []
    for migration in migrations:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7415201)"))
            if migration.version in applied_versions(conn, component):
                continue
            migration.upgrade(conn)
            conn.execute(
                schema_migrations.insert().values(
                    component=component, version=migration.version, name=migration.name
                )
            )
            done.append(migration.version)
    return done
