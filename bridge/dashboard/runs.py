"""The runs: ``GET /dashboard/runs`` (the log, filtered and paged) and ``/dashboard/runs/{id}``
(counts, phases, issues, log), its live ``progress.json``, its rollback (dry run, then confirm:
``bridge.rollback``, as ``perkbridge rollback --run``) and its signed audit pack
(``bridge.audit.export.export_run``, as ``perkbridge audit export``)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from bridge.dashboard.auth import FormDep, SessionDep
from bridge.dashboard.context import Dashboard, dashboard_of
from bridge.dashboard.web import SECURITY_HEADERS, render
from bridge.errors import BridgeError, classify, describe_failure
from bridge.redaction import redact_message
from bridge.state import DeadLetter, RunRecord, utcnow

router = APIRouter()

PAGE_SIZE = 50
LETTERS_SHOWN = 100
PLAN_ROWS_SHOWN = 200
KEY_SETTING = "[audit] private_key_path (or PERKBRIDGE_AUDIT_KEY)"


# ------------------------------------------------------------------------------------- views


def elapsed_ms(run: RunRecord, now: datetime | None = None) -> int:
    """The run's duration, or how long it has been running."""
    if run.duration_ms is not None:
        return int(run.duration_ms)
    return max(int(((now or utcnow()) - run.started_at).total_seconds() * 1000), 0)


def record_rate(run: RunRecord, now: datetime | None = None) -> float | None:
    """Records read per second over the run (so far, while it runs); ``None`` before any."""
    ms = elapsed_ms(run, now)
    if not run.counts.read or ms <= 0:
        return None
    return round(run.counts.read / (ms / 1000), 1)


def phases_of(run: RunRecord) -> list[dict[str, Any]]:
    """The phases the run recorded (``details.progress``), each with its share done (0–1 or None)."""
    progress = run.details.get("progress")
    raw = progress.get("phases") if isinstance(progress, dict) else None
    out = []
    for phase in raw if isinstance(raw, list) else []:
        if not isinstance(phase, dict) or "name" not in phase:
            continue
        done, total = phase.get("done") or 0, phase.get("total")
        share: float | None = None
        if phase.get("finished"):
            share = 1.0
        elif isinstance(total, int) and total > 0:
            share = min(done / total, 1.0)
        out.append({**phase, "share": share})
    return out


def progress_body(run: RunRecord) -> dict[str, Any]:
    """What ``progress.json`` answers: the run's status, counters and phases now."""
    progress = run.details.get("progress")
    return {
        "run_id": run.id,
        "status": run.status,
        "running": run.status == "running",
        "counts": run.counts.as_dict(),
        "elapsed_ms": elapsed_ms(run),
        "rate": record_rate(run),
        "phases": phases_of(run),
        "pace": progress.get("pace") if isinstance(progress, dict) else None,
        "updated_at": progress.get("updated_at") if isinstance(progress, dict) else None,
    }


@dataclass
class RunIssues:
    """What went wrong or needs a look in one run."""

    error: str | None
    notes: list[str]
    letters: list[DeadLetter]
    letters_total: int
    by_reason: dict[str, int] = field(default_factory=dict)
    warnings: int = 0

    @property
    def any(self) -> bool:
        return bool(self.error or self.letters_total or self.warnings)


def issues_of(dashboard: Dashboard, run: RunRecord, log: list[dict[str, Any]]) -> RunIssues:
    letters, total = dashboard.state.dead_letters.of_run(run.id, limit=LETTERS_SHOWN)
    by_reason: dict[str, int] = {}
    for letter in letters:
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    notes = [str(n) for n in run.details.get("notes") or [] if n]
    return RunIssues(
        error=run.error, notes=notes, letters=list(letters), letters_total=total, by_reason=by_reason,
        warnings=sum(1 for line in log if line.get("level") in ("warning", "error", "critical")),
    )


def log_of(run: RunRecord) -> list[dict[str, Any]]:
    """The run's log: its kept warning and error lines and its phases' starts and ends, by time."""
    lines = [dict(line) for line in run.details.get("log") or [] if isinstance(line, dict)]
    for phase in phases_of(run):
        if phase.get("started_at"):
            lines.append({"at": phase["started_at"], "level": "info", "logger": "phase",
                          "message": f"{phase['name']} started"})
        if phase.get("finished_at"):
            summary = f": {phase['summary']}" if phase.get("summary") else ""
            lines.append({"at": phase["finished_at"], "level": "info", "logger": "phase",
                          "message": f"{phase['name']} done, {phase.get('done', 0):,} records{summary}"})
    return sorted(lines, key=lambda line: str(line.get("at") or ""))


def rollback_refusal(dashboard: Dashboard, run: RunRecord) -> str | None:
    """Why the run cannot be rolled back (``bridge.rollback.check_run``'s words), or None."""
    from bridge.rollback import check_run

    if run.status == "running":
        return f"run {run.id} is still running; roll it back once it has ended"
    try:
        check_run(dashboard.state, run.id)
    except BridgeError as exc:
        return exc.message
    return None


def _not_found(request: Request, run_id: int) -> HTMLResponse:
    return render(request, "run_missing.html", status_code=404, run_id=run_id)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    return next(iter(form.get(name, [])), None)


# ------------------------------------------------------------------------------------ routes


@router.get("/dashboard/runs", response_class=HTMLResponse)
def run_list(
    request: Request,
    session: SessionDep,
    business: Annotated[str | None, Query()] = None,
    direction: Annotated[str | None, Query()] = None,
    status: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    dashboard = dashboard_of(request)
    chosen = {"business": business or None, "direction": direction or None, "status": status or None}
    found, total = dashboard.state.runs.listing(**chosen, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    now = utcnow()
    return render(
        request, "runs.html", runs=found, total=total, page=page, pages=max((total - 1) // PAGE_SIZE + 1, 1),
        chosen=chosen, businesses=dashboard.businesses(), directions=dashboard.state.runs.values("direction"),
        statuses=dashboard.state.runs.values("status"), rate=lambda r: record_rate(r, now),
        elapsed=lambda r: elapsed_ms(r, now),
    )


@router.get("/dashboard/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep) -> HTMLResponse:
    dashboard = dashboard_of(request)
    run = dashboard.state.runs.get(run_id)
    if run is None:
        return _not_found(request, run_id)
    log = log_of(run)
    return render(
        request, "run.html", run=run, phases=phases_of(run), issues=issues_of(dashboard, run, log), log=log,
        rate=record_rate(run), elapsed=elapsed_ms(run), refusal=rollback_refusal(dashboard, run),
        audit_key=bool(dashboard.settings.audit.private_key_path), key_setting=KEY_SETTING,
        rolled_back=run.details.get("rolls_back"),
    )


@router.get("/dashboard/runs/{run_id}/progress.json")
def run_progress(request: Request, run_id: int, session: SessionDep) -> JSONResponse:
    run = dashboard_of(request).state.runs.get(run_id)
    if run is None:
        return JSONResponse({"error": f"no run {run_id}"}, status_code=404, headers=SECURITY_HEADERS)
    return JSONResponse(progress_body(run), headers=SECURITY_HEADERS)


@router.post("/dashboard/runs/{run_id}/rollback", response_class=HTMLResponse)
def rollback_dry_run(request: Request, run_id: int, form: FormDep) -> HTMLResponse:
    """The dry run: what the rollback would reverse, and the confirm button (nothing written)."""
    from bridge.rollback import plan_rollback, refusal_message

    dashboard = dashboard_of(request)
    run = dashboard.state.runs.get(run_id)
    if run is None:
        return _not_found(request, run_id)
    refusal = rollback_refusal(dashboard, run)  # check_run's reasons, and "still running"
    if refusal is not None:
        return _rollback_page(request, run, refusal=refusal)
    try:
        plan = plan_rollback(dashboard.engine, dashboard.state, run)
    except BridgeError as exc:
        return _rollback_page(request, run, refusal=exc.message)
    shortfalls = plan.shortfalls()
    return _rollback_page(
        request, run, plan=plan.to_json(), shortfall=refusal_message(run_id, shortfalls) if shortfalls else None
    )


@router.post("/dashboard/runs/{run_id}/rollback/confirm", response_class=HTMLResponse)
def rollback_confirm(request: Request, run_id: int, form: FormDep) -> Response:
    """The rollback itself (``bridge.rollback.run_rollback``), left going in the background once
    it is recorded: the answer redirects to the rollback run's page, which follows it live. A
    refusal (another run holds the lease, a shortfall) is answered on this page, nothing done."""
    from bridge.rollback import run_rollback
    from bridge.wiring import secret_values

    dashboard = dashboard_of(request)
    run = dashboard.state.runs.get(run_id)
    if run is None:
        return _not_found(request, run_id)
    allow_negative = _one(form, "allow_negative") == "1"

    def rollback(stop: threading.Event, started: Callable[[int], None]) -> object:
        return run_rollback(
            dashboard.engine, dashboard.state, dashboard.service, run_id,
            lease_seconds=dashboard.settings.schedule.lease_seconds, allow_negative=allow_negative,
            stop=stop, secrets=secret_values(dashboard.settings), on_start=started,
        )

    try:
        rollback_run = dashboard.background.start(f"rollback-{run_id}", rollback)
    except BridgeError as exc:
        return _rollback_page(request, run, refusal=exc.message)
    return RedirectResponse(f"/dashboard/runs/{rollback_run}", status_code=303, headers=SECURITY_HEADERS)


def _rollback_page(
    request: Request, run: RunRecord, *, plan: dict[str, Any] | None = None, refusal: str | None = None,
    shortfall: str | None = None,
) -> HTMLResponse:
    """The rollback page in one of its states: refused (409) or the dry run."""
    return render(
        request, "rollback.html", status_code=409 if refusal else 200, run=run, plan=plan, refusal=refusal,
        shortfall=shortfall, shown=PLAN_ROWS_SHOWN,
    )


@router.get("/dashboard/runs/{run_id}/audit.zip")
def audit_pack(request: Request, run_id: int, session: SessionDep) -> Response:
    """The run's signed audit pack, built as ``perkbridge audit export`` builds it."""
    from importlib.metadata import version

    from bridge.audit.export import export_run
    from bridge.audit.ledger import LedgerUnavailable
    from bridge.audit.pack import PackError
    from bridge.audit.signing import KeyFileError
    from bridge.rollback import UnknownRunError

    dashboard = dashboard_of(request)
    key = dashboard.settings.audit.private_key_path
    if not key:
        return _plain(f"no audit signing key configured: set {KEY_SETTING}, then reload", 409)
    with tempfile.TemporaryDirectory(prefix="perkbridge-audit-") as folder:
        out = Path(folder) / f"run-{run_id}.zip"
        try:
            export_run(
                settings=dashboard.settings, engine=dashboard.engine, run_id=run_id, space=None,
                private_key=Path(key).expanduser(), out=out, exported_at=datetime.now(UTC),
                tool_version=version("perkbridge"),
            )
        except UnknownRunError as exc:
            return _plain(exc.message, 404)
        except KeyFileError as exc:
            return _plain(str(exc), 409)
        except (LedgerUnavailable, PackError) as exc:
            return _plain(f"run {run_id}: {exc}", 409)
        except Exception as exc:  # noqa: BLE001 - Perkville (reconcile.csv) or the database failed
            from bridge.wiring import secret_values

            known = classify(exc)
            return _plain(redact_message(describe_failure(known or exc), secret_values(dashboard.settings)), 503)
        body = out.read_bytes()
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="perkbridge-run-{run_id}-audit.zip"'}
    return Response(body, media_type="application/zip", headers=headers)


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain", headers=SECURITY_HEADERS)
