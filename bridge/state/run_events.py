"""What each run applied (``bridge_run_events``) and how often a mapped id was rolled back
(``bridge_reissues``): row ↔ value conversion at the boundary.

The link is written inside the page's transaction, so it is exact after any crash: a page's
events and their link rows commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, select

from bridge.state.schema import reissues, run_events, utcnow
from bridge.state.sql import upsert
from bridge.state.stores import Clock, read_connection
from perkamo_core.storage.bulk import BulkStore

IN_CHUNK = 500
"""Bound on the values of one ``IN (…)`` list."""


@dataclass(frozen=True)
class RunEvent:
    """One event a run applied: its id as the core stores it, and the mapped id it stands for."""

    seq: int
    run_id: int
    business: str
    space: str | None
    transaction_id: str
    base_id: str | None = None
    """The id the mapping gave, when the event was sent under a reissued id (else None)."""

    @property
    def mapped_id(self) -> str:
        return self.base_id or self.transaction_id


_INSERT = "INSERT INTO bridge_run_events (run_id, business, space, transaction_id, base_id) VALUES (?, ?, ?, ?, ?)"


class RunEvents:
    """The run → applied events link, and the generations of reissued ids."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def record(
        self,
        conn: Connection,
        run_id: int,
        business: str,
        space: str | None,
        applied: Sequence[tuple[str, str | None]],
    ) -> None:
        """Link ``(transaction_id, base_id or None)`` pairs to the run, inside the page transaction."""
        if not applied:
            return
        # The core's page-sized insert of plain tuples: half the CPU of a Core insert, which
        # builds and processes a parameter dict per row (a page links up to 1,000).
        BulkStore(conn.dialect.name).insert_rows(
            conn, _INSERT, [(run_id, business, space, txid, base) for txid, base in applied]
        )

    def of_run(self, run_id: int) -> Iterator[RunEvent]:
        """The run's applied events in commit order."""
        stmt = select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
        with read_connection(self._engine) as conn:
            for row in conn.execute(stmt).mappings():
                yield RunEvent(
                    seq=int(row["id"]), run_id=int(row["run_id"]), business=row["business"],
                    space=row["space"], transaction_id=row["transaction_id"], base_id=row["base_id"],
                )

    def spaces(self, run_id: int) -> list[str]:
        """The Spaces the run applied events to (one for a run of the embedded target)."""
        stmt = select(run_events.c.space).where(run_events.c.run_id == run_id).distinct()
        with read_connection(self._engine) as conn:
            return sorted(str(s) for s in conn.execute(stmt).scalars() if s is not None)

    def count(self, run_id: int) -> int:
        stmt = select(func.count()).select_from(run_events).where(run_events.c.run_id == run_id)
        with read_connection(self._engine) as conn:
            return int(conn.execute(stmt).scalar() or 0)

    # --- reissued ids ---------------------------------------------------------------------------

    def any_reissued(self, business: str) -> bool:
        stmt = select(reissues.c.generation).where(reissues.c.business == business).limit(1)
        with read_connection(self._engine) as conn:
            return conn.execute(stmt).first() is not None

    def generations(self, business: str, ids: Sequence[str]) -> dict[str, int]:
        """``mapped id → generation`` of those of ``ids`` that were rolled back at least once."""
        found: dict[str, int] = {}
        unique = sorted(set(ids))
        with read_connection(self._engine) as conn:
            for start in range(0, len(unique), IN_CHUNK):
                chunk = unique[start:start + IN_CHUNK]
                rows = conn.execute(
                    select(reissues.c.transaction_id, reissues.c.generation).where(
                        reissues.c.business == business, reissues.c.transaction_id.in_(chunk)
                    )
                )
                found.update({str(txid): int(gen) for txid, gen in rows})
        return found

    def advance(self, conn: Connection, business: str, generations: dict[str, int], run_id: int) -> None:
        """Set each mapped id's generation (one past the application a rollback just reversed)."""
        now = self._clock()
        rows = [
            {"business": business, "transaction_id": txid, "generation": generation, "run_id": run_id,
             "updated_at": now}
            for txid, generation in sorted(generations.items())
        ]
        upsert(conn, reissues, rows, keys=("business", "transaction_id"),
               update=["generation", "run_id", "updated_at"])
