"""The ingest path's reads and writes of whole pages, in driver-level SQL.

A page of 1,000 events reads its customers and stored transaction ids and writes its events,
ledger entries, perks, outbox rows and customer states with a statement or two each: no per-row
ORM or type processing. Values go to the driver as the tables' column types would store them
(:meth:`BulkStore.dbdt` for datetimes, :func:`~perkamo_core.storage.columns.dump_json` text for
JSON, ``str`` for Decimals), so a row written here reads back through ``storage.tables`` like any
other. The SQL names the tables of ``storage.tables``; a schema change updates both.

Statements are written with qmark placeholders; PostgreSQL (psycopg) gets ``%s``, an ``IN`` list
becomes ``= ANY(array)`` (one bind, one plan) and an ``INSERT`` becomes multi-row statements
(one round trip per chunk instead of one per row).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, func, select, text

from perkamo_core.engine import CustomerState
from perkamo_core.storage.columns import load_json
from perkamo_core.storage.state import decode_state

IN_CHUNK = 500
"""Bound on the bind parameters of one ``IN (...)`` list."""


class StoredCustomer(NamedTuple):
    """A customer row as the ingest path needs it (``traits`` empty unless asked for)."""

    id: int
    user_id: str
    state: CustomerState
    traits: dict[str, Any]


class StoredEvent(NamedTuple):
    """The stored wire result and payload fingerprint of an event (None: a row from before
    migration 5, whose fingerprint the caller computes from :meth:`BulkStore.event_payloads`)."""

    result: dict[str, Any]
    fingerprint: str | None


def _sqlite_datetime(value: datetime) -> Any:
    # SQLAlchemy's SQLite text format of a UTC datetime (UTCDateTime stores it naive).
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _same_datetime(value: datetime) -> Any:
    return value


class BulkStore:
    """Page-sized reads and writes of the core's tables on one backend (SQLite or PostgreSQL)."""

    def __init__(self, dialect_name: str) -> None:
        self.postgres = dialect_name == "postgresql"
        self.dbdt = _same_datetime if self.postgres else _sqlite_datetime
        """A datetime as the driver stores it in a ``UTCDateTime`` column."""

    # --- statements ------------------------------------------------------------------------------

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (…)`` on SQLite; ``column = ANY(array)`` on PostgreSQL."""
        if self.postgres:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def _rows(self, conn: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        return list(conn.exec_driver_sql(self._q(sql), tuple(params)).fetchall())

    def _many(self, conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Execute ``sql`` for every row: ``executemany`` on SQLite; on PostgreSQL an
        ``INSERT … VALUES (…)`` becomes multi-row statements (one round trip per chunk)."""
        if not rows:
            return
        if not self.postgres or not sql.startswith("INSERT"):
            conn.exec_driver_sql(self._q(sql), rows)
            return
        head, _, rest = sql.partition(" VALUES ")
        group = rest[: rest.index(")") + 1]
        tail = rest[len(group):]
        per_chunk = max(1, min(1000, 60_000 // max(1, group.count("?"))))
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start:start + per_chunk]
            statement = f"{head} VALUES {','.join([group] * len(chunk))}{tail}"
            conn.exec_driver_sql(self._q(statement), tuple(v for row in chunk for v in row))

    def insert_rows(self, conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``sql`` (``INSERT … VALUES (?, …)``) for every row in the fewest round trips the backend
        allows (``_many``): for another component's page-sized inserts too (the bridge's run links)."""
        self._many(conn, sql, rows)

    def _chunks(self, column: str, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        for start in range(0, len(values), IN_CHUNK):
            yield self._in(column, list(values[start:start + IN_CHUNK]))

    # --- customers -------------------------------------------------------------------------------

    def customer_ids(self, conn: Connection, space_id: int, user_ids: Sequence[str]) -> dict[str, int]:
        """``user_id → id`` of the customers that exist."""
        out: dict[str, int] = {}
        for where, params in self._chunks("user_id", user_ids):
            for row in self._rows(
                conn, f"SELECT user_id, id FROM core_customers WHERE space_id = ? AND {where}",
                [space_id, *params],
            ):
                out[row[0]] = int(row[1])
        return out

    def customers_by_id(
        self, conn: Connection, ids: Sequence[int], *, traits: bool
    ) -> Iterator[StoredCustomer]:
        """The customers with these ids in ascending id order; on PostgreSQL locked ``FOR UPDATE``
        (in that order, so two writers of overlapping customer sets lock in the same order)."""
        columns = "id, user_id, state" + (", traits" if traits else "")
        lock = " FOR UPDATE" if self.postgres else ""
        for where, params in self._chunks("id", sorted(ids)):
            for row in self._rows(
                conn, f"SELECT {columns} FROM core_customers WHERE {where} ORDER BY id{lock}", params,
            ):
                yield StoredCustomer(int(row[0]), row[1], decode_state(row[2]),
                                     load_json(row[3]) if traits else {})

    def customers_by_user(
        self, conn: Connection, space_id: int, user_ids: Sequence[str]
    ) -> Iterator[StoredCustomer]:
        """The customers with these user ids, without traits and without row locks (for SQLite,
        where the transaction already holds the database write lock)."""
        for where, params in self._chunks("user_id", user_ids):
            for cid, uid, state in self._rows(
                conn, f"SELECT id, user_id, state FROM core_customers WHERE space_id = ? AND {where}",
                [space_id, *params],
            ):
                yield StoredCustomer(int(cid), uid, decode_state(state), {})

    def create_customers(
        self, conn: Connection, space_id: int, user_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Insert customers without traits or state; the user ids this transaction inserted (not
        a concurrent writer's, which a PostgreSQL ``ON CONFLICT DO NOTHING`` skips)."""
        at = self.dbdt(now)
        rows = [(space_id, u, at, at) for u in user_ids]
        insert = ("INSERT INTO core_customers (space_id, user_id, traits, state, event_count, "
                  "created_at, updated_at) VALUES ")
        group = "(?, ?, '{}', '{}', 0, ?, ?)"
        tail = " ON CONFLICT (space_id, user_id) DO NOTHING"
        if not self.postgres:
            self._many(conn, insert + group + tail, rows)
            return set(user_ids)  # the transaction holds the write lock: no one else inserts
        inserted: set[str] = set()
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            statement = insert + ",".join([group] * len(chunk)) + tail + " RETURNING user_id"
            result = conn.exec_driver_sql(self._q(statement), tuple(v for row in chunk for v in row))
            inserted.update(row[0] for row in result)
        return inserted

    def delete_customers(self, conn: Connection, ids: Sequence[int]) -> None:
        where, params = self._in("id", ids)
        conn.exec_driver_sql(self._q(f"DELETE FROM core_customers WHERE {where}"), tuple(params))

    def update_states(self, conn: Connection, rows: list[tuple[str, int, Any, int]]) -> None:
        """``(state document, added events, updated_at as dbdt, id)`` per customer; one statement
        per chunk on PostgreSQL."""
        if not rows:
            return
        if not self.postgres:
            conn.exec_driver_sql(
                "UPDATE core_customers SET state = ?, event_count = event_count + ?, "
                "updated_at = ? WHERE id = ?", rows)
            return
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            values = ",".join(["(%s, %s, %s, %s)"] * len(chunk))
            conn.exec_driver_sql(
                "UPDATE core_customers AS c SET state = v.state, "
                "event_count = c.event_count + v.n, updated_at = v.at "
                f"FROM (VALUES {values}) AS v(state, n, at, id) WHERE c.id = v.id",
                tuple(v for row in chunk for v in row),
            )

    def state_documents(
        self, conn: Connection, space_id: int, user_ids: Sequence[str] | None
    ) -> Iterator[tuple[str, str]]:
        """``(user_id, stored state document)`` of the Space's customers (of ``user_ids`` only
        unless None)."""
        sql = "SELECT user_id, state FROM core_customers WHERE space_id = ?"
        if user_ids is None:
            yield from self._rows(conn, sql, [space_id])
            return
        for where, params in self._chunks("user_id", sorted(set(user_ids))):
            yield from self._rows(conn, f"{sql} AND {where}", [space_id, *params])

    # --- events and redemptions ------------------------------------------------------------------

    def stored_events(
        self, conn: Connection, space_id: int, txids: Sequence[str]
    ) -> dict[str, StoredEvent]:
        """The events stored under the given transaction ids."""
        found: dict[str, StoredEvent] = {}
        for where, params in self._chunks("transaction_id", txids):
            for txid, result, fingerprint in self._rows(
                conn,
                "SELECT transaction_id, result, fingerprint FROM core_events "
                f"WHERE space_id = ? AND {where}",
                [space_id, *params],
            ):
                found[txid] = StoredEvent(load_json(result), fingerprint)
        return found

    def event_payloads(
        self, conn: Connection, space_id: int, txids: Sequence[str]
    ) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """``(transaction_id, user_id, event, context)`` of the stored events with these ids."""
        for where, params in self._chunks("e.transaction_id", txids):
            for txid, user_id, event, context in self._rows(
                conn,
                "SELECT e.transaction_id, c.user_id, e.event, e.context FROM core_events AS e "
                f"JOIN core_customers AS c ON c.id = e.customer_id WHERE e.space_id = ? AND {where}",
                [space_id, *params],
            ):
                yield txid, user_id, event, load_json(context)

    def redemption_results(
        self, conn: Connection, space_id: int, txids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """``transaction_id → stored wire result`` of the redemptions with these ids."""
        found: dict[str, dict[str, Any]] = {}
        for where, params in self._chunks("transaction_id", txids):
            for txid, result in self._rows(
                conn,
                f"SELECT transaction_id, result FROM core_redemptions WHERE space_id = ? AND {where}",
                [space_id, *params],
            ):
                found[txid] = load_json(result)
        return found

    def allocate_ids(self, conn: Connection, table: Table, column: str, n: int) -> list[int]:
        """``n`` fresh ids for ``table.column`` (the write lock/sequence makes them ours)."""
        if n == 0:
            return []
        if self.postgres:
            seq = conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column}
            ).scalar_one()
            rows = conn.execute(
                text("SELECT nextval(CAST(:s AS regclass)) FROM generate_series(1, :n)"),
                {"s": seq, "n": n},
            ).scalars().all()
            return sorted(int(r) for r in rows)
        # SQLite: BEGIN IMMEDIATE holds the database write lock, so MAX(id) cannot move under us.
        top = conn.execute(select(func.coalesce(func.max(table.c[column]), 0))).scalar_one()
        return list(range(int(top) + 1, int(top) + 1 + n))

    def insert_events(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """``(id, space_id, customer_id, transaction_id, event, context, occurred_at, recorded_at,
        result, fingerprint)`` per event; JSON as text, datetimes as :attr:`dbdt`."""
        self._many(conn, "INSERT INTO core_events (id, space_id, customer_id, transaction_id, "
                   "event, context, occurred_at, recorded_at, result, fingerprint) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def insert_ledger(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """``(space_id, customer_id, wallet, amount, event_id, created_at)`` per event movement."""
        self._many(conn, "INSERT INTO core_ledger (space_id, customer_id, wallet, amount, "
                   "event_id, redemption_id, created_at) VALUES (?, ?, ?, ?, ?, NULL, ?)", rows)

    def insert_perks(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """``(customer_id, perk_key, unlocked_at, trigger)``; a perk already unlocked stays."""
        self._many(conn, 'INSERT INTO core_perks (customer_id, perk_key, unlocked_at, "trigger") '
                   "VALUES (?, ?, ?, ?) ON CONFLICT (customer_id, perk_key) DO NOTHING", rows)

    def insert_event_outbox(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """``(space_id, customer_id, event_id, created_at)`` per applied event."""
        self._many(conn, "INSERT INTO core_outbox (space_id, kind, customer_id, event_id, traits, "
                   "created_at) VALUES (?, 'event', ?, ?, NULL, ?)", rows)
