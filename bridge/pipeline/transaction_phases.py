"""The transactions phase of an import run: the query it reads (from the checkpoint's offset),
its pages mapped in order (late voids and voided originals added where the run calls for them),
and each page delivered with its checkpoint offset or sync cursor in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bridge.pipeline import checkpoint as checkpoints
from bridge.pipeline.late_voids import with_late_voids, with_voided_originals
from bridge.pipeline.pages import SequentialFeed, TransactionQuery, close_quietly
from bridge.pipeline.phase_base import PhaseBase, WriteState
from bridge.pipeline.records import PageRecord, customer_ids, map_transaction_rows
from bridge.pipeline.tally import PageTally
from bridge.source_clock import CutOver, newest, next_cursor, to_stamp
from bridge.sources import Page, request_rate
from perkamo_core.db import WalCheckpointer

TX_ORDER = ("transaction_dt", "transaction_id")


class TransactionPhases(PhaseBase):
    """Transactions: read, map, deliver (see the module docstring)."""

    def _customer_ids(self) -> dict[str, str]:
        """Perkville user id → customer id, from the id map (``records.customer_ids``)."""
        known = {e.perkville_user_id: e.customer_id for e in self.state.id_map.iter_all(self.business)}
        return customer_ids(known, self.config.id_strategy)

    def _transactions_query(
        self,
        transaction_window: tuple[datetime | None, datetime | None],
        *,
        checkpointed: bool,
        last_mod_window: tuple[datetime | None, datetime | None] | None = None,
        status: str | None = None,
    ) -> TransactionQuery:
        """The transactions a phase reads (from the checkpoint's offset when ``checkpointed``)."""
        since, until = transaction_window
        filters: dict[str, Any] = {"transaction_dt_gte": since, "transaction_dt_lt": until}
        order: tuple[str, ...] = TX_ORDER
        if last_mod_window is not None:
            filters["last_mod_dt_gte"], filters["last_mod_dt_lt"] = last_mod_window
            order = ("last_mod_dt", "transaction_id")
        if status is not None:
            filters["transaction_status"] = status
        offset = self._checkpoint.offset if checkpointed and self._checkpoint is not None else 0
        return TransactionQuery(self.business, order, filters, offset)

    def _phase_transactions(
        self,
        *,
        transaction_window: tuple[datetime | None, datetime | None],
        checkpointed: bool = False,
        last_mod_window: tuple[datetime | None, datetime | None] | None = None,
        sync_resource: str | None = None,
        label: str = "transactions",
        status: str | None = None,
        cutover: CutOver | None = None,
        pages: Iterator[Page] | None = None,
        cursor_field: str = "last_mod_dt",
    ) -> None:
        """Read, map and deliver one transactions query; ``pages``: its feed, already opened.
        ``sync_resource``'s cursor follows ``cursor_field`` (``last_mod_dt`` with a
        ``last_mod_window``, or ``transaction_dt``)."""
        self.progress.phase(label)
        customer_ids = self._customer_ids()
        if pages is None:
            query = self._transactions_query(
                transaction_window, checkpointed=checkpointed, last_mod_window=last_mod_window, status=status
            )
            # Late voids read single rows from the source: no second reader in the meantime.
            by_date = sync_resource is not None and cursor_field == "transaction_dt"
            feed = self.feed if cutover is None and not by_date else SequentialFeed(depth=0)
            pages = feed.pages(self.source, query)
        mapped = self._mapped_pages(pages, customer_ids, with_cursor=last_mod_window is not None)
        if cutover is not None:
            mapped = self._with_late_voids(mapped, cutover, customer_ids)
        if sync_resource is not None and cursor_field == "transaction_dt":
            mapped = with_voided_originals(
                mapped,
                customer_ids,
                refetch=lambda record_id: self._refetch("transaction", record_id, {}),
                business=self.business,
                timezone=self.config.timezone,
            )
        try:
            by_date = sync_resource is not None and cursor_field == "transaction_dt"
            self._deliver_pages(mapped, label, checkpointed, last_mod_window, sync_resource, by_date=by_date)
        finally:
            close_quietly(mapped)  # a generator: stop the feed

    def _mapped_pages(
        self,
        pages: Iterable[Page],
        customer_ids: Mapping[str, str] | None,
        *,
        with_cursor: bool,
    ) -> Iterator[tuple[Page, list[PageRecord]]]:
        """Pages with their mapped records, in order."""
        try:
            for page in pages:
                yield page, map_transaction_rows(
                    page.objects, self.business, self.config.timezone, customer_ids, with_cursor
                )
        finally:
            close_quietly(pages)

    def _with_late_voids(
        self,
        mapped: Iterator[tuple[Page, list[PageRecord]]],
        cutover: CutOver,
        customer_ids: Mapping[str, str] | None,
    ) -> Iterator[tuple[Page, list[PageRecord]]]:
        return with_late_voids(
            mapped,
            cutover,
            customer_ids,
            refetch=lambda record_id: self._refetch("transaction", record_id, {}),
            business=self.business,
            timezone=self.config.timezone,
        )

    def _deliver_pages(
        self,
        mapped: Iterator[tuple[Page, list[PageRecord]]],
        label: str,
        checkpointed: bool,
        last_mod_window: tuple[datetime | None, datetime | None] | None,
        sync_resource: str | None,
        *,
        by_date: bool = False,
    ) -> None:
        high_water: datetime | None = None
        tz = self.config.timezone
        ordered = True
        before = self._cursors_before.get(sync_resource) if sync_resource else None
        # SQLite: the WAL is checkpointed by a thread, not inside the page commits.
        with WalCheckpointer(self.state.engine):
            for page, records in mapped:
                if last_mod_window is not None:
                    ordered = ordered and page.ordered
                    high_water = newest([high_water, *(r.cursor_value for r in records)])
                elif by_date:
                    ordered = ordered and page.ordered
                    high_water = newest([high_water, *(to_stamp(r.get("transaction_dt"), tz) for r in page.objects)])
                if sync_resource:
                    if high_water is not None:
                        self._read_newest[sync_resource] = high_water
                    self._ordered[sync_resource] = ordered
                size = len(page.objects)
                next_offset = page.next_offset
                # In last_mod_dt order the cursor follows the pages; otherwise it moves at the end.
                moved = next_cursor(before, high_water, None, ordered=True) if ordered else None
                state = self._transaction_state(
                    checkpointed=checkpointed,
                    next_offset=next_offset,
                    cursor=(sync_resource, moved) if sync_resource and moved != before else None,
                )
                self._deliver(records, "transaction", state)
                self.progress.advance(
                    label,
                    size,
                    total=page.meta.get("total_count"),
                    counts=self._counts,
                    pace=request_rate(self.source),
                )
                if self.stop.is_set():
                    return
        self.progress.done(label, None)

    def _transaction_state(
        self, *, checkpointed: bool, next_offset: int, cursor: tuple[str, datetime | None] | None
    ) -> WriteState:
        """A transactions page's checkpoint offset or sync cursor, committed with its events."""

        def write(conn: Connection, _page: PageTally) -> None:
            if checkpointed and self._checkpoint is not None:
                self._checkpoint = self._checkpoint.advanced(next_offset)
                checkpoints.save(self.state, conn, self.business, self._checkpoint, self._run_id)
            if cursor is not None and cursor[1] is not None:
                self._set_cursor(conn, cursor[0], cursor[1])

        return write
