"""The ``perkamo_core`` schema migrations (applied by :func:`perkamo_core.migrations.migrate`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Table, inspect

from perkamo_core.migrations import Migration, migrate
from perkamo_core.storage.tables import (
    api_keys,
    customers,
    events,
    ledger,
    metadata,
    outbox,
    perks,
    program_modules,
    redemptions,
    spaces,
    usage,
)

COMPONENT = "perkamo_core"

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
