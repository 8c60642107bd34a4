"""``/dashboard/deadletters``: dead letters filtered by reason, status and business, each with its
raw record redacted; retry and discard of one letter or a selection, each a POST to a
confirmation page, then a POST to confirm, with the CLI's semantics (``bridge.deadletters``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from bridge import deadletters
from bridge.dashboard.auth import FormDep, SessionDep
from bridge.dashboard.context import Dashboard, dashboard_of
from bridge.dashboard.web import render
from bridge.deadletters import DeadLetterChoiceError, RetryPlan, RetryResult
from bridge.errors import BridgeError, ConfigurationError, classify, describe_failure
from bridge.redaction import redact_text
from bridge.state.dead_letters import DeadLetter
from bridge.wiring import RunParts, perkville_client, secret_values, space_for

router = APIRouter()

PAGE_SIZE = 100
STATUSES = ("open", "resolved", "discarded", "all")
BASE = "/dashboard/deadletters"


def age(delta: timedelta) -> str:
    """A time span the way a table shows it: ``45 s``, ``12 min``, ``5 h 03 min``, ``3 d 4 h``."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass(frozen=True)
class LetterRow:
    """One dead letter as the pages show it: never its raw record as stored, only redacted."""

    letter: DeadLetter
    detail: str
    raw_json: str
    age: str


def letter_row(letter: DeadLetter, now: datetime, known: Iterable[str] = ()) -> LetterRow:
    shown = letter.redacted(known)
    raw = json.dumps(shown.raw, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return LetterRow(letter, shown.detail or "", raw, age(now - letter.created_at))


def _now(dashboard: Dashboard) -> datetime:
    return datetime.fromtimestamp(dashboard.clock(), UTC)


def _rows(dashboard: Dashboard, letters: Iterable[DeadLetter]) -> list[LetterRow]:
    now, known = _now(dashboard), secret_values(dashboard.settings)
    return [letter_row(d, now, known) for d in letters]


def _clean(value: str | None) -> str | None:
    """A query parameter, ``None`` when missing or blank (an empty filter is no filter)."""
    if value is None or not value.strip():
        return None
    return value.strip()


@router.get(BASE)
def deadletters_page(
    request: Request,
    session: SessionDep,
    reason: Annotated[str | None, Query()] = None,
    status: Annotated[str, Query()] = "open",
    business: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    dashboard = dashboard_of(request)
    reason, business = _clean(reason), _clean(business)
    if status not in STATUSES:
        status = "open"
    counts = dashboard.state.dead_letters.counts(business)
    by_reason: dict[str, int] = {}
    for each, reasons in counts.items():
        if status in ("all", each):
            for name, n in reasons.items():
                by_reason[name] = by_reason.get(name, 0) + n
    total = by_reason.get(reason, 0) if reason else sum(by_reason.values())
    letters = dashboard.state.dead_letters.list(
        business, status=None if status == "all" else status, reason=reason,
        limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE,
    )
    businesses = dashboard.businesses()

    def link(**changes: Any) -> str:
        """This list's URL with ``changes`` (the defaults left out: status open, page 1)."""
        params = {"reason": reason, "status": status, "business": business, "page": 1, **changes}
        shown = {k: v for k, v in params.items() if v is not None and (k, v) not in (("status", "open"), ("page", 1))}
        return f"{BASE}?{urlencode(shown)}" if shown else BASE

    return render(
        request, "deadletters.html",
        rows=_rows(dashboard, letters), by_reason=dict(sorted(by_reason.items())), total=total,
        reason=reason, status=status, business=business, businesses=businesses, statuses=STATUSES,
        page=page, pages=max(1, -(-total // PAGE_SIZE)), link=link,
        show_business=business is None and len(businesses) > 1,
    )


@dataclass
class Batch:
    """The chosen letters of one business: what one ``perkbridge deadletters … --business B --id …`` does."""

    business: str
    rows: list[LetterRow]
    plan: RetryPlan | None = None
    space: str = ""

    @property
    def ids(self) -> list[int]:
        return [r.letter.id for r in self.rows]

    def command(self, verb: str) -> str:
        return f"perkbridge deadletters {verb} --business {self.business} " + " ".join(
            f"--id {i}" for i in self.ids
        )


@dataclass
class Outcome:
    """What one batch's retry or discard did (``error``: why it did not run; nothing changed)."""

    batch: Batch
    rows: list[LetterRow] = field(default_factory=list)
    result: RetryResult | None = None
    discarded: int | None = None
    error: str | None = None


def chosen_ids(form: dict[str, list[str]]) -> list[int]:
    """The ids a form names: the row button's ``one``, else the ticked ``id`` boxes (``ValueError``: not ids)."""
    values = form.get("one") or form.get("id") or []
    ids = [int(v) for v in values if v.strip()]
    if any(i <= 0 for i in ids):
        raise ValueError("not an id")
    return list(dict.fromkeys(ids))


def batches(dashboard: Dashboard, ids: list[int], verb: str) -> list[Batch]:
    """The chosen letters by business, checked like the CLI checks them (``DeadLetterChoiceError``,
    and for a retry ``ConfigurationError`` when write-back letters lack their settings)."""
    state = dashboard.state
    deadletters.check_open(state, None, ids, verb)
    grouped: dict[str, list[DeadLetter]] = {}
    for letter in state.dead_letters.list(None, status=None, ids=ids):
        grouped.setdefault(letter.business, []).append(letter)
    out = []
    for business, letters in sorted(grouped.items()):
        batch = Batch(business, _rows(dashboard, letters), space=space_for(dashboard.settings, business))
        if verb == "retried":
            batch.plan = deadletters.plan_retry(state, dashboard.settings, business, ids=batch.ids)
        out.append(batch)
    return out


def perkville_problem(dashboard: Dashboard) -> str | None:
    """Why a retry cannot reach Perkville with these settings (``None``: it can)."""
    try:
        perkville_client(dashboard.settings).close()
    except ConfigurationError as exc:
        return _secret_free(dashboard, exc.message)
    return None


def _secret_free(dashboard: Dashboard, message: str) -> str:
    return redact_text(message, secret_values(dashboard.settings))


def _failure(dashboard: Dashboard, exc: Exception) -> str:
    known = exc if isinstance(exc, BridgeError) else classify(exc, dashboard.settings.database_url)
    return _secret_free(dashboard, known.message if known is not None else describe_failure(exc))


@dataclass(frozen=True)
class Action:
    """Retry or discard: its name in paths and pages, its past tense, and what it does to a batch."""

    name: str
    verb: str
    act: Callable[[Dashboard, Batch], Outcome]


def _choose(request: Request, form: dict[str, list[str]], action: Action) -> list[Batch] | HTMLResponse:
    """The batches a form chooses, or the page that says why there are none (nothing changed)."""
    dashboard = dashboard_of(request)

    def refused(message: str, status_code: int) -> HTMLResponse:
        return render(
            request, "deadletters_confirm.html", status_code=status_code,
            action=action.name, batches=[], refusal=message,
        )

    try:
        ids = chosen_ids(form)
    except ValueError:
        return refused("The form named something that is not a dead letter id.", 400)
    if not ids:
        return refused(f"No dead letter was selected: tick the ones to {action.name}.", 400)
    try:
        chosen = batches(dashboard, ids, action.verb)
    except (DeadLetterChoiceError, ConfigurationError) as exc:
        return refused(_secret_free(dashboard, exc.message), 409)
    problem = perkville_problem(dashboard) if action.name == "retry" else None
    if problem is not None:
        return refused(
            "Perkville is not configured for this dashboard, so nothing can be retried here: "
            f"{problem}. A retry needs the same PERKVILLE_* settings as perkbridge deadletters retry; "
            "discarding works without them.",
            503,
        )
    return chosen


def _confirm_page(request: Request, form: dict[str, list[str]], action: Action) -> HTMLResponse:
    """What the action would do to the chosen letters; changes nothing."""
    chosen = _choose(request, form, action)
    if isinstance(chosen, HTMLResponse):
        return chosen
    return render(request, "deadletters_confirm.html", action=action.name, batches=chosen, refusal=None)


def _done_page(request: Request, form: dict[str, list[str]], action: Action) -> HTMLResponse:
    """The action done, business by business (the letters checked again first), and its result."""
    chosen = _choose(request, form, action)
    if isinstance(chosen, HTMLResponse):
        return chosen
    dashboard = dashboard_of(request)
    outcomes = []
    for batch in chosen:
        try:
            outcome = action.act(dashboard, batch)
        except Exception as exc:  # noqa: BLE001 - shown on the page, like the CLI's one line
            outcome = Outcome(batch, error=_failure(dashboard, exc))
        outcome.rows = _rows(dashboard, dashboard.state.dead_letters.list(None, status=None, ids=batch.ids))
        outcomes.append(outcome)
    return render(
        request, "deadletters_done.html", status_code=409 if all(o.error for o in outcomes) else 200,
        action=action.name, outcomes=outcomes,
    )


def _retry(dashboard: Dashboard, batch: Batch) -> Outcome:
    parts = RunParts(dashboard.settings, dashboard.engine, batch.business)
    try:
        return Outcome(batch, result=deadletters.retry(parts, ids=batch.ids))
    finally:
        parts.close()


def _discard(dashboard: Dashboard, batch: Batch) -> Outcome:
    return Outcome(batch, discarded=deadletters.discard(dashboard.state, batch.business, ids=batch.ids))


ACTIONS = (Action("retry", "retried", _retry), Action("discard", "discarded", _discard))


def _add_routes(action: Action) -> None:
    """``POST …/{action}``: the confirmation page; ``POST …/{action}/confirm``: the action and its result."""

    def confirm(request: Request, form: FormDep) -> HTMLResponse:
        return _confirm_page(request, form, action)

    def run(request: Request, form: FormDep) -> HTMLResponse:
        return _done_page(request, form, action)

    router.add_api_route(f"{BASE}/{action.name}", confirm, methods=["POST"], name=f"deadletters_{action.name}")
    router.add_api_route(
        f"{BASE}/{action.name}/confirm", run, methods=["POST"], name=f"deadletters_{action.name}_confirm"
    )


for _action in ACTIONS:
    _add_routes(_action)
