"""Each member's latest reconcile result (``bridge_reconciled``): written a page at a time by the
reconciler, read a page at a time by the dashboard's reconciliation page and its CSV export.

Every read is bounded: a page (``LIMIT``/``OFFSET`` on ``ix_bridge_reconciled_order``), a count,
the totals (one ``GROUP BY``), one member, or a streamed export. Nothing loads every member.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)

from bridge.state.members import plain_decimal
from bridge.state.schema import as_utc, reconciled, runs, staged_users, utcnow
from bridge.state.sql import upsert
from bridge.state.stores import Clock, read_connection

STATUSES = ("match", "mismatch", "repaired", "pending")
"""A member's balance status: equal, different, adjusted by a repair, or left for the next reconcile."""

FILTERS = ("flagged", *STATUSES, "demoted")
"""What a listing can be narrowed to (``flagged``: different balances or a demoted tier)."""

CSV_COLUMNS = ("customer_id", "perkville_user_id", "perkville_balance", "perkamo_balance", "difference", "status")
TIER_CSV_COLUMNS = ("perkville_level", "mapped_level", "perkamo_level", "tier_status")
"""The columns of ``reconcile --csv`` (``bridge.reconcile`` writes the same ones)."""

EMAIL_MARKER = '"email":"'
"""How an email address starts in a staged user's compact JSON (``emails[].email`` or ``email``)."""


@dataclass(frozen=True)
class ReconciledMember:
    """One member's latest reconcile result; ``difference = perkville − perkamo``."""

    business: str
    perkville_user_id: str
    customer_id: str
    perkville_balance: Decimal
    perkamo_balance: Decimal
    status: str
    run_id: int | None
    checked_at: datetime
    tier_status: str | None = None
    perkville_level: str | None = None
    mapped_level: int | None = None
    perkamo_level: int | None = None

    @property
    def difference(self) -> Decimal:
        return self.perkville_balance - self.perkamo_balance

    @property
    def flagged(self) -> bool:
        """The member needs a look: the balances differ or the tier is demoted."""
        return self.difference != 0 or self.tier_status == "demoted"

    def csv_row(self, tiers: bool) -> list[str]:
        """The member as a row of ``CSV_COLUMNS`` (and ``TIER_CSV_COLUMNS`` with ``tiers``)."""
        row = [
            self.customer_id, self.perkville_user_id, str(plain_decimal(self.perkville_balance)),
            str(plain_decimal(self.perkamo_balance)), str(plain_decimal(self.difference)), self.status,
        ]
        if tiers:
            row += [
                self.perkville_level or "", "" if self.mapped_level is None else str(self.mapped_level),
                "" if self.perkamo_level is None else str(self.perkamo_level), self.tier_status or "",
            ]
        return row


@dataclass(frozen=True)
class ReconcileTotals:
    """The counts of a business's latest results, by status, and its latest reconcile run."""

    checked: int = 0
    matched: int = 0
    mismatched: int = 0
    repaired: int = 0
    pending: int = 0
    demoted: int = 0
    flagged: int = 0
    last_run_id: int | None = None
    """The business's latest reconcile run (it may have failed, or still run), if any."""
    last_run_at: datetime | None = None


class ReconcileResults:
    """The ``bridge_reconciled`` rows: bulk writes by the reconciler, bounded reads for the dashboard."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._ranged = engine.dialect.name == "sqlite"  # see _search

    # --- writes --------------------------------------------------------------------------------

    def record(self, members: Sequence[ReconciledMember], conn: Connection | None = None) -> None:
        """Upsert a page of results in one statement (in the caller's transaction with ``conn``)."""
        if not members:
            return
        rows = [_to_row(m) for m in members]
        columns = [name for name in rows[0] if name not in ("business", "perkville_user_id")]
        if conn is not None:
            upsert(conn, reconciled, rows, keys=("business", "perkville_user_id"), update=columns)
            return
        with self._engine.begin() as own:
            upsert(own, reconciled, rows, keys=("business", "perkville_user_id"), update=columns)

    def settle(
        self, business: str, outcomes: Mapping[str, tuple[Decimal, Decimal, str]], *, run_id: int | None
    ) -> None:
        """After a repair: ``perkville_user_id → (Perkville balance as compared, Perkamo balance
        now, status)``, one batch of updates (the tier comparison stays as it was)."""
        if not outcomes:
            return
        now = self._clock()
        stmt = (
            update(reconciled)
            .where(reconciled.c.business == bindparam("b_business"),
                   reconciled.c.perkville_user_id == bindparam("b_user"))
            .values(
                perkville_balance=bindparam("b_perkville"), perkamo_balance=bindparam("b_perkamo"),
                difference=bindparam("b_difference"), abs_difference=bindparam("b_abs"),
                status=bindparam("b_status"),
                flagged=case((reconciled.c.tier_status == "demoted", 1), else_=bindparam("b_flagged", type_=Integer)),
                run_id=bindparam("b_run"), checked_at=bindparam("b_at"),
            )
        )
        params = [
            {"b_business": business, "b_user": uid, "b_perkville": perkville, "b_perkamo": perkamo,
             "b_difference": perkville - perkamo, "b_abs": abs(perkville - perkamo), "b_status": status,
             "b_flagged": 0 if perkville == perkamo else 1, "b_run": run_id, "b_at": now}
            for uid, (perkville, perkamo, status) in outcomes.items()
        ]
        with self._engine.begin() as conn:
            conn.execute(stmt, params)

    def prune(self, business: str, before: datetime) -> int:
        """Drop results checked before ``before`` (members a complete reconcile no longer saw)."""
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(reconciled).where(reconciled.c.business == business, reconciled.c.checked_at < before)
            )
            return int(result.rowcount or 0)

    # --- reads ---------------------------------------------------------------------------------

    def page(
        self, business: str, *, search: str | None = None, only: str | None = None,
        limit: int = 50, offset: int = 0,
    ) -> list[ReconciledMember]:
        """Flagged members first (largest absolute difference first), then the rest."""
        stmt = _ordered(select(reconciled).where(*_filters(business, search, only, ranged=self._ranged)), search)
        with read_connection(self._engine) as conn:
            rows = conn.execute(stmt.limit(max(limit, 0)).offset(max(offset, 0))).mappings()
            return [_to_member(row) for row in rows]

    def count(self, business: str, *, search: str | None = None, only: str | None = None) -> int:
        clauses = _filters(business, search, only, ranged=self._ranged)
        stmt = select(func.count()).select_from(reconciled).where(*clauses)
        with read_connection(self._engine) as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def iter_members(
        self, business: str, *, search: str | None = None, only: str | None = None, batch: int = 1000
    ) -> Iterator[ReconciledMember]:
        """Every matching member in page order, streamed ``batch`` rows at a time (the CSV export)."""
        stmt = _ordered(select(reconciled).where(*_filters(business, search, only, ranged=self._ranged)), search)
        with read_connection(self._engine) as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for row in result.mappings():
                yield _to_member(row)

    def get(self, business: str, perkville_user_id: str) -> ReconciledMember | None:
        stmt = select(reconciled).where(
            reconciled.c.business == business, reconciled.c.perkville_user_id == perkville_user_id
        )
        with read_connection(self._engine) as conn:
            row = conn.execute(stmt).mappings().first()
            return None if row is None else _to_member(row)

    def has_tiers(self, business: str) -> bool:
        """Whether any result carries a tier comparison (the CSV then has the tier columns)."""
        stmt = (
            select(reconciled.c.perkville_user_id)
            .where(reconciled.c.business == business, reconciled.c.tier_status.is_not(None))
            .limit(1)
        )
        with read_connection(self._engine) as conn:
            return conn.execute(stmt).first() is not None

    def totals(self, business: str) -> ReconcileTotals:
        """Counts by status (``ix_bridge_reconciled_status`` covers them), the flagged and demoted
        members (through the flagged part of ``ix_bridge_reconciled_order``) and the business's
        latest reconcile run."""
        by_status: dict[str, int] = {}
        flagged_only = (reconciled.c.business == business, reconciled.c.flagged == 1)
        with read_connection(self._engine) as conn:
            for status, n in conn.execute(
                select(reconciled.c.status, func.count())
                .where(reconciled.c.business == business)
                .group_by(reconciled.c.status)
            ):
                by_status[str(status)] = int(n)
            flagged, demoted = conn.execute(
                select(func.count(), func.coalesce(func.sum(case((reconciled.c.tier_status == "demoted", 1), else_=0)), 0))
                .where(*flagged_only)
            ).one()
            last = conn.execute(
                select(runs.c.id, runs.c.started_at)
                .where(runs.c.business == business, runs.c.direction == "reconcile")
                .order_by(runs.c.id.desc())
                .limit(1)
            ).first()
        return ReconcileTotals(
            checked=sum(by_status.values()),
            matched=by_status.get("match", 0),
            mismatched=by_status.get("mismatch", 0),
            repaired=by_status.get("repaired", 0),
            pending=by_status.get("pending", 0),
            demoted=int(demoted or 0),
            flagged=int(flagged or 0),
            last_run_id=None if last is None else int(last.id),
            last_run_at=None if last is None else as_utc(last.started_at),
        )


def _ordered(stmt: Any, search: str | None) -> Any:
    # One direction throughout, so ix_bridge_reconciled_order serves it walked backwards. A search
    # sorts its (few) matches instead: ``flagged + 0`` is not the indexed column, so the planner
    # finds them through the id indexes rather than walking every member in order.
    flagged = reconciled.c.flagged + 0 if (search or "").strip() else reconciled.c.flagged
    return stmt.order_by(
        flagged.desc(), reconciled.c.abs_difference.desc(), reconciled.c.perkville_user_id.desc()
    )


def _filters(
    business: str, search: str | None, only: str | None, *, ranged: bool
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [reconciled.c.business == business]
    if only:
        if only not in FILTERS:
            raise ValueError(f"unknown filter {only!r}: one of {', '.join(FILTERS)}")
        if only == "flagged":
            clauses.append(reconciled.c.flagged == 1)
        elif only == "demoted":
            clauses.append(reconciled.c.tier_status == "demoted")
        else:
            clauses.append(reconciled.c.status == only)
    query = (search or "").strip()
    if query:
        clauses.append(_search(business, query, ranged=ranged))
    return clauses


def _search(business: str, query: str, *, ranged: bool) -> ColumnElement[bool]:
    """The members whose Perkville user id or customer id is ``query`` or starts with it; with an
    ``@``, also those whose staged Perkville user has an email starting with it.

    ``ranged`` (SQLite, whose text compares byte by byte) adds the range of ids that start with
    ``query``, so the primary key and ``ix_bridge_reconciled_customer`` find them without a scan.
    PostgreSQL's collations do not order every id with a prefix inside that range, so there the
    prefix test stands alone.
    """
    matches = [_prefix(reconciled.c.perkville_user_id, query, ranged),
               _prefix(reconciled.c.customer_id, query, ranged)]
    if "@" in query:
        # As the staged record's compact JSON spells it (orjson: no spaces, JSON escapes).
        needle = EMAIL_MARKER + orjson.dumps(query.lower()).decode()[1:-1]
        users = select(staged_users.c.perkville_user_id).where(
            staged_users.c.business == business,
            func.lower(staged_users.c.raw).contains(needle, autoescape=True),
        )
        matches.append(reconciled.c.perkville_user_id.in_(users))
    return or_(*matches)


def _prefix(column: Any, query: str, ranged: bool) -> ColumnElement[bool]:
    starts: ColumnElement[bool] = column.startswith(query, autoescape=True)
    if not ranged:
        return starts
    return and_(column >= query, column < query + "\U0010ffff", starts)


def _to_row(m: ReconciledMember) -> dict[str, Any]:
    difference = m.difference
    return {
        "business": m.business,
        "perkville_user_id": m.perkville_user_id,
        "customer_id": m.customer_id,
        "perkville_balance": m.perkville_balance,
        "perkamo_balance": m.perkamo_balance,
        "difference": difference,
        "abs_difference": abs(difference),
        "status": m.status,
        "flagged": 1 if m.flagged else 0,
        "tier_status": m.tier_status,
        "perkville_level": m.perkville_level,
        "mapped_level": m.mapped_level,
        "perkamo_level": m.perkamo_level,
        "run_id": m.run_id,
        "checked_at": m.checked_at,
    }


def _decimal(value: Any) -> Decimal:
    return plain_decimal(Decimal(str(value)))


def _to_member(row: Mapping[str, Any]) -> ReconciledMember:
    checked_at = as_utc(row["checked_at"])
    assert checked_at is not None
    return ReconciledMember(
        business=row["business"],
        perkville_user_id=row["perkville_user_id"],
        customer_id=row["customer_id"],
        perkville_balance=_decimal(row["perkville_balance"]),
        perkamo_balance=_decimal(row["perkamo_balance"]),
        status=row["status"],
        run_id=row["run_id"],
        checked_at=checked_at,
        tier_status=row["tier_status"],
        perkville_level=row["perkville_level"],
        mapped_level=row["mapped_level"],
        perkamo_level=row["perkamo_level"],
    )


__all__ = [
    "CSV_COLUMNS",
    "FILTERS",
    "STATUSES",
    "TIER_CSV_COLUMNS",
    "ReconcileResults",
    "ReconcileTotals",
    "ReconciledMember",
]
