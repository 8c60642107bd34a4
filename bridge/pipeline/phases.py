"""The phases of an import run, in order: reference data → users → members → transactions.

``Phases`` is mixed into ``Pipeline``, which supplies the run (lease, run log, counters) and the
delivery (``_deliver``: one database transaction per page). Here: the order of the phases of a
backfill and of a sync pass, the signposts, the checkpoint and the cursors they seed. What each
phase reads, how its rows are mapped and what commits with each page: ``member_phases.py``
(reference data, users, members) and ``transaction_phases.py`` (transactions). Every
bound, cut-over and cursor comes from the source's own stamps (its clock, read in
``PERKVILLE_TIMEZONE``), never from this machine's clock: see ``bridge.source_clock``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

from bridge.pipeline import checkpoint as checkpoints
from bridge.pipeline.checkpoint import BackfillCheckpoint
from bridge.pipeline.member_phases import MemberPhases
from bridge.pipeline.options import RunOptions, RunSummary
from bridge.pipeline.pages import close_quietly
from bridge.pipeline.transaction_phases import TransactionPhases
from bridge.probe.reach import assess, referenced_locations, refuse_partial
from bridge.signposts import cursor_field, find_cutover, read_signposts
from bridge.source_clock import SYNC_RESOURCES, CutOver, lookback_start, next_cursor
from bridge.sources import Page
from bridge.tiers import unknown_level_note


class Phases(MemberPhases, TransactionPhases):
    """The phases of a backfill or sync pass, in order (see the module docstring)."""

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
        self._unknown_levels = Counter()
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
