"""``GET /dashboard``: per business, its last runs, what is running, cursors and lag, leases and who
holds them, open dead letters by reason, the last reconcile, write-back, and the learned rate; and,
with ``perkbridge worker`` on PostgreSQL, the job queue (depth, running jobs and their worker,
failed jobs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from bridge.dashboard.auth import SessionDep
from bridge.dashboard.context import Dashboard, dashboard_of
from bridge.dashboard.web import render
from bridge.queue.ops import queue_summary
from bridge.state import utcnow
from bridge.state.schema import runs
from bridge.state.stores import RunRecord, read_connection
from bridge.status import status_report

router = APIRouter()

RECENT_RUNS = 8
DIRECTIONS = ("import", "writeback", "reconcile")


@dataclass
class BusinessView:
    """One business's panel on the overview."""

    business: str
    report: dict[str, Any]
    latest: dict[str, RunRecord | None] = field(default_factory=dict)
    running: list[RunRecord] = field(default_factory=list)

    @property
    def open_letters(self) -> dict[str, int]:
        return dict(self.report["dead_letters"].get("open", {}))

    @property
    def max_lag(self) -> float | None:
        lags = [c["lag_seconds"] for c in self.report["cursors"] if c.get("lag_seconds") is not None]
        return max(lags) if lags else None


def record_rate(run: RunRecord) -> float | None:
    """Records read per second over the run (``None`` while it runs or when it read nothing)."""
    if not run.duration_ms or not run.counts.read:
        return None
    return run.counts.read / (run.duration_ms / 1000)


def business_view(dashboard: Dashboard, business: str) -> BusinessView:
    state = dashboard.state
    view = BusinessView(business, status_report(state, business, RECENT_RUNS))
    view.report["leases"] = [lease for lease in view.report["leases"] if business in lease["name"].split(":")]
    with read_connection(dashboard.engine) as c:
        for direction in DIRECTIONS:
            row = c.execute(
                select(runs.c.id).where(runs.c.business == business, runs.c.direction == direction)
                .order_by(runs.c.id.desc()).limit(1)
            ).first()
            view.latest[direction] = state.runs.get(row.id) if row is not None else None
        running = c.execute(
            select(runs.c.id).where(runs.c.business == business, runs.c.status == "running")
            .order_by(runs.c.id.desc()).limit(20)
        ).all()
    view.running = [record for (run_id,) in running if (record := state.runs.get(run_id)) is not None]
    return view


@router.get("/dashboard", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep) -> HTMLResponse:
    dashboard = dashboard_of(request)
    views = [business_view(dashboard, business) for business in dashboard.businesses()]
    return render(
        request, "overview.html", views=views, now=utcnow(), record_rate=record_rate,
        ceiling=dashboard.settings.perkville.requests_per_second, queue=queue_summary(dashboard.engine),
    )
