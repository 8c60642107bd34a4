"""What a run command does, once: the CLI's commands and the scheduler's jobs both call these.

Each function takes built parts (pipeline, reconciler, …) and composes them under the right
lease; building them from the settings is ``bridge.wiring``'s job.
"""

from __future__ import annotations

import threading
from typing import IO

from bridge.leased import leased
from bridge.pipeline import Mode, Pipeline, RunOptions
from bridge.pipeline.options import DIRECTION
from bridge.reconcile import Reconciler, ReconcileReport


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

    Without ``repair`` or ``sync_first`` this only reads. Otherwise, under the business's
    import lease (so no other sync runs meanwhile): a sync pass brings in every row Perkville
    holds, then the comparison; with ``repair`` and mismatches, a second sync pass shows which
    members got new rows while they were compared (Perkville's balance may already count
    them), and only the other members are adjusted, to Perkville's balance as compared. The
    members left out are reported ``pending``; the next reconcile checks them again.
    """
    if not repair and not sync_first:
        return reconciler.compare(csv_out)
    business, config = pipeline.business, pipeline.config
    sync = RunOptions(kind="sync", mode=mode)
    with leased(
        pipeline.state, business, DIRECTION, lease_seconds=config.lease_seconds,
        wait=wait, timeout=timeout, stop=stop,
    ) as keeper:
        pipeline.run_leased(sync, keeper)
        report = reconciler.compare(csv_out)
        if repair and report.mismatches and not pipeline.stop.is_set():
            arrived = pipeline.run_leased(sync, keeper).applied_to
            reconciler.repair(report, keeper, pending=arrived)
        return report
