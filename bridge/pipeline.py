"""The import pipeline: Perkville pages → mapping → Perkamo target → checkpoint, one business at a time.

Phases, in order: reference data (business, locations, perks) → users (staged) → connections
(identify, id map, opening balances in balance mode) → transactions (events).  Every page is
parsed, mapped, delivered and checkpointed before the next one is read, so memory stays bounded
by the page size (plus one small id map of the business's members).

State written per page — cursor or checkpoint, run counters, dead letters, id map — is committed
by the target's ``commit`` callback: inside the embedded core's transaction (exactly-once) or
after every remote acknowledgement (effectively-once with stable ``transaction_id``s).

Cursors (``bridge_cursors``; all values ISO-8601 UTC or JSON), every time in them in the
source's own clock (``bridge.source_clock``), never this machine's:

- ``backfill`` — the checkpoint of an unfinished backfill: mode, cut-over, the signposts (the
  newest ``last_mod_dt`` per resource when it started) and the offset of the next transactions
  page.  A new backfill resumes from it; a finished backfill deletes it and sets the sync cursors
  below to its signposts.
- ``users``, ``connections``, ``transactions`` — ``last_mod_dt`` high-water marks of incremental
  sync: the newest stamp actually read (``source_clock.next_cursor``).  A pass reads from
  ``cursor − overlap`` on.  Transactions additionally re-read the look-back window
  (``transaction_dt`` within ``lookback_days`` of the source's newest change) for rows that
  turned ``VOID``, so late voids are reversed even if Perkville did not touch ``last_mod_dt``.
  Each row also keeps the source's newest change the last run saw (``source_newest``): status's
  lag is the difference.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection

from bridge.errors import (
    ConfigurationError,
    RunFailedError,
    SourceError,
    describe_failure,
)
from bridge.progress import NullProgress, Progress
from bridge.source_clock import (
    SYNC_RESOURCES,
    CutOver,
    lookback_start,
    newest,
    next_cursor,
    to_row_id,
    to_stamp,
)
from bridge.state import (
    IdMapEntry,
    LeaseKeeper,
    RunCounts,
    StateStore,
    lease_name,
    new_owner_id,
    redact,
    utcnow,
)
from bridge.targets import Delivery, Target
from mapping.types import IdentifyCall, MappingIssue

Mode = Literal["history", "balance"]
Kind = Literal["backfill", "sync"]
DIRECTION = "import"
TX_ORDER = ("transaction_dt", "transaction_id")
IMPORT_KINDS = frozenset({"connection", "transaction"})
"""Dead-letter kinds this pipeline writes (and retries)."""


@dataclass(frozen=True)
class PipelineConfig:
    """Plain values the pipeline needs from the settings (read once at the edge)."""

    business: str
    timezone: str = "UTC"
    id_strategy: str = "perkville_user"
    lookback_days: int = 45
    overlap_seconds: int = 300
    trait_allow: tuple[str, ...] | None = None
    trait_deny: tuple[str, ...] = ()
    lease_seconds: int = 120
    secrets: tuple[str, ...] = ()
    target_kind: str = "embedded"
    map_workers: int | None = 0
    """Worker processes for a backfill's transactions: 0 = in-process (the default here), 1 = a
    fetch-and-map worker, None = automatic (a worker on a multi-core host; what the CLI uses).
    See docs/bridge.md, "The fetch-and-map worker"."""
    group_rows: int = 20_000
    """With a worker and the embedded target: pages the worker has already mapped are delivered
    together, in one database transaction of up to this many rows (fewer commits, and each
    customer's state written once per delivery instead of once per page)."""


@dataclass(frozen=True)
class RunOptions:
    """What one run does: backfill or sync, the mode, an optional bounded window."""

    kind: Kind = "backfill"
    mode: Mode = "history"
    since: datetime | None = None
    until: datetime | None = None
    wait: bool = False
    wait_timeout: float | None = None
    force: bool = False
    """Run a backfill even though the business already had one of the other mode (see
    ``Pipeline.check_mode``): only right when the target Space holds nothing of the earlier one."""

    @property
    def windowed(self) -> bool:
        return self.since is not None or self.until is not None


@dataclass
class RunSummary:
    """What a run did; ``to_json`` is the contract shape of ``backfill``/``sync --json``."""

    run_id: int
    status: str
    counts: RunCounts
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"run_id": self.run_id, "status": self.status, **self.counts.as_dict()}
        body["kinds"] = self.kinds
        body["seconds"] = round(self.seconds, 3)
        if self.error:
            body["error"] = self.error
        return body


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def traits_hash(traits: Mapping[str, Any]) -> str:
    """A stable digest of a trait set, so an unchanged member is not identified again."""
    canonical = json.dumps(traits, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def issue_reason(issue: MappingIssue) -> str:
    """A short dead-letter reason code from a mapping issue (``bad_classification``)."""
    return f"bad_{issue.field}" if issue.field else "unmappable"


@dataclass(slots=True)
class _Record:
    """One Perkville record travelling through a page: its id, raw JSON and what it became."""

    kind: str
    record_id: str
    raw: Mapping[str, Any]
    events: list[Any] = field(default_factory=list)  # PerkamoEvents, or the core's CheckedEvents
    identify: IdentifyCall | None = None
    skipped: bool = False
    problem: tuple[str, str] | None = None  # (reason, detail) → dead letter
    entry: IdMapEntry | None = None
    cursor_value: datetime | None = None


class Pipeline:
    """Runs backfills and sync passes of one business into one target."""

    def __init__(
        self,
        *,
        state: StateStore,
        source: Any,
        target: Target,
        config: PipelineConfig,
        progress: Progress | None = None,
        clock: Callable[[], datetime] = utcnow,
        stop: threading.Event | None = None,
    ) -> None:
        self.state = state
        self.source = source
        self.target = target
        self.config = config
        self.progress = progress or NullProgress()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.business = config.business
        self._locations: dict[str, Any] = {}
        self._members: dict[str, Mapping[str, Any]] = {}  # external members by user id / email
        self._keeper: LeaseKeeper | None = None
        self._run_id = 0
        self._now = clock()
        self._counts = RunCounts()
        self._kinds: dict[str, RunCounts] = {}
        self._open_dead_letters = 0

    # ------------------------------------------------------------------------------ entry

    def run(self, options: RunOptions) -> RunSummary:
        """One run under the (business, import) lease; raises ``LeaseHeldError`` if busy."""
        started = time.monotonic()
        self._reset()
        ttl = timedelta(seconds=self.config.lease_seconds)
        owner = new_owner_id()
        name = lease_name(self.business, DIRECTION)
        lease = self.state.leases.acquire(
            name, owner, ttl, wait=options.wait, timeout=options.wait_timeout
        )
        keeper = LeaseKeeper(self.state.leases, lease, ttl)
        with keeper:
            self._keeper = keeper
            self.state.runs.interrupt_stale(self.business, DIRECTION)
            if options.kind == "backfill" and not options.force:
                self.check_mode(options.mode)
            self._now = self.clock()
            self._run_id = self.state.runs.start(
                self.business,
                direction=DIRECTION,
                kind=options.kind,
                mode=options.mode,
                target=self.config.target_kind,
                owner=owner,
                details=self._window_details(options),
                started_at=self._now,
            )
            summary = RunSummary(run_id=self._run_id, status="running", counts=self._counts)
            try:
                note = self.target.ensure_program()
                summary.notes.append(note)
                self.progress.note(note)
                self._run_phases(options, summary)
            except KeyboardInterrupt:
                self._finish(summary, "interrupted", "interrupted by the operator", started)
                raise
            except BaseException as exc:
                message = describe_failure(exc)
                self._finish(summary, "failed", message, started)
                raise RunFailedError(
                    f"run {self._run_id} failed: {summary.error}", run_id=self._run_id
                ) from exc
            status = "stopped" if self.stop.is_set() else "succeeded"
            self._finish(summary, status, None, started)
            return summary

    def earlier_mode(self) -> Mode | None:
        """The mode the business's points already came in by (``None`` before any import).

        Balance: a balance-mode backfill applied something, or a cut-over is recorded.  History:
        a history-mode backfill applied something, or a sync imported rows with no cut-over (its
        first pass reads the whole ledger, like a history backfill).
        """
        from sqlalchemy import and_, func, select

        from bridge.state.schema import runs

        cutover = self.state.cursors.get(self.business, "cutover")
        with self.state.engine.connect() as conn:
            found = conn.execute(
                select(runs.c.kind, runs.c.mode, func.count())
                .where(and_(runs.c.business == self.business, runs.c.direction == DIRECTION,
                            runs.c.applied > 0))
                .group_by(runs.c.kind, runs.c.mode)
            ).all()
        modes = {(kind, mode) for kind, mode, _n in found}
        if cutover is not None or ("backfill", "balance") in modes:
            return "balance"
        if ("backfill", "history") in modes or any(kind == "sync" for kind, _m in modes):
            return "history"
        return None

    def check_mode(self, mode: Mode) -> None:
        """Refuse a backfill whose mode differs from how the business was imported before.

        History after balance (or balance after history) would count the same points twice: the
        opening balances already carry what the ledger rows before the cut-over add up to.
        """
        earlier = self.earlier_mode()
        if earlier is not None and earlier != mode:
            raise ConfigurationError(
                f"business {self.business} was already imported in {earlier} mode; a {mode}-mode "
                f"backfill on top of it would count points twice (use --force only for a fresh "
                f"Space)"
            )

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
        ttl = timedelta(seconds=self.config.lease_seconds)
        owner = new_owner_id()
        lease = self.state.leases.acquire(lease_name(self.business, DIRECTION), owner, ttl, wait=wait)
        with LeaseKeeper(self.state.leases, lease, ttl) as keeper:
            self._keeper = keeper
            self._run_id = self.state.runs.start(
                self.business,
                direction=DIRECTION,
                kind="retry",
                target=self.config.target_kind,
                owner=owner,
                details={"reason": reason, "ids": list(ids or [])},
            )
            summary = RunSummary(run_id=self._run_id, status="running", counts=self._counts)
            try:
                summary.notes.append(self.target.ensure_program())
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
                for start in range(0, len(letters), 100):
                    chunk = letters[start : start + 100]
                    by_kind: dict[str, list[Any]] = {}
                    for letter in chunk:
                        by_kind.setdefault(letter.kind, []).append(letter)
                    for kind, group in by_kind.items():
                        raws = [self._refetch(kind, g.record_id, g.raw) for g in group]
                        if kind == "connection":
                            records = self._map_connections(raws, mode="history", cutover=None)
                            write = self._connection_state(records)
                        else:
                            records = self._map_transactions(raws, customer_ids)
                            write = _no_state
                        for record, letter in zip(records, group, strict=True):
                            record.record_id = letter.record_id
                        self._deliver(records, kind, write)
                    self.progress.advance("retry", len(chunk), total=len(letters), counts=self._counts)
                self.progress.done("retry", None)
            except BaseException as exc:
                self._finish(summary, "failed", describe_failure(exc), started)
                raise RunFailedError(
                    f"run {self._run_id} failed: {summary.error}", run_id=self._run_id
                ) from exc
            self._finish(summary, "succeeded", None, started)
            return summary

    def _refetch(self, kind: str, record_id: str, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        """The record as Perkville has it now (it may have been fixed at the source), else ``stored``."""
        resource = {"transaction": "transactions", "connection": "connections"}.get(kind)
        if resource is None or not record_id.isdigit() or not hasattr(self.source, "request"):
            return stored
        from connectors.perkville.errors import NotFound, RequestRejected

        try:
            fresh = self.source.request("GET", f"{resource}/{record_id}/")
        except (NotFound, RequestRejected):
            return stored
        return fresh if isinstance(fresh, Mapping) and fresh else stored

    def _reset(self) -> None:
        """Fresh counters for a new run of this (reusable) pipeline."""
        self._counts = RunCounts()
        self._kinds = {}
        self._open_dead_letters = 0
        self._prestarted: FetchMapWorker | None = None
        self._early_job: tuple[tuple[str, list[str], dict[str, Any]], Mapping[str, str]] | None = None
        self._signposts: dict[str, datetime | None] = {}
        self._read_newest: dict[str, datetime] = {}  # newest last_mod_dt read per resource
        self._ordered: dict[str, bool] = {}  # whether that resource was read in last_mod_dt order
        self._cursors_before: dict[str, datetime | None] = {}
        self._clock_details: dict[str, Any] = {}

    def _window_details(self, options: RunOptions) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if options.since:
            details["since"] = _iso(options.since)
        if options.until:
            details["until"] = _iso(options.until)
        return details

    def _finish(self, summary: RunSummary, status: str, error: str | None, started: float) -> None:
        summary.status = status
        summary.seconds = time.monotonic() - started
        summary.kinds = {k: v.as_dict() for k, v in self._kinds.items()}
        if error is not None:
            summary.error = redact(error, self.config.secrets)
        try:
            self.state.runs.finish(
                self._run_id,
                status,
                error=summary.error,
                secrets=self.config.secrets,
                details={"kinds": summary.kinds, "notes": summary.notes, **self._clock_details},
            )
        except Exception:  # noqa: BLE001 - the database may be what failed; the caller reports
            pass

    def _run_phases(self, options: RunOptions, summary: RunSummary) -> None:
        # Every bound, cut-over and cursor comes from the source's own stamps (its clock, read in
        # PERKVILLE_TIMEZONE), never from this machine's clock: see bridge.source_clock.
        self._signposts = self._read_signposts()
        checkpoint: dict[str, Any] = {}
        upper: datetime | None = None
        if options.kind == "backfill" and not options.windowed:
            # No upper bound: rows recorded while it runs come after the ones it has read in
            # (transaction_dt, id) order, so a resumed offset still points at the same row.
            checkpoint = self._load_checkpoint(options)
            cutover = CutOver.from_text(checkpoint["cutover"]) if checkpoint.get("cutover") else None
            if checkpoint.get("resumed"):
                note = (
                    f"resuming the unfinished backfill from transaction offset "
                    f"{checkpoint.get('offset', 0)}"
                )
                summary.notes.append(note)
                self.progress.note(note)
        else:
            upper = options.until
            cutover = self._cutover() if options.kind == "backfill" and options.mode == "balance" else None
        self._open_dead_letters = self.state.dead_letters.open_count(self.business)
        if (
            options.kind == "backfill"
            and getattr(self.source, "perkbridge_factory", None) is not None
            and self._want_worker(self.config.map_workers, None)
        ):
            # Started now, the worker's start-up overlaps the reference and members phases.
            self._prestarted = FetchMapWorker()
        try:
            self._run_backfill_or_sync(options, summary, checkpoint, upper, cutover)
        finally:
            if self._prestarted is not None:
                self._prestarted.close()
                self._prestarted = None

    def _run_backfill_or_sync(
        self,
        options: RunOptions,
        summary: RunSummary,
        checkpoint: dict[str, Any],
        upper: datetime | None,
        cutover: CutOver | None,
    ) -> None:
        since = options.since
        if options.mode == "balance" and cutover is not None:
            # Rows of the cut-over's last second recorded after it are left to sync.
            since = max(since, cutover.at) if since else cutover.at
        if options.kind == "backfill":
            self._start_worker_early((since, upper), checkpoint or None)
        self._phase_reference()
        if self.stop.is_set():
            return
        if options.kind == "sync":
            self._phase_sync(options, summary)
            return
        if not checkpoint.get("members_done"):
            self._phase_users(None)
            self._load_external_members()
            if self.stop.is_set():
                return
            self._phase_connections(
                None, mode=options.mode, cutover=cutover.at if cutover else None,
                checkpoint=checkpoint or None,
            )
            if self.stop.is_set():
                return
        self._phase_transactions(
            transaction_window=(since, upper),
            checkpoint=checkpoint or None,
        )
        if self.stop.is_set():
            return
        if checkpoint:
            self._seed_sync_cursors(checkpoint, cutover, summary)

    def _seed_sync_cursors(
        self, checkpoint: Mapping[str, Any], cutover: CutOver | None, summary: RunSummary
    ) -> None:
        """A finished backfill: the sync cursors start at the signposts of its first attempt.

        Everything the source held then was read (some of it later, as it was by then); what
        changed since carries a newer stamp, which sync reads.  A checkpoint written by an
        earlier version has no signposts (its bounds were on this machine's clock): the sync
        cursors are removed instead, so the next sync reads everything once.
        """
        signposts = checkpoint.get("signposts")
        seeded: dict[str, str] = {}
        with self.state.engine.begin() as conn:
            self._fence(conn)
            self.state.cursors.delete(conn, self.business, "backfill")
            for resource in SYNC_RESOURCES:
                value = signposts.get(resource) if isinstance(signposts, Mapping) else None
                if value is not None:
                    self._set_cursor(conn, resource, _parse_iso(value))
                    seeded[resource] = value
                elif not isinstance(signposts, Mapping):
                    self.state.cursors.delete(conn, self.business, resource)
            if cutover is not None:
                # Sync must never replay what the opening balances already carry.
                self.state.cursors.set(conn, self.business, "cutover", cutover.to_text(), self._run_id)
        self._clock_details["cursors"] = seeded
        if not isinstance(signposts, Mapping):
            note = "the resumed backfill began under an older version: the next sync reads everything once"
            summary.notes.append(note)
            self.progress.note(note)

    # ------------------------------------------------------------------------- checkpoint

    def _load_checkpoint(self, options: RunOptions) -> dict[str, Any]:
        raw = self.state.cursors.get(self.business, "backfill")
        if raw:
            saved = json.loads(raw)
            if saved.get("mode") == options.mode:
                saved["resumed"] = True
                return dict(saved)
        cutover = self._cutover() if options.mode == "balance" else None
        checkpoint: dict[str, Any] = {
            "mode": options.mode,
            "cutover": cutover.to_text() if cutover is not None else None,
            "signposts": {
                r: _iso(v) if v is not None else None for r, v in self._signposts.items()
            },
            "offset": 0,
            "members_done": False,
        }
        with self.state.engine.begin() as conn:
            self._fence(conn)
            self.state.cursors.set(
                conn, self.business, "backfill", json.dumps(checkpoint), self._run_id
            )
        return checkpoint

    def _fence(self, conn: Connection) -> None:
        if self._keeper is not None:
            self._keeper.fence(conn)

    # --------------------------------------------------------------- the source's clock

    def _read_signposts(self) -> dict[str, datetime | None]:
        """The newest ``last_mod_dt`` of each synced resource as the run starts (one request
        each), in the source's clock; recorded on the cursors for status's lag and the run log.

        A server that ignores ``order_by`` answers some other row, which is older: that only
        keeps the cursors of unordered passes lower (more is read again), and the balance-mode
        cut-over does not rely on it (``_cutover``).
        """
        found: dict[str, datetime | None] = {}
        for resource in SYNC_RESOURCES:
            page = self.source.fetch_newest(resource, self.business)
            found[resource] = newest(
                [to_stamp(row.get("last_mod_dt"), self.config.timezone) for row in page.objects]
            )
        seen = {r: _iso(v) for r, v in found.items() if v is not None}
        if seen:
            with self.state.engine.begin() as conn:
                self._fence(conn)
                for resource, value in seen.items():
                    self.state.cursors.observe(conn, self.business, resource, value)
        self._clock_details["signposts"] = seen
        return found

    def _cutover(self) -> CutOver:
        """The balance-mode cut-over, on the source's clock: just after the newest row by
        ``(transaction_dt, transaction_id)`` Perkville holds as the run starts (``CutOver``).

        The newest row is asked for, then confirmed by asking for every row from its second on,
        so a server that ignores ``order_by`` still gives the right answer (in a few more
        requests).  With no transactions at all: the newest change of any resource; with no
        data at all, the epoch (everything later is replayed).
        """
        tz = self.config.timezone

        def top(rows: Iterable[Mapping[str, Any]]) -> tuple[datetime, int] | None:
            keys = [
                (stamp, to_row_id(row.get("transaction_id")) or -1)
                for row in rows
                if (stamp := to_stamp(row.get("transaction_dt"), tz)) is not None
            ]
            return max(keys, default=None)

        found = top(self.source.fetch_newest("transactions", self.business, field="transaction_dt").objects)
        while found is not None:
            rows: list[Mapping[str, Any]] = []
            for page in self.source.iter_transactions(self.business, transaction_dt_gte=found[0]):
                rows.extend(page.objects)
            beyond = top(rows)
            if beyond is None or beyond <= found:
                return CutOver.after(found[0], found[1] if found[1] >= 0 else None)
            found = beyond
        others = newest(list(self._signposts.values()))
        return CutOver(others if others is not None else datetime(1970, 1, 1, tzinfo=UTC))

    # ---------------------------------------------------------------------------- phases

    def _phase_reference(self) -> None:
        from mapping.records import parse_location

        self.progress.phase("reference")
        found = False
        for page in self.source.iter_businesses():
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
        for page in self.source.iter_locations(self.business):
            for raw in page.objects:
                parsed = parse_location(raw, timezone=self.config.timezone)
                if parsed.record is not None:
                    self._locations[parsed.record.location_id] = parsed.record
            self.progress.advance("reference", len(page.objects))
        for page in self.source.iter_perks(self.business):
            perks += len(page.objects)
            self.progress.advance("reference", len(page.objects))
        self.progress.done("reference", f"{len(self._locations)} locations, {perks} perks")

    def _phase_users(self, since: datetime | None) -> set[str]:
        """Stage users (raw) for the connections phase; returns the ids seen."""
        self.progress.phase("users")
        seen: set[str] = set()
        # The next page is requested while this one is staged (``prefetch``).
        pages = prefetch(self.source.iter_users(business=self.business, last_mod_dt_gte=since))
        try:
            self._stage_users(pages, seen)
        finally:
            _close_quietly(pages)
        self.progress.done("users", f"{len(seen)} users")
        return seen

    def _stage_users(self, pages: Iterable[Any], seen: set[str]) -> None:
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

    def _phase_connections(
        self,
        since: datetime | None,
        *,
        mode: Mode,
        cutover: datetime | None,
        checkpoint: dict[str, Any] | None,
        pages: Iterator[Any] | None = None,
    ) -> set[str]:
        """Identify every connected member; returns the Perkville user ids handled.

        Only the phase's own read (``pages`` None) counts towards the connections cursor.
        """
        self.progress.phase("members")
        handled: set[str] = set()
        tracked = pages is None
        if pages is None:
            # The next page is requested while this one is mapped and delivered.
            pages = prefetch(self.source.iter_connections(self.business, last_mod_dt_gte=since))
        try:
            for page in pages:
                if tracked:
                    self._note_read("connections", page.objects)
                records = self._map_connections(page.objects, mode=mode, cutover=cutover)
                handled.update(r.entry.perkville_user_id for r in records if r.entry is not None)
                self._deliver(records, "connection", self._connection_state(records))
                self.progress.advance(
                    "members", len(page.objects), total=page.meta.get("total_count"), counts=self._counts
                )
                if self.stop.is_set():
                    return handled
        finally:
            _close_quietly(pages)
        if checkpoint is not None:
            checkpoint["members_done"] = True
            with self.state.engine.begin() as conn:
                self._fence(conn)
                self.state.cursors.set(
                    conn, self.business, "backfill", json.dumps(_stored(checkpoint)), self._run_id
                )
        self.progress.done("members", f"{len(handled)} members")
        return handled

    def _note_read(self, resource: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keep the newest ``last_mod_dt`` read of ``resource`` (its cursor's candidate)."""
        tz = self.config.timezone
        found = newest([to_stamp(row.get("last_mod_dt"), tz) for row in rows])
        before = self._read_newest.get(resource)
        if found is not None and (before is None or found > before):
            self._read_newest[resource] = found

    def _transactions_query(
        self,
        transaction_window: tuple[datetime | None, datetime | None],
        checkpoint: dict[str, Any] | None,
        last_mod_window: tuple[datetime | None, datetime | None] | None = None,
        status: str | None = None,
    ) -> tuple[str, list[str], dict[str, Any]]:
        """``(business, order_by, filters)`` of the transactions a phase reads."""
        since, until = transaction_window
        params: dict[str, Any] = {
            "transaction_dt_gte": since,
            "transaction_dt_lt": until,
        }
        order: tuple[str, ...] = TX_ORDER
        if last_mod_window is not None:
            params["last_mod_dt_gte"], params["last_mod_dt_lt"] = last_mod_window
            order = ("last_mod_dt", "transaction_id")
        if status is not None:
            params["transaction_status"] = status
        if checkpoint is not None and checkpoint.get("offset"):
            params["offset"] = int(checkpoint["offset"])
        return self.business, list(order), params

    def _start_worker_early(
        self,
        transaction_window: tuple[datetime | None, datetime | None],
        checkpoint: dict[str, Any] | None,
    ) -> None:
        """Give the pre-started worker its transactions job before the members phase, if it can
        map them already: it then reads and maps the first pages while this process imports the
        members, instead of starting when they are done.

        Only under the ``perkville_user`` id strategy, where the members phase adds nothing but
        default ids (``perkville:{id}``, what the map answers for an unknown user anyway) and keeps
        the ids already assigned: the map as it is now maps every row as the final one will.  The
        transactions phase checks that (``_same_ids``) and starts a fresh worker if it is not so.
        """
        factory = getattr(self.source, "perkbridge_factory", None)
        if self._prestarted is None or factory is None or self.config.id_strategy != "perkville_user":
            return
        query = self._transactions_query(transaction_window, checkpoint)
        customer_ids = self._customer_ids()
        embedded = getattr(self.target, "kind", None) == "embedded"
        self._prestarted.start((factory, query, (self.business, self.config.timezone, customer_ids), embedded))
        self._early_job = (query, customer_ids)

    def _phase_transactions(
        self,
        *,
        transaction_window: tuple[datetime | None, datetime | None],
        checkpoint: dict[str, Any] | None,
        last_mod_window: tuple[datetime | None, datetime | None] | None = None,
        sync_resource: str | None = None,
        label: str = "transactions",
        status: str | None = None,
        cutover: CutOver | None = None,
    ) -> None:
        self.progress.phase(label)
        customer_ids = self._customer_ids()
        query = self._transactions_query(transaction_window, checkpoint, last_mod_window, status)
        _, order, params = query
        factory = getattr(self.source, "perkbridge_factory", None)
        if (
            factory is not None
            and last_mod_window is None
            and status is None
            and self._want_worker(self.config.map_workers, None)
        ):
            # Fetching, decoding and mapping run in a worker process; this one only ingests.
            embedded = getattr(self.target, "kind", None) == "embedded"
            prestarted, self._prestarted = self._prestarted, None
            early, self._early_job = self._early_job, None
            if prestarted is not None and early is not None and not (
                early[0] == query and _same_ids(early[1], customer_ids)
            ):
                # The early job no longer matches (the members phase assigned other ids): its
                # pages are discarded with it, and a fresh worker reads them again.
                prestarted.close()
                prestarted = None
            mapped: Iterator[tuple[Any, list[_Record]]] = fetched_and_mapped(
                factory,
                query,
                (self.business, self.config.timezone, customer_ids),
                checked=embedded,
                group_rows=self.config.group_rows if embedded else 0,
                worker=prestarted,
                job_sent=prestarted is not None and early is not None,
            )
        else:
            pages = self.source.iter_transactions(self.business, order_by=list(order), **params)
            mapped = self._mapped_pages(
                # Late voids read single rows from the source: no second reader in the meantime.
                prefetch(pages) if cutover is None else pages,
                customer_ids,
                with_cursor=last_mod_window is not None,
                worker_allowed=last_mod_window is None and status is None,
            )
        if cutover is not None:
            mapped = self._with_late_voids(mapped, cutover, customer_ids)
        try:
            self._deliver_transaction_pages(
                mapped, label, checkpoint, last_mod_window, sync_resource
            )
        finally:
            _close_quietly(mapped)  # a generator: stop the worker or prefetcher

    def _with_late_voids(
        self,
        mapped: Iterator[tuple[Any, list[_Record]]],
        cutover: CutOver,
        customer_ids: Mapping[str, str] | None,
    ) -> Iterator[tuple[Any, list[_Record]]]:
        """Balance mode: a void after the cut-over of a row from before it becomes its reversal.

        Perkville's ``point_balance`` at the cut-over still held the row, and the opening balance
        carried it; the void takes it out again.  The ``VOID_REF`` row (dated at the void, so inside
        the window) names the voided row, which is read and mapped; only its reversal event
        (``void:`` id) is sent — never the original, which the opening balance already counts.
        A voided row from after the cut-over is in the window itself and maps as usual.  A row of
        the cut-over's last second that the opening balances carry (``CutOver.carries``) is
        skipped.
        """
        from mapping.events import EVENT_VOIDED, to_events

        tz = self.config.timezone
        try:
            for page, records in mapped:
                for record in records:
                    if not isinstance(record.raw, Mapping):
                        continue
                    status = str(record.raw.get("transaction_status") or "").upper()
                    if cutover.carries(
                        to_stamp(record.raw.get("transaction_dt"), tz), record.raw.get("transaction_id")
                    ):
                        if record.problem is None:  # a void among them too: already in the balance
                            record.skipped, record.events = True, []
                        continue
                    if not record.skipped:
                        continue
                    voided = _trailing_id(record.raw.get("voided_transaction"))
                    if status != "VOID_REF" or voided is None:
                        continue
                    original = self._refetch("transaction", voided, {})
                    if not original:
                        continue
                    result = to_events(
                        original,
                        business_id=self.business,
                        timezone=self.config.timezone,
                        customer_ids=customer_ids,
                    )
                    reversal = [e for e in result.events if e.event == EVENT_VOIDED]
                    if (
                        result.ok
                        and len(reversal) == 1
                        and cutover.carries(
                            to_stamp(original.get("transaction_dt"), tz), original.get("transaction_id")
                        )
                    ):
                        record.skipped = False
                        record.events = reversal
                yield page, records
        finally:
            _close_quietly(mapped)

    def _deliver_transaction_pages(
        self,
        mapped: Iterator[tuple[Any, list[_Record]]],
        label: str,
        checkpoint: dict[str, Any] | None,
        last_mod_window: tuple[datetime | None, datetime | None] | None,
        sync_resource: str | None,
    ) -> None:
        # What exists now (modules, the id map, the members' data) lives for the whole phase: out of
        # the collector's way, so each full collection scans only what the pages make, and each
        # delivery runs with the collector paused (its objects die by reference counting).
        from perkamo_core.db import WalCheckpointer

        gc.freeze()
        try:
            # SQLite: the WAL is checkpointed by a thread, not inside the page commits.
            with WalCheckpointer(self.state.engine):
                self._deliver_pages(mapped, label, checkpoint, last_mod_window, sync_resource)
        finally:
            gc.unfreeze()

    def _deliver_pages(
        self,
        mapped: Iterator[tuple[Any, list[_Record]]],
        label: str,
        checkpoint: dict[str, Any] | None,
        last_mod_window: tuple[datetime | None, datetime | None] | None,
        sync_resource: str | None,
    ) -> None:
        high_water: datetime | None = None
        ordered = True
        before = self._cursors_before.get(sync_resource) if sync_resource else None
        for page, records in mapped:
            if last_mod_window is not None:
                ordered = ordered and bool(getattr(page, "ordered", True))
                high_water = newest([high_water, *(r.cursor_value for r in records)])
            if sync_resource:
                if high_water is not None:
                    self._read_newest[sync_resource] = high_water
                self._ordered[sync_resource] = ordered
            size = _page_size(page)
            next_offset = int(getattr(page, "offset", 0)) + size + int(getattr(page, "dropped", 0))
            # In last_mod_dt order the cursor follows the pages; otherwise it moves at the end.
            moved = next_cursor(before, high_water, None, ordered=True) if ordered else None
            state = self._transaction_state(
                records,
                checkpoint=checkpoint,
                next_offset=next_offset,
                cursor=(sync_resource, moved) if sync_resource and moved != before else None,
            )
            with _gc_paused():
                self._deliver(records, "transaction", state)
            self.progress.advance(label, size, total=page.meta.get("total_count"), counts=self._counts)
            if self.stop.is_set():
                return
        self.progress.done(label, None)

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
            r: _parse_iso(e.value) if e is not None else None for r, e in entries.items()
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
        handled = self._phase_connections(
            window("connections"), mode=options.mode, cutover=None, checkpoint=None
        )
        if self.stop.is_set():
            return
        # A user whose profile changed but whose connection did not: re-identify it too.
        if users_since is not None:
            for uid in sorted(changed_users - handled):
                pages = self.source.iter_connections(self.business, user_id=uid)
                self._phase_connections(
                    None, mode=options.mode, cutover=None, checkpoint=None, pages=pages
                )
        tx_since = window("transactions")
        cutover_text = self.state.cursors.get(self.business, "cutover")
        cutover = CutOver.from_text(cutover_text) if cutover_text else None
        self._phase_transactions(
            transaction_window=(cutover.floor if cutover else None, None),
            checkpoint=None,
            last_mod_window=(tx_since, None),
            sync_resource="transactions",
            cutover=cutover,
        )
        if self.stop.is_set():
            return
        signpost = self._signposts.get("transactions")
        if tx_since is not None and self.config.lookback_days > 0 and signpost is not None:
            self._phase_transactions(
                transaction_window=(
                    lookback_start(signpost, self.config.lookback_days, cutover.at if cutover else None),
                    None,
                ),
                checkpoint=None,
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
                    moved[resource] = _iso(value)
                elif legacy:
                    self.state.cursors.delete(conn, self.business, resource)
        self._clock_details["cursors"] = moved

    # --------------------------------------------------------------------------- mapping

    def _load_external_members(self) -> None:
        """External member records (membership traits, ``external_member`` ids), by user id or email.

        Kept in memory for the members phase: one record per member at most.  Without the
        External Member API (404) the connector warns once and this stays empty.
        """
        self._members = {}
        pages = getattr(self.source, "iter_external_members", None)
        if pages is None:
            return
        for page in pages(self.business):
            for raw in page.objects:
                user = raw.get("user_id") or raw.get("user")
                if user:
                    self._members[f"user:{str(user).rstrip('/').rsplit('/', 1)[-1]}"] = raw
                email = raw.get("email")
                if isinstance(email, str) and email.strip():
                    self._members.setdefault(f"email:{email.strip().lower()}", raw)

    def _member_of(self, user_id: str, user: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if not self._members:
            return None
        found = self._members.get(f"user:{user_id}")
        if found is not None or user is None:
            return found
        for item in user.get("emails") or []:
            email = item.get("email") if isinstance(item, Mapping) else item
            if isinstance(email, str):
                found = self._members.get(f"email:{email.strip().lower()}")
                if found is not None:
                    return found
        return None

    def _map_connections(
        self, rows: Sequence[Mapping[str, Any]], *, mode: Mode, cutover: datetime | None
    ) -> list[_Record]:
        from mapping.events import to_opening_balance_event
        from mapping.records import parse_connection
        from mapping.traits import to_identify

        parsed_rows = [parse_connection(raw, timezone=self.config.timezone) for raw in rows]
        user_ids = [p.record.user_id for p in parsed_rows if p.record is not None]
        users = self.state.users.get_many(self.business, user_ids)
        known = self.state.id_map.get_many(self.business, user_ids)
        records: list[_Record] = []
        for raw, parsed in zip(rows, parsed_rows, strict=True):
            rid = str(raw.get("connection_id", raw.get("id", "?")))
            record = _Record("connection", rid, raw)
            records.append(record)
            if parsed.record is None:
                record.problem = _first_problem(parsed.issues, "unreadable connection")
                continue
            conn_rec = parsed.record
            user = users.get(conn_rec.user_id)
            result = to_identify(
                user,
                connection=conn_rec,  # parsed above (its issues travel with it)
                external_member=self._member_of(conn_rec.user_id, user),
                locations=self._locations,
                strategy=self.config.id_strategy,  # type: ignore[arg-type]
                allow=self.config.trait_allow,
                deny=self.config.trait_deny,
                timezone=self.config.timezone,
            )
            if result.call is None or result.entry is None:
                record.problem = _first_problem(result.issues, "connection could not be identified")
                continue
            call = result.call
            before = known.get(conn_rec.user_id)
            if before is not None and before.customer_id != call.user_id:
                # A customer id, once assigned, never changes (a member id that appears later
                # or an email that changes would otherwise split one member's history in two).
                call = call.model_copy(update={"user_id": before.customer_id})
                result = result.model_copy(update={"call": call})
            digest = traits_hash(call.traits)
            if before is None or before.traits_hash != digest or before.customer_id != call.user_id:
                record.identify = call
            record.entry = IdMapEntry(
                business=self.business,
                perkville_user_id=conn_rec.user_id,
                customer_id=call.user_id,
                strategy=self.config.id_strategy,
                connection_id=conn_rec.connection_id,
                connection_status=conn_rec.status,
                perkville_balance=conn_rec.point_balance,
                traits_hash=digest,
            )
            if mode == "balance" and cutover is not None:
                opening = to_opening_balance_event(
                    raw,
                    business_id=self.business,
                    cutover_at=cutover,
                    timezone=self.config.timezone,
                    customer_ids={conn_rec.user_id: call.user_id},
                )
                if not opening.ok:
                    record.problem = _first_problem(opening.issues, "opening balance unmappable")
                    continue
                record.events.extend(opening.events)
        return records

    def _customer_ids(self) -> dict[str, str]:
        """Perkville user id → customer id from the id map (ids once assigned are kept).

        Under ``perkville_user`` a user missing from the map (no connection) gets the default
        id; under the other strategies such a row is an issue (identify the member first).
        """
        known = {e.perkville_user_id: e.customer_id for e in self.state.id_map.iter_all(self.business)}
        if self.config.id_strategy == "perkville_user":
            return DefaultCustomerIds(known)
        return known

    def _map_transactions(
        self,
        rows: Sequence[Mapping[str, Any]],
        customer_ids: Mapping[str, str] | None,
        *,
        with_cursor: bool = False,
    ) -> list[_Record]:
        return map_transaction_rows(
            rows, self.business, self.config.timezone, customer_ids, with_cursor
        )

    def _mapped_pages(
        self,
        pages: Iterable[Any],
        customer_ids: Mapping[str, str] | None,
        *,
        with_cursor: bool,
        worker_allowed: bool,
    ) -> Iterator[tuple[Any, list[_Record]]]:
        """Pages with their mapped records, in order.

        With a mapping worker (``map_workers``; ``None`` = automatic for large histories on a
        machine with more than one core) page N+1 is mapped in a separate process while page N
        is delivered.  Mapping is pure, so where it runs changes nothing but the wall time.
        """
        executor: Any = None
        pending: deque[tuple[Any, Any]] = deque()
        try:
            for page in pages:
                if executor is None and worker_allowed and self._want_worker(self.config.map_workers, page):
                    executor = _mapping_executor()
                if executor is None:
                    yield page, self._map_transactions(page.objects, customer_ids, with_cursor=with_cursor)
                    continue
                future = executor.submit(
                    map_transaction_rows,
                    page.objects,
                    self.business,
                    self.config.timezone,
                    customer_ids,
                    with_cursor,
                    False,
                )
                pending.append((page, future))
                if len(pending) > 1:
                    yield _collect(*pending.popleft())
            while pending:
                yield _collect(*pending.popleft())
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            _close_quietly(pages)

    def _want_worker(self, workers: int | None, page: Any) -> bool:
        if workers is not None:
            return workers > 0
        if page is None:  # the fetch-and-map worker of a backfill: any multi-core host
            return (os.cpu_count() or 1) > 1
        total = page.meta.get("total_count") if isinstance(page.meta, Mapping) else None
        return (os.cpu_count() or 1) > 1 and isinstance(total, int) and total >= AUTO_WORKER_ROWS

    # -------------------------------------------------------------------------- delivery

    def _connection_state(self, records: list[_Record]) -> Callable[[Connection], None]:
        def write(conn: Connection) -> None:
            entries = [r.entry for r in records if r.entry is not None and r.problem is None]
            if entries:
                self.state.id_map.put(conn, entries)

        return write

    def _transaction_state(
        self,
        records: list[_Record],
        *,
        checkpoint: dict[str, Any] | None,
        next_offset: int,
        cursor: tuple[str, datetime | None] | None,
    ) -> Callable[[Connection], None]:
        def write(conn: Connection) -> None:
            if checkpoint is not None:
                checkpoint["offset"] = next_offset
                self.state.cursors.set(
                    conn, self.business, "backfill", json.dumps(_stored(checkpoint)), self._run_id
                )
            if cursor is not None and cursor[1] is not None:
                self._set_cursor(conn, cursor[0], cursor[1])

        return write

    def _set_cursor(self, conn: Connection, resource: str, value: datetime) -> None:
        """Store a sync cursor with the source's newest change this run saw (status's lag)."""
        seen = self._signposts.get(resource)
        self.state.cursors.set(
            conn, self.business, resource, _iso(value), self._run_id,
            source_newest=_iso(max(seen, value) if seen is not None else value),
        )

    def _deliver(
        self, records: list[_Record], kind: str, write_state: Callable[[Connection], None]
    ) -> None:
        identifies = [r.identify for r in records if r.identify is not None and r.problem is None]
        events = [e for r in records if r.problem is None for e in r.events]
        before_counts = RunCounts(**self._counts.as_dict())
        before_kinds = {k: RunCounts(**v.as_dict()) for k, v in self._kinds.items()}
        before_problems = [r.problem for r in records]

        def restore() -> None:
            self._counts.__dict__.update(before_counts.as_dict())
            self._kinds = {k: RunCounts(**v.as_dict()) for k, v in before_kinds.items()}
            for record, problem in zip(records, before_problems, strict=True):
                record.problem = problem

        def commit(
            conn: Connection, id_outcomes: Sequence[Delivery], ev_outcomes: Sequence[Delivery]
        ) -> None:
            # The target may run this again after rolling the page back (a conflict): start over.
            restore()
            self._fence(conn)
            page = RunCounts()
            id_iter = iter(id_outcomes)
            ev_iter = iter(ev_outcomes)
            resolved: list[str] = []
            applied = duplicate = skipped = 0
            for record in records:
                if record.problem is None:
                    rejected: Delivery | None = None
                    any_applied = False
                    if record.identify is not None:
                        outcome = next(id_iter)
                        if outcome.status == "rejected":
                            rejected = outcome
                        any_applied = outcome.status == "applied"
                    for _event in record.events:  # consume every outcome of the record
                        outcome = next(ev_iter)
                        if outcome.status == "rejected":
                            rejected = rejected or outcome
                        elif outcome.status == "applied":
                            any_applied = True
                    if rejected is not None:
                        record.problem = (
                            f"rejected_{rejected.reason or 'error'}",
                            rejected.detail or "the target rejected the record",
                        )
                    else:
                        if record.skipped:
                            skipped += 1
                        elif any_applied:
                            applied += 1
                        else:
                            duplicate += 1  # all duplicates, or nothing to send (unchanged member)
                        resolved.append(record.record_id)
                        continue
                reason, detail = record.problem
                self.state.dead_letters.put(
                    conn,
                    business=self.business,
                    kind=record.kind,
                    record_id=record.record_id,
                    raw=record.raw,
                    reason=reason,
                    detail=redact(detail, self.config.secrets),
                    run_id=self._run_id,
                )
                page.count("dead_lettered")
            for outcome_name, n in (("applied", applied), ("duplicate", duplicate), ("skipped", skipped)):
                if n:
                    page.count(outcome_name, n)
            if self._open_dead_letters and resolved:
                self.state.dead_letters.resolve(conn, self.business, kind, resolved)
            write_state(conn)
            kind_counts = self._kind(kind)
            kind_counts.add(page)
            self._counts.add(page)
            self.state.runs.add(
                conn,
                self._run_id,
                page,
                details={"kinds": {k: v.as_dict() for k, v in self._kinds.items()}},
            )

        try:
            self.target.deliver(identifies, events, commit)
        except BaseException:
            # The page's transaction rolled back: so do the in-memory counters.
            restore()
            raise

    def _kind(self, kind: str) -> RunCounts:
        return self._kinds.setdefault(kind, RunCounts())


class DefaultCustomerIds(dict[str, str]):
    """The id map, answering ``perkville:{id}`` for users it does not hold (default strategy)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        found = super().get(key)
        return found if found is not None else f"perkville:{key}"


def _same_ids(before: Mapping[str, str], after: Mapping[str, str]) -> bool:
    """Whether two id maps give every Perkville user the same customer id (each answers its own
    default for users it does not hold: ``DefaultCustomerIds``)."""
    return all(before.get(k) == v for k, v in after.items()) and all(
        after.get(k) == v for k, v in before.items()
    )


AUTO_WORKER_ROWS = 50_000
"""A history at least this long gets a mapping worker process when ``map_workers`` is automatic."""


def map_transaction_rows(
    rows: Sequence[Mapping[str, Any]],
    business: str,
    timezone: str,
    customer_ids: Mapping[str, str] | None,
    with_cursor: bool,
    keep_raw: bool = True,
) -> list[_Record]:
    """Map raw transaction rows to records (pure; also what the mapping worker process runs).

    ``keep_raw=False`` leaves ``raw`` empty so a worker does not send the rows back; the caller
    re-attaches them (``_collect``).
    """
    from mapping.events import to_events_many

    with _gc_paused():
        results = to_events_many(
            rows, business_id=business, timezone=timezone, customer_ids=customer_ids
        )
        records: list[_Record] = []
        append = records.append
        for raw, result in zip(rows, results, strict=True):
            rid = raw.get("transaction_id", raw.get("id", "?")) if isinstance(raw, Mapping) else "?"
            record = _Record("transaction", str(rid), raw if keep_raw else {})
            append(record)
            if with_cursor:
                record.cursor_value = to_stamp(raw.get("last_mod_dt"), timezone)
            if result.issues and not result.ok:
                record.problem = _first_problem(result.issues, "transaction unmappable")
            elif result.skipped and not result.events:
                record.skipped = True
            else:
                record.events = result.events
    return records


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page is mapped (it makes no cycles; the
    collector's passes over the freshly made objects cost about as much as the mapping)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class WorkerPage:
    """What the fetch-and-map worker reports of one page (its rows stay in the worker)."""

    size: int
    meta: dict[str, Any]
    offset: int
    dropped: int
    ordered: bool


def _page_size(page: Any) -> int:
    size = getattr(page, "size", None)
    return size if isinstance(size, int) else len(page.objects)


# One mapped row as the worker sends it: (record id, events, problem, skipped, raw).  Events are
# plain tuples and ``raw`` travels only with a problem (the dead letter keeps it).
_Packed = tuple[str, list[tuple[str, str, str, dict[str, Any], datetime | None]], tuple[str, str] | None, bool, Any]


def _pack(records: list[_Record], checked: bool = False) -> list[_Packed]:
    """Records as the worker sends them.  ``checked``: the events also pass the embedded core's
    checks here and travel as its ``CheckedEvent``s, which the core ingests without checking
    again; a record with an event the core would refuse becomes a dead letter as a whole."""
    if not checked:
        return [
            (
                r.record_id,
                [(e.user_id, e.event, e.transaction_id, e.context, e.occurred_at) for e in r.events],
                r.problem,
                r.skipped,
                r.raw if r.problem is not None else None,
            )
            for r in records
        ]
    from bridge.targets import checked_events
    from perkamo_core.errors import ValidationError

    known: set[str] = set()
    packed: list[_Packed] = []
    for r in records:
        events: list[Any] = []
        if r.problem is None and r.events:
            try:
                events = checked_events(r.events, known)
            except ValidationError as exc:
                r.problem = (f"rejected_{exc.code}", exc.message)
        packed.append((r.record_id, events, r.problem, r.skipped, r.raw if r.problem is not None else None))
    return packed


def _unpack(packed: list[_Packed], checked: bool = False) -> list[_Record]:
    from mapping.types import trusted_event

    records: list[_Record] = []
    append = records.append
    for rid, events, problem, skipped, raw in packed:
        append(_Record("transaction", rid, raw or {},
                       events if checked else [trusted_event(*e) for e in events], None, skipped, problem))
    return records


def fetch_and_map_worker(
    factory: Callable[[], Any],
    query: tuple[str, list[str], dict[str, Any]],
    mapping_args: tuple[str, str, Mapping[str, str] | None],
    out: Any,
    checked: bool = False,
) -> None:
    """The worker process: page through the transactions, map each page, send it packed.

    Sends ``("page", WorkerPage, packed)`` per page, then ``("done",)``; on failure
    ``("error", exception)`` (or its text when it does not pickle).  ``checked``: see ``_pack``.
    """
    sender = _Sender(out, SEND_AHEAD)
    try:
        business, order, params = query
        with closing_client(factory()) as client:
            # A thread waits for the next page while this one is mapped, and another one writes
            # the mapped pages to the parent: the source serves page N+1 while the worker maps
            # page N, and neither waits while the parent is busy in its database transaction.
            for page in prefetch(client.iter_transactions(business, order_by=order, **params)):
                records = map_transaction_rows(page.objects, *mapping_args, False, True)
                info = WorkerPage(
                    len(page.objects), dict(page.meta), int(getattr(page, "offset", 0)),
                    int(getattr(page, "dropped", 0)), bool(getattr(page, "ordered", True)),
                )
                sender.send(("page", info, _pack(records, checked)))
        sender.send(("done",))
        sender.close()
    except _ParentGone:
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, raised there as SourceError
        try:
            sender.send(("error", f"{type(exc).__name__}: {exc}"))
            sender.close()
        except _ParentGone:
            return


class _ParentGone(Exception):
    """The process that started the worker has ended (killed): the worker stops too."""


class _Sender:
    """Writes the worker's messages to the parent from a thread, up to ``ahead`` of them queued.

    The parent takes pages in groups and spends a while in its database transaction between two
    groups; the queue lets the worker go on mapping meanwhile instead of waiting on a full pipe.
    The worker holds only the pipe's write end, so when the parent dies (even by SIGKILL) the
    write fails and :meth:`send` raises ``_ParentGone`` instead of waiting forever.
    """

    def __init__(self, out: Any, ahead: int) -> None:
        self._out = out
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=ahead)
        self._gone = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perkbridge-send", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            try:
                self._out.send_bytes(data)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._gone.set()
                return

    def send(self, item: Any) -> None:
        """Queue ``item`` for the parent (pickled here); blocks while ``ahead`` are waiting."""
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        while not self._gone.is_set():
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _ParentGone()

    def close(self) -> None:
        """Wait until everything queued is written; ``_ParentGone`` if the parent stopped reading."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._gone.is_set():
            raise _ParentGone()


def _worker_main(jobs: Any, out: Any) -> None:
    """A pre-started worker: wait for its one job (``None``: not needed after all), then run it."""
    # A SIGTERM or Ctrl-C sent to the whole process group (systemd, a container stop, a terminal)
    # is the parent's to act on: it stops at a safe point and then ends this worker itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Lower priority than the parent: on a busy machine the process that holds the database
        # transaction gets the CPU first (the worker has time to spare and only runs ahead).
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):
        pass  # not on this OS, or not allowed: same priority, only slower under load
    try:
        job = jobs.recv()  # EOFError: the parent closed its end or ended
    except (EOFError, OSError):
        return
    if job is not None:
        factory, query, mapping_args, checked = job
        fetch_and_map_worker(factory, query, mapping_args, out, checked)


PIPE_BYTES = 1 << 20
"""Kernel buffer asked for on the worker's pipe (Linux; the system's maximum by default).

A mapped page pickles to about 200 KB.  With the default 64 KB buffer every page crosses in
pieces, each waiting for both processes to be scheduled, and the two stall each other; with
1 MB the worker writes whole pages ahead while the parent is busy in its database transaction.
"""


def _widen_pipe(connection: Any) -> None:
    try:
        import fcntl

        fcntl.fcntl(connection.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError, ValueError):
        pass  # another OS, or a lower limit: the default buffer works, only slower


WORKER_NICENESS = 10
"""How much lower the fetch-and-map worker's scheduling priority is than its parent's."""


class FetchMapWorker:
    """A spawned fetch-and-map worker process, started before it has work.

    Its start-up (a fresh interpreter importing the connector and the mapping, about half a
    second) overlaps the members phase; :func:`fetched_and_mapped` hands it the transactions job.
    Parent and worker talk over two one-way pipes: the job goes down one, pickled pages come up
    the other.  Each side holds only its own ends, so either one's death shows on the other.
    """

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        jobs_read, self._jobs = context.Pipe(duplex=False)
        self._pages, pages_write = context.Pipe(duplex=False)
        _widen_pipe(pages_write)
        self.process = context.Process(
            target=_worker_main, args=(jobs_read, pages_write), name="perkbridge-fetch-map", daemon=True
        )
        self.process.start()
        jobs_read.close()  # the worker's ends: only the worker may hold them now
        pages_write.close()

    def start(self, job: tuple[Any, ...]) -> None:
        self._jobs.send(job)

    def receive(self, timeout: float = 5.0) -> Any:
        """The worker's next message; ``SourceError`` if it ended without saying so."""
        while True:
            try:
                if self._pages.poll(timeout):
                    return pickle.loads(self._pages.recv_bytes())
            except (EOFError, OSError):
                pass  # its end closed: it ended
            else:
                if self.process.is_alive():
                    continue
            self.process.join(timeout=1)
            raise SourceError(
                f"the fetch-and-map worker process ended unexpectedly (exit code {self.process.exitcode})"
            )

    def ready(self) -> bool:
        """Whether a message is already waiting (:meth:`receive` would not block)."""
        try:
            return bool(self._pages.poll(0))
        except (EOFError, OSError):
            return True  # it ended: receive() says how

    def close(self) -> None:
        """End the process (finished or not) and release the pipes."""
        if self.process.is_alive():
            self.process.kill()  # it ignores SIGTERM (see _worker_main) and holds nothing durable
        self.process.join(timeout=10)
        self._jobs.close()
        self._pages.close()


def _close_quietly(thing: Any) -> None:
    """Call ``thing.close()`` if it has one (generators, pagers, clients)."""
    close = getattr(thing, "close", None)
    if close is not None:
        close()


@contextmanager
def closing_client(client: Any) -> Iterator[Any]:
    try:
        yield client
    finally:
        _close_quietly(client)


def fetched_and_mapped(
    factory: Callable[[], Any],
    query: tuple[str, list[str], dict[str, Any]],
    mapping_args: tuple[str, str, Mapping[str, str] | None],
    *,
    checked: bool = False,
    group_rows: int = 0,
    worker: FetchMapWorker | None = None,
    job_sent: bool = False,
) -> Iterator[tuple[WorkerPage, list[_Record]]]:
    """Pages fetched and mapped by a spawned worker process, in order, a few pages ahead.

    The two processes overlap: while this one ingests and commits page N, the worker fetches,
    decodes and maps the next ones.  Leaving early (stop, failure) ends the worker.

    ``group_rows``: consecutive pages are handed on together, up to ``GROUP_PAGES`` pages until
    they hold that many rows, so the consumer makes fewer, larger deliveries.  ``checked``: see
    ``_pack``.  ``worker``: a :class:`FetchMapWorker` started earlier (else one is started now);
    it is closed when the iteration ends; ``job_sent``: it already has this very job.
    """
    handle = worker if worker is not None else FetchMapWorker()
    if not (job_sent and worker is not None):
        handle.start((factory, query, mapping_args, checked))
    receive = handle.receive
    try:
        held: Any = None
        first = True
        while True:
            item = held if held is not None else receive()
            held = None
            if item[0] == "done":
                return
            if item[0] == "error":
                raise SourceError(f"reading transactions failed in the worker process: {item[1]}")
            group = [item]
            rows = item[1].size
            # The first delivery takes the pages that are here already instead of waiting for a
            # full group (the worker, a few pages ahead, keeps mapping while it is ingested).
            while rows < group_rows and len(group) < GROUP_PAGES and (not first or handle.ready()):
                more = receive()
                if more[0] != "page":
                    held = more  # "done" or "error": after this group
                    break
                group.append(more)
                rows += more[1].size
            first = False
            with _gc_paused():
                records = [r for entry in group for r in _unpack(entry[2], checked)]
            yield _joined([entry[1] for entry in group]), records
    finally:
        handle.close()


GROUP_PAGES = 20
"""At most this many source pages go into one grouped delivery (a crash re-reads at most these)."""

SEND_AHEAD = 2 * GROUP_PAGES
"""Mapped pages the worker holds ready for the parent, beyond what the pipe's buffer holds: two
groups, so it maps the next group while the parent delivers one."""


def _joined(pages: list[WorkerPage]) -> WorkerPage:
    """Consecutive worker pages as one (their rows, drops and offsets are contiguous)."""
    if len(pages) == 1:
        return pages[0]
    return WorkerPage(
        size=sum(p.size for p in pages),
        meta=pages[-1].meta,
        offset=pages[0].offset,
        dropped=sum(p.dropped for p in pages),
        ordered=all(p.ordered for p in pages),
    )


def _collect(page: Any, future: Any) -> tuple[Any, list[_Record]]:
    records: list[_Record] = future.result()
    for record, raw in zip(records, page.objects, strict=True):
        record.raw = raw
    return page, records


def _mapping_executor() -> Any:
    """One spawned worker process (never forked: this process holds threads and connections)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


_DONE = object()


def prefetch(pages: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Yield ``pages`` while a background thread already fetches the next ones (at most ``depth``).

    The HTTP wait and JSON decoding of page N+1 overlap the mapping and the database commit of
    page N.  Only the thread reads the source while the loop runs; leaving the loop early stops
    the thread and waits for it, so the next phase may use the client again.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        buffer.put(page, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="perkbridge-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
        _close_quietly(pages)


def _trailing_id(value: Any) -> str | None:
    """``/v2/transactions/17/`` (or ``17``) → ``"17"``; ``None`` when there is no id."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().rstrip("/").rsplit("/", 1)[-1]
    return text if text.isdigit() else None


def _no_state(_conn: Connection) -> None:
    """Pages without a cursor to move (dead-letter retries)."""


def _stored(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in checkpoint.items() if k != "resumed"}


def _first_problem(issues: Sequence[MappingIssue], fallback: str) -> tuple[str, str]:
    for issue in issues:
        if issue.severity == "error":
            return issue_reason(issue), issue.reason
    return "unmappable", fallback
