"""Reconciliation pages: ``GET /dashboard/reconcile`` (totals, flagged members first, search,
pages), ``GET /dashboard/reconcile.csv`` (the same columns as ``reconcile --csv``, streamed, with
the page's filter) and ``GET /dashboard/members/{perkville_user_id}`` (a member's story: both
balances, the event history with transaction ids, the id map entry).

Every read is bounded: one page of ``bridge_reconciled`` (``bridge.state.reconciled``), one
member's rows, one page of the member's events.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from bridge.dashboard.auth import SessionDep
from bridge.dashboard.context import Dashboard, dashboard_of
from bridge.dashboard.web import SECURITY_HEADERS, render
from bridge.state import IdMapEntry, ReconciledMember
from bridge.state.reconciled import CSV_COLUMNS, FILTERS, TIER_CSV_COLUMNS
from perkamo_core.errors import NotFoundError
from perkamo_core.models import CustomerEvent

router = APIRouter()

PAGE_SIZE = 50
HISTORY_SIZE = 50
WALLET = "points"
MAX_QUERY = 200

BusinessQ = Annotated[str | None, Query(max_length=64)]
SearchQ = Annotated[str | None, Query(max_length=MAX_QUERY)]
FilterQ = Annotated[str | None, Query(max_length=16)]


@dataclass(frozen=True)
class Listing:
    """What the reconciliation page lists: a business, a search, a filter, a page."""

    business: str
    search: str
    only: str | None
    page: int

    def link(self, **changes: Any) -> str:
        """This listing's URL with ``changes`` (a new search or filter starts at page 1)."""
        values = {"business": self.business, "q": self.search, "only": self.only or "", "page": self.page}
        values.update(changes)
        if values["page"] == 1:
            values.pop("page")
        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _business(dashboard: Dashboard, asked: str | None) -> tuple[str | None, list[str]]:
    known = dashboard.businesses()
    if asked and asked.strip():
        return asked.strip(), known
    return (known[0] if known else None), known


def _filter(only: str | None) -> tuple[str | None, str | None]:
    """The filter, or ``None`` and a message when it is not one of ``FILTERS``."""
    if not only:
        return None, None
    if only not in FILTERS:
        return None, f"unknown filter {only!r}: showing every member (filters: {', '.join(FILTERS)})"
    return only, None


@router.get("/dashboard/reconcile", response_class=HTMLResponse)
def reconciliation(
    request: Request, session: SessionDep, business: BusinessQ = None, q: SearchQ = None,
    only: FilterQ = None, page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    dashboard = dashboard_of(request)
    chosen, known = _business(dashboard, business)
    chosen_filter, problem = _filter(only)
    if chosen is None:
        return render(request, "reconcile.html", business=None, businesses=known, totals=None, last_run=None,
                      members=[], total=0, listing=None, pages=0, problem=problem, filters=FILTERS)
    listing = Listing(chosen, (q or "").strip(), chosen_filter, page)
    results = dashboard.state.reconciled
    totals = results.totals(chosen)
    total = results.count(chosen, search=listing.search, only=listing.only)
    members = results.page(
        chosen, search=listing.search, only=listing.only, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    last_run = dashboard.state.runs.get(totals.last_run_id) if totals.last_run_id is not None else None
    return render(
        request, "reconcile.html", business=chosen, businesses=known, totals=totals, last_run=last_run,
        members=members, total=total, listing=listing, pages=max(1, -(-total // PAGE_SIZE)), problem=problem,
        filters=FILTERS,
    )


@router.get("/dashboard/reconcile.csv")
def reconciliation_csv(
    request: Request, session: SessionDep, business: BusinessQ = None, q: SearchQ = None,
    only: FilterQ = None,
) -> StreamingResponse:
    """Every member the page's filter selects, in page order, as ``reconcile --csv`` writes them."""
    dashboard = dashboard_of(request)
    chosen, _known = _business(dashboard, business)
    chosen_filter, _problem = _filter(only)
    business_id = chosen or ""
    results = dashboard.state.reconciled
    tiers = bool(chosen) and results.has_tiers(business_id)

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS + (TIER_CSV_COLUMNS if tiers else ()))
        if chosen:
            for n, member in enumerate(
                results.iter_members(business_id, search=(q or "").strip(), only=chosen_filter), start=1
            ):
                writer.writerow(member.csv_row(tiers))
                if n % 500 == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    name = f"reconcile-{''.join(ch for ch in business_id if ch.isalnum() or ch in '-_') or 'none'}.csv"
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=headers)


@dataclass
class MemberStory:
    """One member as the member page shows it."""

    business: str
    perkville_user_id: str
    customer_id: str | None
    result: ReconciledMember | None
    entry: IdMapEntry | None
    emails: list[str]
    perkamo_balance: Decimal | None
    """The wallet now, from the embedded core (``None``: no such customer there)."""
    level: Any
    events: list[CustomerEvent]
    older: int | None
    """The ``before`` of the next (older) page of events, when there is one."""

    @property
    def perkville_balance(self) -> Decimal | None:
        """Perkville's balance at the last reconcile (else the id map's, from the last sync)."""
        if self.result is not None:
            return self.result.perkville_balance
        return None if self.entry is None else self.entry.perkville_balance

    @property
    def difference(self) -> Decimal | None:
        if self.perkville_balance is None or self.perkamo_balance is None:
            return None
        return self.perkville_balance - self.perkamo_balance


def member_story(dashboard: Dashboard, business: str, perkville_user_id: str, before: int | None) -> MemberStory:
    state = dashboard.state
    result = state.reconciled.get(business, perkville_user_id)
    entry = state.id_map.get_many(business, [perkville_user_id]).get(perkville_user_id)
    customer_id = result.customer_id if result is not None else (entry.customer_id if entry is not None else None)
    staged = state.users.get_many(business, [perkville_user_id]).get(perkville_user_id) or {}
    story = MemberStory(business, perkville_user_id, customer_id, result, entry, _emails(staged), None, None, [], None)
    if customer_id is None:
        return story
    try:
        profile = dashboard.service.customer(dashboard.space, customer_id)
        events = dashboard.service.customer_events(
            dashboard.space, customer_id, limit=HISTORY_SIZE + 1, before_seq=before
        )
    except NotFoundError:
        return story  # not in the embedded core (yet), or a remote Perkamo
    balance = dashboard.service.wallet_balances(dashboard.space, WALLET, [customer_id]).get(customer_id)
    story.perkamo_balance = balance if balance is not None else Decimal(0)
    story.level = profile.get("level")
    story.events = events[:HISTORY_SIZE]
    story.older = events[HISTORY_SIZE - 1].seq if len(events) > HISTORY_SIZE else None
    return story


def _emails(staged: Any) -> list[str]:
    """The email addresses of a staged Perkville user record (and nothing else of it)."""
    found: list[str] = []
    if isinstance(staged, dict):
        items = staged.get("emails")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("email"), str):
                found.append(item["email"])
        if isinstance(staged.get("email"), str) and staged["email"] not in found:
            found.append(staged["email"])
    return found[:5]


@router.get("/dashboard/members/{perkville_user_id}", response_class=HTMLResponse)
def member(
    request: Request, session: SessionDep, perkville_user_id: str, business: BusinessQ = None,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    dashboard = dashboard_of(request)
    chosen, _known = _business(dashboard, business)
    story = member_story(dashboard, chosen, perkville_user_id, before) if chosen else None
    if story is None or (story.result is None and story.entry is None):
        return render(request, "member.html", status_code=404, story=None, business=chosen,
                      perkville_user_id=perkville_user_id, wallet=WALLET)
    return render(request, "member.html", story=story, business=chosen, perkville_user_id=perkville_user_id,
                  wallet=WALLET)
