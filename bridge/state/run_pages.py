"""Which core events each run applied: one row per committed page, written in the page's transaction.

Nothing in the core's tables names the run that applied an event (``core_events.recorded_at`` is
only a time, and other writers share the Space), so the pipeline records, with each page it
commits, the ``transaction_id``s of the events that page *applied* (duplicates and rejections
are not the run's doing). With the embedded target the row commits in the same transaction as
the events themselves: a page is linked to its run exactly when its events exist. The row id
gives the commit order; the list keeps the order the page sent them in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine, select

from bridge.state.schema import run_pages, utcnow
from bridge.state.stores import Clock, read_connection


class RunPages:
    """The per-page link from a run to the transaction ids it applied (append-only)."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def record(
        self, conn: Connection, run_id: int, space: str | None, transaction_ids: Sequence[str]
    ) -> None:
        """Record the ids a page applied, inside that page's transaction (nothing when none)."""
        if not transaction_ids:
            return
        conn.execute(
            run_pages.insert().values(
                run_id=run_id,
                space=space,
                transaction_ids=json.dumps(list(transaction_ids), ensure_ascii=False),
                committed_at=self._clock(),
            )
        )

    def applied(self, run_id: int) -> Iterator[tuple[str | None, str]]:
        """``(space, transaction_id)`` of every event the run applied, in commit order."""
        stmt = (
            select(run_pages.c.space, run_pages.c.transaction_ids)
            .where(run_pages.c.run_id == run_id)
            .order_by(run_pages.c.id)
        )
        with read_connection(self._engine) as c:
            rows = c.execute(stmt).all()
        for space, text in rows:
            for transaction_id in json.loads(text):
                yield space, str(transaction_id)

    def spaces(self, run_id: int) -> list[str]:
        """The Spaces the run's pages were applied to (one for a run of the embedded target)."""
        stmt = select(run_pages.c.space).where(run_pages.c.run_id == run_id).distinct()
        with read_connection(self._engine) as c:
            return sorted(str(s) for s in c.execute(stmt).scalars() if s is not None)
