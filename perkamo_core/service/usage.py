"""Usage meters per Space and billing period (``GET /v1/usage``); every writer bumps them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.errors import ValidationError
from perkamo_core.service.store import CoreStore, Space, Write

USAGE_METERS: tuple[str, ...] = (
    "events", "duplicates", "identify_calls", "redemptions", "requests",
)


def _period(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m")


def bump_usage(store: CoreStore, conn: Connection, space_id: int, counts: Mapping[str, int]) -> None:
    """Add ``counts`` (meter → n) to the current period's meters, in the caller's transaction."""
    rows = [
        {"space_id": space_id, "period": _period(store.now()), "meter": meter, "count": n}
        for meter, n in sorted(counts.items())
        if n
    ]
    if not rows:
        return
    stmt = store.insert(st.usage)
    stmt = stmt.on_conflict_do_update(
        index_elements=["space_id", "period", "meter"],
        set_={"count": st.usage.c.count + stmt.excluded.count},
    )
    conn.execute(stmt, rows)


def read_usage(store: CoreStore, conn: Connection, space: Space) -> dict[str, Any]:
    """The current billing period's meters of ``space``."""
    now = store.now()
    period = _period(now)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    meters = dict.fromkeys(USAGE_METERS, 0)
    for meter, value in conn.execute(
        select(st.usage.c.meter, st.usage.c.count)
        .where(st.usage.c.space_id == space.id, st.usage.c.period == period)
    ):
        meters[meter] = int(value)
    return {
        "tenant": space.slug,
        "period": period,
        "period_start": core_engine.format_datetime(start),
        "period_end": core_engine.format_datetime(end),
        "meters": meters,
    }


class UsageMeters:
    """Reads and explicit bumps of the usage meters."""

    def __init__(self, store: CoreStore, write: Write) -> None:
        self._store = store
        self._write = write

    def usage(self, space: str) -> dict[str, Any]:
        """Current billing-period meters (``GET /v1/usage``)."""
        with self._store.read() as conn:
            return read_usage(self._store, conn, self._store.space(conn, space))

    def record_usage(self, space: str, meter: str = "requests", count: int = 1) -> None:
        """Add ``count`` to a usage meter of the current period (the API counts ``requests``)."""
        if meter not in USAGE_METERS:
            raise ValidationError(f"unknown usage meter {meter!r}", field="meter")

        def run(conn: Connection) -> None:
            bump_usage(self._store, conn, self._store.space(conn, space).id, {meter: count})

        self._write(run)
