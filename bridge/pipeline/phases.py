"""The phases of an import run, in order: reference data → users → members → transactions.

``Phases`` is mixed into ``Pipeline``, which supplies the run (lease, run log, counters) and the
delivery (``_deliver``: one database transaction per page). Here: what each phase reads, how its
rows are mapped, and what state (checkpoint, cursor, id map) commits with each page. Every
bound, cut-over and cursor comes from the source's own stamps (its clock, read in
``PERKVILLE_TIMEZONE``), never from this machine's clock: see ``bridge.source_clock``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from bridge.errors import SourceError
from bridge.pipeline import checkpoint as checkpoints
from bridge.pipeline.checkpoint import BackfillCheckpoint
from bridge.pipeline.late_voids import with_late_voids, with_voided_originals
from bridge.pipeline.options import Mode, PipelineConfig, RunOptions, RunSummary
from bridge.pipeline.pages import (
    PageFeed,
    ReadAhead,
    SequentialFeed,
    TransactionQuery,
    close_quietly,
    prefetch,
)
from bridge.pipeline.records import (
    ExternalMembers,
    PageRecord,
    customer_ids,
    map_connections,
    map_transaction_rows,
)
from bridge.pipeline.tally import PageTally
from bridge.probe.reach import assess, referenced_locations, refuse_partial
from bridge.progress import Progress
from bridge.signposts import Signposts, cursor_field, find_cutover, read_signposts
from bridge.source_clock import (
    SYNC_RESOURCES,
    CutOver,
    lookback_start,
    newest,
    next_cursor,
    to_stamp,
)
from bridge.sources import Page, PerkvilleSource, request_rate
from bridge.state import RunCounts, StateStore
from bridge.targets import Target
from bridge.tiers import unknown_level_note
from mapping.records import parse_location
from perkamo_core.db import WalCheckpointer

TX_ORDER = ("transaction_dt", "transaction_id")

WriteState = Callable[[Connection, PageTally], None]
"""What commits with a page besides its events: checkpoint, cursor, id map."""


class Phases:
    """The phases of a backfill or sync pass (see the module docstring)."""

    state: StateStore
    source: PerkvilleSource
    target: Target
    config: PipelineConfig
    progress: Progress
    stop: threading.Event
    business: str
    feed: PageFeed
    early_signposts: Callable[[], Signposts | None] | None
    _ahead: ReadAhead
    _run_id: int
    _counts: RunCounts
    _locations: dict[str, Any]
    _members: ExternalMembers
    _checkpoint: BackfillCheckpoint | None
    _signposts: dict[str, datetime | None]
    _read_newest: dict[str, datetime]
    _ordered: dict[str, bool]
    _cursors_before: dict[str, datetime | None]
    _clock_details: dict[str, Any]

    # Supplied by Pipeline.
    def _deliver(self, records: list[PageRecord], kind: str, write_state: WriteState) -> None:
        raise NotImplementedError

    def _fence(self, conn: Connection) -> None:
        raise NotImplementedError

    def _refetch(self, kind: str, record_id: str, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def _run_phases(self, options: RunOptions, summary: RunSummary) -> None:
        # Every bound, cut-over and cursor comes from the source's own stamps (its clock, read in
        # PERKVILLE_TIMEZONE), never from this machine's clock: see bridge.source_clock.
        self._signposts = self._read_signposts()
        upper: datetime | None = None
        self._checkpoint = None
        if options.kind == "backfill" and not options.windowed:
            # No upper bound: rows recorded while it runs come after the ones it has read in
            # (transaction_dt, id) order, so a resumed offset still points at the same row.
            self._checkpoint = self._load_checkpoint(options)
            cutover = self._checkpoint.cutover
            if self._checkpoint.resumed:
                note = f"resuming the unfinished backfill from transaction offset {self._checkpoint.offset}"
                summary.notes.append(note)
                self.progress.note(note)
        else:
            upper = options.until
            cutover = self._cutover() if options.kind == "backfill" and options.mode == "balance" else None
        self._open_dead_letters = self.state.dead_letters.open_count(self.business)
        self._unknown_levels: Counter[str] = Counter()
        self._run_backfill_or_sync(options, summary, upper, cutover)
        summary.unknown_levels = dict(sorted(self._unknown_levels.items()))
        tier_note = unknown_level_note(summary.unknown_levels)
        if tier_note is not None:
            summary.notes.append(tier_note)
            self.progress.note(tier_note)

    def _run_backfill_or_sync(
        self,
        options: RunOptions,
        summary: RunSummary,
        upper: datetime | None,
        cutover: CutOver | None,
    ) -> None:
        since = options.since
        if options.mode == "balance" and cutover is not None:
            # Rows of the cut-over's last second recorded after it are left to sync.
            since = max(since, cutover.at) if since else cutover.at
        if options.kind == "sync":
            self._phase_reference()
            if not self.stop.is_set():
                self._phase_sync(options, summary)
            return
        checkpointed = self._checkpoint is not None
        members = self._checkpoint is None or not self._checkpoint.members_done
        early: Iterator[Page] | None = None
        try:
            # Every list this backfill reads is opened now, in the order the phases consume
            # them, so the request budget is used from the start; the pages wait in buffers
            # (transactions are mapped only once the members are known).
            self._open_reference()
            if members:
                self._ahead.open("users", self._users_pages(None))
                self._ahead.open("external-members", self._external_member_pages())
                self._ahead.open("connections", self._connection_pages(None))
            if cutover is None:
                early = self.feed.pages(
                    self.source, self._transactions_query((since, upper), checkpointed=checkpointed)
                )
            self._phase_reference()
            if self.stop.is_set():
                return
            if members:
                self._check_reach(options)
                self._phase_users(None)
                self._load_external_members()
                if self.stop.is_set():
                    return
                self._phase_connections(None, mode=options.mode, cutover=cutover.at if cutover else None)
                if self._checkpoint is not None:
                    self._save_checkpoint(self._checkpoint.with_members_done())
                if self.stop.is_set():
                    return
            pages, early = early, None
            self._phase_transactions(transaction_window=(since, upper), checkpointed=checkpointed, pages=pages)
        finally:
            self._ahead.close()
            close_quietly(early)
        if self.stop.is_set():
            return
        if self._checkpoint is not None:
            self._seed_sync_cursors(self._checkpoint, cutover, summary)

    def _check_reach(self, options: RunOptions) -> None:
        """Stop a backfill before it writes a member when the staff account sees only some
        locations: the locations listed against those the first page of connections points to
        (read ahead already: no extra request). ``perkbridge probe`` checks every page."""
        first = self._ahead.peek("connections")
        reach = assess(list(self._locations), referenced_locations(first.objects if first else []))
        note = refuse_partial(reach, options.allow_partial)
        if note is not None:
            self.progress.note(note)

    def _seed_sync_cursors(
        self, checkpoint: BackfillCheckpoint, cutover: CutOver | None, summary: RunSummary
    ) -> None:
        """A finished backfill: the sync cursors start at the signposts of its first attempt.

        Everything the source held then was read (some of it later, as it was by then); what
        changed since carries a newer stamp, which sync reads.  A checkpoint written by an
        earlier version has no signposts (its bounds were on this machine's clock): the sync
        cursors are removed instead, so the next sync reads everything once.
        """
        signposts = checkpoint.signposts
        seeded: dict[str, str] = {}
        with self.state.engine.begin() as conn:
            self._fence(conn)
            self.state.cursors.delete(conn, self.business, checkpoints.CURSOR)
            for resource in SYNC_RESOURCES:
                value = signposts.get(resource) if signposts is not None else None
                if value is not None:
                    self._set_cursor(conn, resource, datetime.fromisoformat(value))
                    seeded[resource] = value
                elif signposts is None:
                    self.state.cursors.delete(conn, self.business, resource)
            if cutover is not None:
                # Sync must never replay what the opening balances already carry.
                self.state.cursors.set(conn, self.business, "cutover", cutover.to_text(), self._run_id)
        self._clock_details["cursors"] = seeded
        if signposts is None:
            note = "the resumed backfill began under an older version: the next sync reads everything once"
            summary.notes.append(note)
            self.progress.note(note)

    def _load_checkpoint(self, options: RunOptions) -> BackfillCheckpoint:
        """The unfinished backfill of this mode, or a new checkpoint (stored at once)."""
        saved = checkpoints.load(self.state, self.business, options.mode)
        if saved is not None:
            return saved
        fresh = BackfillCheckpoint(
            mode=options.mode,
            cutover=self._cutover() if options.mode == "balance" else None,
            signposts={r: v.isoformat() if v is not None else None for r, v in self._signposts.items()},
        )
        self._save_checkpoint(fresh)
        return fresh

    def _save_checkpoint(self, checkpoint: BackfillCheckpoint) -> None:
        with self.state.engine.begin() as conn:
            self._fence(conn)
            checkpoints.save(self.state, conn, self.business, checkpoint, self._run_id)
        self._checkpoint = checkpoint

    def _read_signposts(self) -> dict[str, datetime | None]:
        """The source's newest change per resource as the run starts (``signposts``), recorded on
        the cursors for status's lag and in the run log."""
        early = self.early_signposts() if self.early_signposts is not None else None
        read = read_signposts(self.source, self.business, self.config.timezone, earlier=early)
        found = {resource: stamp for resource, (_field, stamp) in read.items()}
        seen = {r: v.isoformat() for r, v in found.items() if v is not None}
        if seen:
            with self.state.engine.begin() as conn:
                self._fence(conn)
                for resource, value in seen.items():
                    self.state.cursors.observe(conn, self.business, resource, value)
        self._clock_details["signposts"] = seen
        return found

    def _cutover(self) -> CutOver:
        return find_cutover(self.source, self.business, self.config.timezone, self._signposts)

    def _open_reference(self) -> None:
        """Start reading the three reference lists at once (they wait on the network, not on
        each other); ``_phase_reference`` takes them in order."""
        self._ahead.open("businesses", self.source.iter_businesses())
        self._ahead.open("locations", self.source.iter_locations(self.business))
        self._ahead.open("perks", self.source.iter_perks(self.business))

    def _users_pages(self, since: datetime | None) -> Iterator[Page]:
        return self.source.iter_users(business=self.business, last_mod_dt_gte=since)

    def _external_member_pages(self) -> Iterator[Page]:
        return self.source.iter_external_members(self.business)

    def _connection_pages(self, since: datetime | None) -> Iterator[Page]:
        return self.source.iter_connections(self.business, last_mod_dt_gte=since)

    def _ahead_or(self, name: str, opener: Callable[[], Iterable[Page]]) -> prefetch[Page]:
        """The list read ahead under ``name``, else a prefetch of ``opener()`` opened now."""
        return self._ahead.take(name) or prefetch(opener())

    def _phase_reference(self) -> None:
        self.progress.phase("reference")
        if "businesses" not in self._ahead:
            self._open_reference()  # a sync: opened here, still all three at once
        found = False
        with closing(self._ahead_or("businesses", self.source.iter_businesses)) as pages:
            for page in pages:
                for raw in page.objects:
                    bid = raw.get("business_id", raw.get("id"))
                    if bid is not None and str(bid) == str(self.business):
                        found = True
                self.progress.advance("reference", len(page.objects))
        if not found:
            raise SourceError(
                f"business {self.business} is not visible to this Perkville account; check "
                "PERKVILLE_BUSINESS_ID (or --business) and the account's staff access"
            )
        perks = 0
        with closing(self._ahead_or("locations", lambda: self.source.iter_locations(self.business))) as pages:
            for page in pages:
                for raw in page.objects:
                    parsed = parse_location(raw, timezone=self.config.timezone)
                    if parsed.record is not None:
                        self._locations[parsed.record.location_id] = parsed.record
                self.progress.advance("reference", len(page.objects))
        with closing(self._ahead_or("perks", lambda: self.source.iter_perks(self.business))) as pages:
            for page in pages:
                perks += len(page.objects)
                self.progress.advance("reference", len(page.objects))
        self.progress.done("reference", f"{len(self._locations)} locations, {perks} perks")

    def _phase_users(self, since: datetime | None) -> set[str]:
        """Stage users (raw) for the connections phase; returns the ids seen."""
        self.progress.phase("users")
        seen: set[str] = set()
        # The next page is requested while this one is staged (``prefetch``).
        pages = self._ahead_or("users", lambda: self._users_pages(since))
        try:
            self._stage_users(pages, seen)
        finally:
            close_quietly(pages)
        self.progress.done("users", f"{len(seen)} users")
        return seen

    def _stage_users(self, pages: Iterable[Page], seen: set[str]) -> None:
        for page in pages:
            batch: dict[str, Mapping[str, Any]] = {}
            for raw in page.objects:
                uid = raw.get("user_id")
                if uid is None:
                    continue
                batch[str(uid)] = raw
            self._note_read("users", page.objects)
            if batch:
                with self.state.engine.begin() as conn:
                    self.state.users.put(conn, self.business, batch)
            seen.update(batch)
            self.progress.advance("users", len(page.objects), total=page.meta.get("total_count"))
            if self.stop.is_set():
                break

    def _load_external_members(self) -> None:
        """External member records, kept for the members phase (empty without the External
        Member API: the connector then warns once and yields nothing)."""
        pages = self._ahead_or("external-members", self._external_member_pages)
        try:
            self._members = ExternalMembers(raw for page in pages for raw in page.objects)
        finally:
            close_quietly(pages)

    def _phase_connections(
        self,
        since: datetime | None,
        *,
        mode: Mode,
        cutover: datetime | None,
        pages: Iterator[Page] | None = None,
    ) -> set[str]:
        """Identify every connected member; returns the Perkville user ids handled.

        Only the phase's own read (``pages`` None) counts towards the connections cursor.
        """
        self.progress.phase("members")
        handled: set[str] = set()
        tracked = pages is None
        if pages is None:
            # The next page is requested while this one is mapped and delivered.
            pages = self._ahead_or("connections", lambda: self._connection_pages(since))
        try:
            for page in pages:
                if tracked:
                    self._note_read("connections", page.objects)
                records = self._map_connections(page.objects, mode=mode, cutover=cutover)
                handled.update(r.entry.perkville_user_id for r in records if r.entry is not None)
                self._deliver(records, "connection", self._connection_state())
                self.progress.advance(
                    "members", len(page.objects), total=page.meta.get("total_count"), counts=self._counts
                )
                if self.stop.is_set():
                    return handled
        finally:
            close_quietly(pages)
        self.progress.done("members", f"{len(handled)} members")
        return handled

    def _map_connections(
        self, rows: Sequence[Mapping[str, Any]], *, mode: Mode, cutover: datetime | None
    ) -> list[PageRecord]:
        return map_connections(
            rows,
            config=self.config,
            users_of=lambda ids: self.state.users.get_many(self.business, ids),
            known_of=lambda ids: self.state.id_map.get_many(self.business, ids),
            members=self._members,
            locations=self._locations,
            mode=mode,
            cutover=cutover,
            unknown_levels=getattr(self, "_unknown_levels", None),
        )

    def _connection_state(self) -> WriteState:
        """The id-map rows of a members page (only of the records that went through)."""

        def write(conn: Connection, page: PageTally) -> None:
            entries = [r.entry for r in page.delivered if r.entry is not None]
            if entries:
                self.state.id_map.put(conn, entries)

        return write

    def _note_read(self, resource: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keep the newest ``last_mod_dt`` read of ``resource`` (its cursor's candidate)."""
        tz = self.config.timezone
        found = newest([to_stamp(row.get("last_mod_dt"), tz) for row in rows])
        before = self._read_newest.get(resource)
        if found is not None and (before is None or found > before):
            self._read_newest[resource] = found

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

    def _set_cursor(self, conn: Connection, resource: str, value: datetime) -> None:
        """Store a sync cursor with the source's newest change this run saw (status's lag)."""
        seen = self._signposts.get(resource)
        self.state.cursors.set(
            conn, self.business, resource, value.isoformat(), self._run_id,
            source_newest=(max(seen, value) if seen is not None else value).isoformat(),
        )

    def _phase_sync(self, options: RunOptions, summary: RunSummary) -> None:
        overlap = timedelta(seconds=self.config.overlap_seconds)
        entries = {r: self.state.cursors.entry(self.business, r) for r in SYNC_RESOURCES}
        legacy = any(e is not None and e.source_newest is None for e in entries.values())
        if legacy:
            # Written by an earlier version from this machine's clock: they may stand past rows
            # the source stamped earlier.  Read everything once (idempotent ids) and start over.
            entries = dict.fromkeys(SYNC_RESOURCES)
            note = "the sync cursors were on this machine's clock (older version): this pass reads everything once"
            summary.notes.append(note)
            self.progress.note(note)
        elif entries["transactions"] is None:
            note = "no sync cursor yet: this first pass reads everything (like a backfill)"
            summary.notes.append(note)
            self.progress.note(note)
        self._cursors_before = {
            r: datetime.fromisoformat(e.value) if e is not None else None for r, e in entries.items()
        }

        def window(resource: str) -> datetime | None:
            value = self._cursors_before[resource]
            return None if value is None else value - overlap

        users_since = window("users")
        changed_users = self._phase_users(users_since)
        # Members re-identified here get the same traits as in a backfill (membership traits
        # come from the external member records), else their traits hash flips on every pass.
        self._load_external_members()
        if self.stop.is_set():
            return
        handled = self._phase_connections(window("connections"), mode=options.mode, cutover=None)
        if self.stop.is_set():
            return
        # A user whose profile changed but whose connection did not: re-identify it too.
        if users_since is not None:
            for uid in sorted(changed_users - handled):
                pages = self.source.iter_connections(self.business, user_id=uid)
                self._phase_connections(None, mode=options.mode, cutover=None, pages=pages)
        tx_since = window("transactions")
        cutover_text = self.state.cursors.get(self.business, "cutover")
        cutover = CutOver.from_text(cutover_text) if cutover_text else None
        by_date = cursor_field(self.source, "transactions") == "transaction_dt"
        if by_date:
            # The probed schema lists no last_mod_dt filter on transactions: the cursor is the
            # newest transaction_dt read, and every pass reads again lookback_days before it
            # (voids and late rows of that span included; their ids make that harmless).
            before = self._cursors_before["transactions"]
            floor = cutover.floor if cutover else None
            since = lookback_start(before, self.config.lookback_days, floor) if before is not None else floor
            self._phase_transactions(
                transaction_window=(since, None), sync_resource="transactions", cutover=cutover,
                cursor_field="transaction_dt",
            )
        else:
            self._phase_transactions(
                transaction_window=(cutover.floor if cutover else None, None),
                last_mod_window=(tx_since, None),
                sync_resource="transactions",
                cutover=cutover,
            )
        if self.stop.is_set():
            return
        signpost = self._signposts.get("transactions")
        if not by_date and tx_since is not None and self.config.lookback_days > 0 and signpost is not None:
            self._phase_transactions(
                transaction_window=(
                    lookback_start(signpost, self.config.lookback_days, cutover.at if cutover else None),
                    None,
                ),
                label="late voids",
                status="VOID",
            )
        if self.stop.is_set():
            return
        moved: dict[str, str] = {}
        with self.state.engine.begin() as conn:
            self._fence(conn)
            for resource in SYNC_RESOURCES:
                value = next_cursor(
                    self._cursors_before[resource],
                    self._read_newest.get(resource),
                    self._signposts.get(resource),
                    ordered=self._ordered.get(resource, False),
                )
                if value is not None:
                    self._set_cursor(conn, resource, value)
                    moved[resource] = value.isoformat()
                elif legacy:
                    self.state.cursors.delete(conn, self.business, resource)
        self._clock_details["cursors"] = moved
