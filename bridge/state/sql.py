"""Dialect-aware SQL helpers for the state store: one ``INSERT … ON CONFLICT`` for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def upsert(
    conn: Connection,
    table: Table,
    rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    keys: Iterable[str],
    update: Iterable[str] = (),
    where: ColumnElement[bool] | None = None,
    increments: Mapping[str, int] | None = None,
) -> None:
    """Insert ``rows``; on a key conflict update the ``update`` columns (and add ``increments``).

    With no ``update`` and no ``increments`` a conflicting row is left alone.  ``where`` guards
    the update (the row is kept when it is false), which is how leases are taken atomically.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - create_db_engine only makes these two
        raise ValueError(f"unsupported dialect {dialect}")
    rows_list = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
    if not rows_list:
        return
    key_list = list(keys)
    set_: dict[str, Any] = {name: stmt.excluded[name] for name in update}
    for name, _amount in (increments or {}).items():
        set_[name] = table.c[name] + stmt.excluded[name]
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=key_list, set_=set_, where=where)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key_list)
    conn.execute(stmt, rows_list)
