"""The id map (Perkville user ↔ customer id) and the staged users of a business."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, select, update

from bridge.state.schema import id_map, staged_users, utcnow
from bridge.state.sql import upsert
from bridge.state.stores import Clock, read_connection


@dataclass(frozen=True)
class IdMapEntry:
    """Which Perkamo customer a Perkville user became, and under which strategy."""

    business: str
    perkville_user_id: str
    customer_id: str
    strategy: str
    connection_id: str | None = None
    connection_status: str | None = None
    perkville_balance: Decimal | None = None
    traits_hash: str | None = None
    adjustments: int = 0
    tier_level: int | None = None
    """The highest Perkamo level a ``perkville.tier_migrated`` event lifted the member to."""

    def exported(self) -> dict[str, Any]:
        """The entry as ``id-map export`` shows it (the columns of ``ID_MAP_CSV_COLUMNS``)."""
        return {column: getattr(self, column) for column in ID_MAP_CSV_COLUMNS}


ID_MAP_CSV_COLUMNS = (
    "business",
    "perkville_user_id",
    "customer_id",
    "strategy",
    "connection_id",
    "connection_status",
    "perkville_balance",
)


class IdMap:
    """The customer id ↔ Perkville user id map, exportable as CSV."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, conn: Connection, entries: Sequence[IdMapEntry]) -> None:
        now = self._clock()
        upsert(
            conn,
            id_map,
            [
                {
                    "business": e.business,
                    "perkville_user_id": e.perkville_user_id,
                    "customer_id": e.customer_id,
                    "strategy": e.strategy,
                    "connection_id": e.connection_id,
                    "connection_status": e.connection_status,
                    "perkville_balance": e.perkville_balance,
                    "traits_hash": e.traits_hash,
                    "adjustments": e.adjustments,
                    "tier_level": e.tier_level,
                    "created_at": now,
                    "updated_at": now,
                }
                for e in entries
            ],
            keys=("business", "perkville_user_id"),
            update=(
                "customer_id",
                "strategy",
                "connection_id",
                "connection_status",
                "perkville_balance",
                "traits_hash",
                "tier_level",
                "updated_at",
            ),
        )

    def get_many(
        self, business: str, user_ids: Iterable[str], conn: Connection | None = None
    ) -> dict[str, IdMapEntry]:
        wanted = list(dict.fromkeys(user_ids))
        if not wanted:
            return {}
        out: dict[str, IdMapEntry] = {}
        for start in range(0, len(wanted), 500):
            stmt = select(id_map).where(
                id_map.c.business == business,
                id_map.c.perkville_user_id.in_(wanted[start : start + 500]),
            )
            if conn is not None:
                rows = list(conn.execute(stmt).mappings())
            else:
                with read_connection(self._engine) as c:
                    rows = list(c.execute(stmt).mappings())
            for row in rows:
                out[row["perkville_user_id"]] = _to_entry(dict(row))
        return out

    def customer_owner(self, business: str, customer_id: str, conn: Connection) -> str | None:
        """The Perkville user already mapped to ``customer_id`` (collision check), if any."""
        return conn.execute(
            select(id_map.c.perkville_user_id).where(
                id_map.c.business == business, id_map.c.customer_id == customer_id
            )
        ).scalar()

    def iter_all(self, business: str) -> Iterator[IdMapEntry]:
        with read_connection(self._engine) as c:
            stmt = (
                select(id_map)
                .where(id_map.c.business == business)
                .order_by(id_map.c.perkville_user_id)
            )
            for row in c.execute(stmt).mappings():
                yield _to_entry(row)

    def count(self, business: str | None = None) -> int:
        stmt = select(func.count()).select_from(id_map)
        if business is not None:
            stmt = stmt.where(id_map.c.business == business)
        with read_connection(self._engine) as c:
            return int(c.execute(stmt).scalar() or 0)

    def next_adjustment(self, conn: Connection, business: str, perkville_user_id: str) -> int:
        """Reserve the next repair number ``n`` for this user (1, 2, …) inside the caller's transaction."""
        conn.execute(
            update(id_map)
            .where(
                and_(id_map.c.business == business, id_map.c.perkville_user_id == perkville_user_id)
            )
            .values(adjustments=id_map.c.adjustments + 1)
        )
        value = conn.execute(
            select(id_map.c.adjustments).where(
                id_map.c.business == business, id_map.c.perkville_user_id == perkville_user_id
            )
        ).scalar()
        if value is None:
            raise KeyError(perkville_user_id)
        return int(value)

    def export_csv(self, business: str, stream: IO[str]) -> int:
        writer = csv.writer(stream)
        writer.writerow(ID_MAP_CSV_COLUMNS)
        n = 0
        for entry in self.iter_all(business):
            writer.writerow(["" if v is None else str(v) for v in entry.exported().values()])
            n += 1
        return n


def _to_entry(row: Mapping[str, Any]) -> IdMapEntry:
    balance = row["perkville_balance"]
    return IdMapEntry(
        business=row["business"],
        perkville_user_id=row["perkville_user_id"],
        customer_id=row["customer_id"],
        strategy=row["strategy"],
        connection_id=row["connection_id"],
        connection_status=row["connection_status"],
        perkville_balance=None if balance is None else plain_decimal(Decimal(str(balance))),
        traits_hash=row["traits_hash"],
        adjustments=int(row["adjustments"] or 0),
        tier_level=None if row.get("tier_level") is None else int(row["tier_level"]),
    )


def plain_decimal(value: Decimal) -> Decimal:
    """``value`` without trailing zeros or an exponent (``40.000000`` → ``40``, ``1.50`` → ``1.5``)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return Decimal(format(value.normalize(), "f"))


# -------------------------------------------------------------------------------- staged users


class StagedUsers:
    """Raw Perkville user records kept between the users phase and the connections phase."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, conn: Connection, business: str, users: Mapping[str, Mapping[str, Any]]) -> None:
        now = self._clock()
        upsert(
            conn,
            staged_users,
            [
                {
                    "business": business,
                    "perkville_user_id": uid,
                    "raw": _raw_json(raw),
                    "updated_at": now,
                }
                for uid, raw in users.items()
            ],
            keys=("business", "perkville_user_id"),
            update=("raw", "updated_at"),
        )

    def get_many(
        self, business: str, user_ids: Iterable[str], conn: Connection | None = None
    ) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(user_ids))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            stmt = select(staged_users.c.perkville_user_id, staged_users.c.raw).where(
                staged_users.c.business == business,
                staged_users.c.perkville_user_id.in_(wanted[start : start + 500]),
            )
            if conn is not None:
                rows = list(conn.execute(stmt))
            else:
                with read_connection(self._engine) as c:
                    rows = list(c.execute(stmt))
            for uid, raw in rows:
                out[uid] = _parse_raw(raw)
        return out


def _raw_json(raw: Mapping[str, Any]) -> str:
    """A staged record as compact JSON (orjson; what it refuses goes through the standard library)."""
    try:
        return orjson.dumps(raw, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(raw, default=str, ensure_ascii=False)


def _parse_raw(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits
        return json.loads(text)
