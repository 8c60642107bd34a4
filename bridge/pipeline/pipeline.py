"""The import run: one business, one target, under the business's import lease.

``Pipeline.run`` takes the lease, opens the run log entry and runs the phases (``phases.py``);
``retry_dead_letters`` maps and delivers open dead letters again. Both deliver through
``_deliver``: one page's identify calls and events, its counts (``tally``), dead letters and
state (checkpoint, cursor, id map), committed by the target's ``commit`` callback — inside the
embedded core's transaction (exactly-once) or after every remote acknowledgement
(effectively-once with stable ``transaction_id``s).

Cursors (``bridge_cursors``; values ISO-8601 or JSON), every time in them in the source's own
clock (``bridge.source_clock``), never this machine's:

- ``backfill`` — the checkpoint of an unfinished backfill (``checkpoint.BackfillCheckpoint``).
  A new backfill resumes from it; a finished backfill deletes it and sets the sync cursors
  below to its signposts.
- ``users``, ``connections``, ``transactions`` — ``last_mod_dt`` high-water marks of incremental
  sync: the newest stamp actually read (``source_clock.next_cursor``). A pass reads from
  ``cursor − overlap`` on. Transactions additionally re-read the look-back window
  (``transaction_dt`` within ``lookback_days`` of the source's newest change) for rows that
  turned ``VOID``, so late voids are reversed even if Perkville did not touch ``last_mod_dt``.
  Each row also keeps the source's newest change the last run saw (``source_newest``): status's
  lag is the difference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bridge.journal import LogCapture
from bridge.leased import leased, recorded
from bridge.pipeline import checkpoint as checkpoints
from bridge.pipeline.options import (
    DIRECTION,
    IMPORT_KINDS,
    PipelineConfig,
    RunOptions,
    RunSummary,
)
from bridge.pipeline.pages import PageFeed, ReadAhead, SequentialFeed
from bridge.pipeline.phase_base import WriteState
from bridge.pipeline.phases import Phases
from bridge.pipeline.records import ExternalMembers, PageRecord, map_transaction_rows
from bridge.pipeline.tally import PageTally, tally
from bridge.probe.reach import Reach, refuse_partial
from bridge.progress import NullProgress, Progress, RecordedProgress, TeeProgress
from bridge.redaction import redact_message
from bridge.reissue import reissue_page
from bridge.signposts import Signposts
from bridge.sources import PerkvilleSource, request_rate, request_stats, stats_since
from bridge.state import LeaseKeeper, RunCounts, StateStore, utcnow
from bridge.targets import Delivery, Target
from connectors.perkville.errors import NotFound, RequestRejected

RETRY_CHUNK = 100
"""Dead letters mapped and delivered together by a retry."""


class Pipeline(Phases):
    """Runs backfills, sync passes and dead-letter retries of one business into one target."""

    _recorder: RecordedProgress | None
    _journal: LogCapture | None

    def __init__(
        self,
        *,
        state: StateStore,
        source: PerkvilleSource,
        target: Target,
        config: PipelineConfig,
        progress: Progress | None = None,
        clock: Callable[[], datetime] = utcnow,
        stop: threading.Event | None = None,
        feed: PageFeed | None = None,
        early_signposts: Callable[[], Signposts | None] | None = None,
    ) -> None:
        """``early_signposts``: the signposts this run read while it started up (``bridge.opening``),
        waited for when the run needs them; None from it: the run reads them itself."""
        self.state = state
        self.source = source
        self.target = target
        self.config = config
        self.progress = progress or NullProgress()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.feed = feed or SequentialFeed()
        self.early_signposts = early_signposts
        self.business = config.business
        self._locations = {}
        self._members = ExternalMembers()
        self._keeper: LeaseKeeper | None = None
        self._run_id = 0
        self._now = clock()
        self._reset()

    # ------------------------------------------------------------------------------ entry

    def run(self, options: RunOptions) -> RunSummary:
        """One run under the (business, import) lease; raises ``LeaseHeldError`` if busy."""
        with leased(
            self.state, self.business, DIRECTION, lease_seconds=self.config.lease_seconds,
            wait=options.wait, timeout=options.wait_timeout,
        ) as keeper:
            return self.run_leased(options, keeper)

    def run_leased(self, options: RunOptions, keeper: LeaseKeeper) -> RunSummary:
        """One run under a lease the caller holds (``reconcile --repair`` syncs under its own)."""
        started = time.monotonic()
        self._reset()
        self._keeper = keeper
        if options.kind == "backfill" and not options.force:
            checkpoints.check_mode(self.state, self.business, options.mode)
        self._now = self.clock()
        self._run_id = self.state.runs.start(
            self.business,
            direction=DIRECTION,
            kind=options.kind,
            mode=options.mode,
            target=self.config.target_kind,
            owner=keeper.owner,
            details=self._window_details(options),
            started_at=self._now,
        )
        summary = RunSummary(run_id=self._run_id, status="running", counts=self._counts)
        with self._watched(), recorded(
            self._run_id, lambda status, error: self._finish(summary, status, error, started),
            what="run", secrets=self.config.secrets,
        ):
            if options.kind == "backfill":
                self._check_recorded_reach(options, summary)
            note = self.target.ensure_program()
            summary.notes.append(note)
            self.progress.note(note)
            self._run_phases(options, summary)
        self._finish(summary, "stopped" if self.stop.is_set() else "succeeded", None, started)
        return summary

    def _check_recorded_reach(self, options: RunOptions, summary: RunSummary) -> None:
        """What the business's last ``perkbridge probe`` found about the staff account's reach:
        a partial one stops the backfill before anything is written (``--allow-partial``)."""
        recorded = self.state.probes.latest(self.business)
        raw = recorded.report.get("reach") if recorded is not None else None
        if isinstance(raw, Mapping):
            note = refuse_partial(Reach.from_json(raw), options.allow_partial)
            if note is not None:
                summary.notes.append(note)
                self.progress.note(note)

    def retry_dead_letters(
        self,
        *,
        reason: str | None = None,
        ids: Sequence[int] | None = None,
        wait: bool = False,
    ) -> RunSummary:
        """Map and deliver the open dead letters again (idempotent ids); fixed ones become resolved.

        A record that fails again stays open with ``attempts`` + 1 and its newest reason.
        """
        started = time.monotonic()
        self._reset()
        with leased(
            self.state, self.business, DIRECTION, lease_seconds=self.config.lease_seconds, wait=wait
        ) as keeper:
            self._keeper = keeper
            self._run_id = self.state.runs.start(
                self.business,
                direction=DIRECTION,
                kind="retry",
                target=self.config.target_kind,
                owner=keeper.owner,
                details={"reason": reason, "ids": list(ids or [])},
            )
            summary = RunSummary(run_id=self._run_id, status="running", counts=self._counts)
            with self._watched(), recorded(
                self._run_id, lambda status, error: self._finish(summary, status, error, started),
                what="run", secrets=self.config.secrets,
            ):
                summary.notes.append(self.target.ensure_program())
                self._retry(reason, ids)
            self._finish(summary, "succeeded", None, started)
            return summary

    @contextmanager
    def _watched(self) -> Iterator[None]:
        """While the block runs, its progress also goes to the run's row (``RecordedProgress``,
        for the dashboard of another process) and its warning and error log lines are kept for
        the row's ``details.log`` (``LogCapture``); ``_finish`` writes both."""
        outer = self.progress
        self._recorder = RecordedProgress(self.state.runs, self._run_id)
        self._journal = LogCapture(self.config.secrets)
        self.progress = TeeProgress(outer, self._recorder)
        try:
            with self._journal.attached():
                yield
        finally:
            self.progress = outer

    def _retry(self, reason: str | None, ids: Sequence[int] | None) -> None:
        letters = [
            d
            for d in self.state.dead_letters.list(self.business, reason=reason, ids=ids)
            if d.kind in IMPORT_KINDS  # write-back letters are retried by write-back
        ]
        self._open_dead_letters = len(letters)
        if any(d.kind == "connection" for d in letters):
            self._phase_reference()
        customer_ids = self._customer_ids()
        self.progress.phase("retry")
        for start in range(0, len(letters), RETRY_CHUNK):
            chunk = letters[start : start + RETRY_CHUNK]
            by_kind: dict[str, list[Any]] = {}
            for letter in chunk:
                by_kind.setdefault(letter.kind, []).append(letter)
            for kind, group in by_kind.items():
                raws = [self._refetch(kind, g.record_id, g.raw) for g in group]
                write: WriteState
                if kind == "connection":
                    records = self._map_connections(raws, mode="history", cutover=None)
                    write = self._connection_state()
                else:
                    records = map_transaction_rows(
                        raws, self.business, self.config.timezone, customer_ids, False
                    )
                    write = _no_state
                for record, letter in zip(records, group, strict=True):
                    record.record_id = letter.record_id
                self._deliver(records, kind, write)
            self.progress.advance("retry", len(chunk), total=len(letters), counts=self._counts)
        self.progress.done("retry", None)

    def _refetch(self, kind: str, record_id: str, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        """The record as Perkville has it now (it may have been fixed at the source), else ``stored``."""
        resource = {"transaction": "transactions", "connection": "connections"}.get(kind)
        if resource is None or not record_id.isdigit():
            return stored
        try:
            fresh = self.source.request("GET", f"{resource}/{record_id}/")
        except (NotFound, RequestRejected):
            return stored
        return fresh if isinstance(fresh, Mapping) and fresh else stored

    def _reset(self) -> None:
        """Fresh counters for a new run of this (reusable) pipeline."""
        self._stats_before = request_stats(self.source)  # the client may outlive the run
        self._counts = RunCounts()
        self._kinds: dict[str, RunCounts] = {}
        self._open_dead_letters = 0
        self._checkpoint = None
        self._signposts = {}
        self._read_newest = {}  # newest last_mod_dt read per resource
        self._ordered = {}  # whether that resource was read in last_mod_dt order
        self._cursors_before = {}
        self._clock_details = {}
        self._applied_to: set[str] = set()
        self._ahead = ReadAhead()
        self._reissues: bool | None = None  # whether a rollback reversed any of the business's ids
        self._recorder = None
        self._journal = None

    def _window_details(self, options: RunOptions) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if options.since:
            details["since"] = options.since.isoformat()
        if options.until:
            details["until"] = options.until.isoformat()
        return details

    def _finish(self, summary: RunSummary, status: str, error: str | None, started: float) -> None:
        summary.status = status
        summary.seconds = time.monotonic() - started
        summary.kinds = {k: v.as_dict() for k, v in self._kinds.items()}
        summary.applied_to = frozenset(self._applied_to)
        summary.request_rate = request_rate(self.source)
        pace: dict[str, Any] = {} if summary.request_rate is None else {"request_rate": summary.request_rate}
        if perkville := stats_since(self.source, self._stats_before):
            pace["perkville"] = perkville  # this run's requests, 429s and answers by status class
        if error is not None:
            summary.error = redact_message(error, self.config.secrets)
        watched: dict[str, Any] = {}
        if self._recorder is not None:
            watched["progress"] = self._recorder.snapshot()
        if self._journal is not None:
            watched["log"] = self._journal.lines()
        try:
            self.state.runs.finish(
                self._run_id,
                status,
                error=summary.error,
                secrets=self.config.secrets,
                details={
                    "kinds": summary.kinds, "notes": summary.notes, **self._clock_details, **pace, **watched,
                },
            )
        except Exception:  # noqa: BLE001 - the database may be what failed; the caller reports
            pass

    # -------------------------------------------------------------------------- delivery

    def _fence(self, conn: Connection) -> None:
        if self._keeper is not None:
            self._keeper.fence(conn)

    def _deliver(self, records: list[PageRecord], kind: str, write_state: WriteState) -> None:
        """Send one page and commit its outcome, state and counts in one database transaction.

        The target may run ``commit`` again after rolling the page back (a conflict): each run
        recounts from the outcomes it is given, and the run's counters take the page only once
        the target returns.
        """
        identifies = [r.identify for r in records if r.identify is not None and r.problem is None]
        events = [e for r in records if r.problem is None for e in r.events]
        events, bases = self._reissued(events)
        space = getattr(self.target, "space", None) if self.target.kind == "embedded" else None
        committed: list[PageTally] = []

        def commit(
            conn: Connection, id_outcomes: Sequence[Delivery], ev_outcomes: Sequence[Delivery]
        ) -> None:
            committed.clear()
            self._fence(conn)
            page = tally(records, id_outcomes, ev_outcomes)
            for letter in page.dead_letters:
                self.state.dead_letters.put(
                    conn,
                    business=self.business,
                    kind=letter.record.kind,
                    record_id=letter.record.record_id,
                    raw=letter.record.raw,
                    reason=letter.reason,
                    detail=redact_message(letter.detail, self.config.secrets),
                    run_id=self._run_id,
                )
            if self._open_dead_letters and page.delivered:
                self.state.dead_letters.resolve(
                    conn, self.business, kind, [r.record_id for r in page.delivered]
                )
            write_state(conn, page)
            self.state.run_events.record(conn, self._run_id, self.business, space, [
                (e.transaction_id, bases.get(e.transaction_id))
                for e, outcome in zip(events, ev_outcomes, strict=True) if outcome.status == "applied"
            ])
            kinds = {k: v.as_dict() for k, v in self._kinds.items()}
            this_kind = RunCounts(**kinds.get(kind, {}))
            this_kind.add(page.counts)
            kinds[kind] = this_kind.as_dict()
            self.state.runs.add(conn, self._run_id, page.counts, details={"kinds": kinds})
            committed.append(page)

        self.target.deliver(identifies, events, commit)
        for page in committed:
            self._kinds.setdefault(kind, RunCounts()).add(page.counts)
            self._counts.add(page.counts)
            self._applied_to.update(page.applied_to)


    def _reissued(self, events: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """The page's events, those a rollback reversed sent under their next id (``bridge.reissue``)."""
        if not events:
            return events, {}
        if self._reissues is None:
            self._reissues = self.state.run_events.any_reissued(self.business)
        if not self._reissues:
            return events, {}
        return reissue_page(self.state.run_events, self.business, events)


def _no_state(_conn: Connection, _page: PageTally) -> None:
    """Pages without a cursor to move (dead-letter retries)."""
