"""What a run command does, once: the CLI's commands and the scheduler's jobs both call these.

Each function takes built parts (pipeline, reconciler, …) and composes them under the right
lease; building them from the settings is ``bridge.wiring``'s job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Engine

from bridge.errors import ConfigurationError, classify, describe_failure
from bridge.leased import leased
from bridge.pipeline import Mode, Pipeline, RunOptions, RunSummary
from bridge.pipeline.options import DIRECTION
from bridge.reconcile import Reconciler, ReconcileReport
from bridge.sources import PerkvilleWriter, request_rate
from bridge.state import utcnow
from bridge.wiring import core_service, open_state, perkville_client, writeback_config
from bridge.writeback import Writeback, WritebackSummary
from config import Settings


@dataclass
class SyncResult:
    """A sync pass and the write-back pass after it (``None`` when write-back is off)."""

    run: RunSummary
    writeback: WritebackSummary | None = None

    def to_json(self) -> dict[str, Any]:
        """The contract shape of ``sync --json`` (the write-back counts added when it ran)."""
        body = self.run.to_json()
        if self.writeback is not None:
            body["written_back"] = self.writeback.written_back
            body["writeback_dead_lettered"] = self.writeback.dead_lettered
        return body


def sync(
    pipeline: Pipeline,
    settings: Settings,
    engine: Engine,
    *,
    space: str,
    client: PerkvilleWriter | None = None,
    wait: bool = False,
) -> SyncResult:
    """One incremental pass (changed members, new and voided transactions), then, with write-back
    enabled and no stop requested, one write-back pass: both directions, as ``perkbridge sync``
    and the scheduled sync job run them."""
    run = pipeline.run(RunOptions(kind="sync", mode=settings.sync.mode, wait=wait))
    if not settings.writeback.enabled or pipeline.stop.is_set():
        return SyncResult(run)
    back = writeback(
        settings, engine, business=pipeline.business, space=space, stop=pipeline.stop,
        client=client, wait=wait,
    )
    return SyncResult(run, back)


def writeback(
    settings: Settings,
    engine: Engine,
    *,
    business: str,
    space: str | None = None,
    stop: threading.Event | None = None,
    client: PerkvilleWriter | None = None,
    wait: bool = False,
) -> WritebackSummary:
    """One write-back pass for one business (Perkamo's outbox → Perkville).

    Write-back reads the embedded core's outbox, so it needs ``PERKAMO_TARGET=embedded``.
    ``client``: an open Perkville client to reuse (else one is opened and closed here).
    """
    if settings.perkamo_target != "embedded":
        raise ConfigurationError(
            "write-back reads the embedded core's outbox: it needs PERKAMO_TARGET=embedded"
        )
    service = core_service(engine)
    config = writeback_config(settings, business, space=space)
    service.ensure_space(config.space)

    def run(writer: PerkvilleWriter) -> WritebackSummary:
        return Writeback(
            state=open_state(engine), outbox=service, client=writer, config=config, stop=stop
        ).run(wait=wait)

    if client is not None:
        return run(client)
    with perkville_client(settings) as own:
        return run(own)


def reconcile(
    pipeline: Pipeline,
    reconciler: Reconciler,
    *,
    mode: Mode,
    repair: bool = False,
    sync_first: bool = False,
    csv_out: IO[str] | None = None,
    wait: bool = False,
    timeout: float | None = None,
    stop: threading.Event | None = None,
) -> ReconcileReport:
    """Compare every member's balances; with ``repair``, adjust what differs.

    Without ``repair`` or ``sync_first`` this only reads Perkville and Perkamo. Otherwise, under
    the business's import lease (so no other sync runs meanwhile): a sync pass brings in every
    row Perkville holds, then the comparison; with ``repair`` and mismatches, a second sync pass
    shows which members got new rows while they were compared (Perkville's balance may already
    count them), and only the other members are adjusted, to Perkville's balance as compared.
    The members left out are reported ``pending``; the next reconcile checks them again.

    The reconcile is logged as a run (direction ``reconcile``) that starts when the comparison
    does, so each member's stored result (``bridge_reconciled``) carries its id; a comparison
    that fails ends the run ``failed`` (``interrupted`` on Ctrl-C) and its error propagates as it is.
    """
    run = _ReconcileRun(pipeline, utcnow())
    try:
        report = _reconcile(
            pipeline, reconciler, run, mode=mode, repair=repair, sync_first=sync_first,
            csv_out=csv_out, wait=wait, timeout=timeout, stop=stop,
        )
    except BaseException as exc:
        run.abort(exc)
        raise
    run.finish(report, rate=request_rate(reconciler.source))
    return report


RECONCILE_DIRECTION = "reconcile"


def reconcile_details(report: ReconcileReport, rate: float | None = None) -> dict[str, Any]:
    """A finished reconcile's figures (no member ids) for its run's details, which status and
    ``/metrics`` read; the run ends ``succeeded`` when balances match, else ``mismatched``.  A
    reconcile reads nothing into the ledger, so its record counters stay 0; its Perkville
    requests are not counted here (its sync passes, on the same client, count their own)."""
    left = len(report.remaining) + len(report.pending) if report.repair_attempted else len(report.mismatches)
    details: dict[str, Any] = {
        "checked": report.checked, "matched": report.matched, "mismatches": left,
        "found": len(report.mismatches), "repaired": report.repaired, "unreadable": report.unreadable,
        "demoted": len(report.demoted),
    }
    if rate is not None:
        details["request_rate"] = rate  # what the budget allows now, as runs record it
    return details


class _ReconcileRun:
    """The run a reconcile is logged as: started just before the comparison (after the sync
    pass that precedes it, if any), dated from when the reconcile began."""

    def __init__(self, pipeline: Pipeline, started: datetime) -> None:
        self.state = pipeline.state
        self.business = pipeline.business
        self.target = pipeline.config.target_kind
        self.secrets = pipeline.config.secrets
        self.started = started
        self.run_id: int | None = None

    def start(self) -> int:
        self.run_id = self.state.runs.start(
            self.business, direction=RECONCILE_DIRECTION, kind="reconcile", target=self.target,
            details={}, started_at=self.started,
        )
        return self.run_id

    def finish(self, report: ReconcileReport, *, rate: float | None) -> None:
        run_id = self.run_id if self.run_id is not None else self.start()
        details = reconcile_details(report, rate)
        self.state.runs.finish(run_id, "succeeded" if report.ok else "mismatched", details=details)

    def abort(self, exc: BaseException) -> None:
        """End a started run ``failed`` (``interrupted``) with a secret-free message."""
        if self.run_id is None:
            return
        if isinstance(exc, KeyboardInterrupt):
            status, message = "interrupted", "interrupted by the operator"
        else:
            status, message = "failed", describe_failure(classify(exc) or exc)
        try:
            self.state.runs.finish(self.run_id, status, error=message, secrets=self.secrets)
        except Exception:  # noqa: BLE001 - the database may be what failed; the caller reports exc
            pass


def _reconcile(
    pipeline: Pipeline,
    reconciler: Reconciler,
    run: _ReconcileRun,
    *,
    mode: Mode,
    repair: bool,
    sync_first: bool,
    csv_out: IO[str] | None,
    wait: bool,
    timeout: float | None,
    stop: threading.Event | None,
) -> ReconcileReport:
    if not repair and not sync_first:
        return reconciler.compare(csv_out, run_id=run.start())
    business, config = pipeline.business, pipeline.config
    sync = RunOptions(kind="sync", mode=mode)
    with leased(
        pipeline.state, business, DIRECTION, lease_seconds=config.lease_seconds,
        wait=wait, timeout=timeout, stop=stop,
    ) as keeper:
        pipeline.run_leased(sync, keeper)
        run_id = run.start()
        report = reconciler.compare(csv_out, run_id=run_id)
        if repair and report.mismatches and not pipeline.stop.is_set():
            arrived = pipeline.run_leased(sync, keeper).applied_to
            reconciler.repair(report, keeper, pending=arrived, run_id=run_id)
        return report
