"""Reconcile: each connection's Perkville ``point_balance`` against the Perkamo ``points`` wallet.

Connections are read live from Perkville page by page; the matching Perkamo balances come from
the target (the embedded core's ``wallet_balances`` or the remote ``customer``).  ``repair``
emits one ``perkville.balance_adjusted`` event per mismatch with the id
``perkville:{business}:adjust:{perkville_user_id}:{n}`` (``n`` reserved in the id map first, so a
repeated repair never reuses a number) and the amount Perkville's balance minus Perkamo's as
measured now: a later pass that finds the member off again adjusts by the new difference, so
repeated repairs converge instead of adding up.  ``bridge.usecases.reconcile`` syncs first, under
the same lease, so a difference that unsynced rows explain is never repaired.

Given the reconcile run's id, ``compare`` stores each member's result in ``bridge_reconciled``
(``bridge.state.reconciled``, one upsert per page) and ``repair`` updates the rows it adjusted:
the dashboard's reconciliation page reads them.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

from sqlalchemy import Connection

from bridge.progress import NullProgress, Progress
from bridge.state import IdMapEntry, LeaseKeeper, ReconciledMember, StateStore, utcnow
from bridge.state.members import plain_decimal
from bridge.state.reconciled import CSV_COLUMNS, TIER_CSV_COLUMNS
from bridge.targets import Delivery, Target
from bridge.tiers import TierRow, perkamo_levels, tier_rows

# The CSV has CSV_COLUMNS, and TIER_CSV_COLUMNS after them when [tiers] is set (tier_status: ok or
# demoted): the dashboard's export writes the same columns from the stored results.


@dataclass(frozen=True)
class Mismatch:
    """One member whose balances differ; ``difference = perkville − perkamo``."""

    customer_id: str
    perkville_user_id: str
    perkville_balance: Decimal
    perkamo_balance: Decimal

    @property
    def difference(self) -> Decimal:
        return self.perkville_balance - self.perkamo_balance

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "perkville_user_id": self.perkville_user_id,
            "perkville_balance": plain_decimal(self.perkville_balance),
            "perkamo_balance": plain_decimal(self.perkamo_balance),
            "difference": plain_decimal(self.difference),
        }


@dataclass
class ReconcileReport:
    """The outcome; ``to_json`` is the contract shape of ``reconcile --json``."""

    checked: int = 0
    matched: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    repaired: int = 0
    remaining: list[Mismatch] = field(default_factory=list)
    pending: list[Mismatch] = field(default_factory=list)
    """Mismatches not repaired because new rows for the member arrived while it was checked."""
    repair_attempted: bool = False
    unreadable: int = 0
    perkville_total: Decimal = Decimal(0)
    perkamo_total: Decimal = Decimal(0)
    tiers_checked: int | None = None
    """With ``[tiers]``: members whose tier was compared (``None``: tiers are not configured)."""
    demoted: list[TierRow] = field(default_factory=list)
    """Members whose Perkamo level is below the level their Perkville level maps to."""

    @property
    def ok(self) -> bool:
        """No mismatch is left (after a repair, none of the re-checked members differs) and no
        member is demoted."""
        if self.demoted:
            return False
        if self.repair_attempted:
            return not self.remaining and not self.pending and self.unreadable == 0
        return not self.mismatches and self.unreadable == 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "checked": self.checked,
            "matched": self.matched,
            "mismatches": [m.to_json() for m in self.mismatches],
        }
        body["repaired"] = self.repaired
        if self.repair_attempted:
            body["remaining"] = [m.to_json() for m in self.remaining]
            body["pending"] = [m.to_json() for m in self.pending]
        body["unreadable"] = self.unreadable
        body["perkville_total"] = plain_decimal(self.perkville_total)
        body["perkamo_total"] = plain_decimal(self.perkamo_total)
        if self.tiers_checked is not None:
            body["tiers"] = {"checked": self.tiers_checked, "demoted": [row.to_json() for row in self.demoted]}
        return body


class Reconciler:
    """Compares and optionally repairs the balances of one business."""

    def __init__(
        self,
        *,
        state: StateStore,
        source: Any,
        target: Target,
        business: str,
        timezone: str = "UTC",
        id_strategy: str = "perkville_user",
        progress: Progress | None = None,
        tiers: Mapping[str, int] | None = None,
    ) -> None:
        self.tiers = dict(tiers or {})
        self.state = state
        self.source = source
        self.target = target
        self.business = business
        self.timezone = timezone
        self.id_strategy = id_strategy
        self.progress = progress or NullProgress()

    def compare(self, csv_out: IO[str] | None = None, *, run_id: int | None = None) -> ReconcileReport:
        """Every connection's balance against Perkamo's (``csv_out``: one row each).

        Without ``run_id`` this only reads. With it (the reconcile run), each page's results are
        stored in one statement, and once every connection was read the results of members it no
        longer saw are dropped.
        """
        from mapping.records import parse_connection

        started = self.state.clock()
        report = ReconcileReport()
        writer = csv.writer(csv_out) if csv_out is not None else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS + (TIER_CSV_COLUMNS if self.tiers else ()))
        if self.tiers:
            report.tiers_checked = 0
        self.progress.phase("reconcile")
        for page in self.source.iter_connections(self.business):
            pairs: list[tuple[str, Decimal]] = []
            level_names: dict[str, str | None] = {}
            for raw in page.objects:
                parsed = parse_connection(raw, timezone=self.timezone)
                record = parsed.record
                if record is None or record.point_balance is None:
                    report.unreadable += 1
                    continue
                pairs.append((record.user_id, record.point_balance))
                level_names[record.user_id] = record.level
            known = self.state.id_map.get_many(self.business, [uid for uid, _ in pairs])
            ids = {uid: self._customer_id(uid, known.get(uid)) for uid, _ in pairs}
            balances = self.target.balances(list(dict.fromkeys(ids.values())))
            tiers: dict[str, TierRow] = {}
            if self.tiers:
                levels = perkamo_levels(self.target, list(dict.fromkeys(ids.values())))
                rows = tier_rows([(ids[uid], uid, level_names[uid]) for uid, _ in pairs], self.tiers, levels)
                tiers = {row.perkville_user_id: row for row in rows}
                report.tiers_checked = (report.tiers_checked or 0) + len(rows)
                report.demoted.extend(row for row in rows if row.demoted)
            now = self.state.clock()
            results: dict[str, ReconciledMember] = {}
            for uid, perkville in pairs:
                cid = ids[uid]
                perkamo = balances.get(cid, Decimal(0))
                report.checked += 1
                report.perkville_total += perkville
                report.perkamo_total += perkamo
                status = "match" if perkville == perkamo else "mismatch"
                if status == "match":
                    report.matched += 1
                else:
                    report.mismatches.append(Mismatch(cid, uid, perkville, perkamo))
                tier = tiers.get(uid)
                result = ReconciledMember(
                    self.business, uid, cid, perkville, perkamo, status, run_id, now,
                    tier_status=None if tier is None else ("demoted" if tier.demoted else "ok"),
                    perkville_level=None if tier is None else tier.perkville_level,
                    mapped_level=None if tier is None else tier.mapped_level,
                    perkamo_level=None if tier is None else tier.perkamo_level,
                )
                results[uid] = result
                if writer is not None:
                    writer.writerow(result.csv_row(bool(self.tiers)))
            if run_id is not None:
                self.state.reconciled.record(list(results.values()))
            self.progress.advance("reconcile", len(page.objects), total=page.meta.get("total_count"))
        if run_id is not None:
            self.state.reconciled.prune(self.business, before=started)
        self.progress.done("reconcile", f"{report.matched}/{report.checked} balances match")
        return report

    def _customer_id(self, perkville_user_id: str, entry: IdMapEntry | None) -> str:
        if entry is not None:
            return entry.customer_id
        from mapping.ids import to_customer_id

        assigned = to_customer_id(perkville_user_id)
        return getattr(assigned, "customer_id", f"perkville:{perkville_user_id}")

    def repair(
        self, report: ReconcileReport, keeper: LeaseKeeper, *, pending: Collection[str] = (),
        run_id: int | None = None,
    ) -> None:
        """Adjust every mismatched member to Perkville's balance, except those in ``pending``
        (customer ids that got new rows while they were checked: their difference may be those
        rows, so they wait for the next reconcile). Under the import lease ``keeper`` holds.
        With ``run_id``, the stored results of these members say ``repaired`` (or ``mismatch``
        with the balance measured after, or ``pending``)."""
        from mapping.events import to_adjustment_event

        report.repair_attempted = True
        report.pending = [m for m in report.mismatches if m.customer_id in pending]
        todo = [m for m in report.mismatches if m.customer_id not in pending]
        now = utcnow()
        for start in range(0, len(todo), 100):
            chunk = todo[start : start + 100]
            numbers: dict[str, int] = {}
            with self.state.engine.begin() as conn:
                keeper.fence(conn)
                missing = [
                    m for m in chunk
                    if m.perkville_user_id not in self.state.id_map.get_many(
                        self.business, [m.perkville_user_id], conn=conn
                    )
                ]
                if missing:
                    self.state.id_map.put(
                        conn,
                        [
                            IdMapEntry(self.business, m.perkville_user_id, m.customer_id, self.id_strategy)
                            for m in missing
                        ],
                    )
                for m in chunk:
                    numbers[m.perkville_user_id] = self.state.id_map.next_adjustment(
                        conn, self.business, m.perkville_user_id
                    )
            events = []
            for m in chunk:
                result = to_adjustment_event(
                    business_id=self.business,
                    perkville_user_id=m.perkville_user_id,
                    n=numbers[m.perkville_user_id],
                    amount=m.difference,
                    occurred_at=now,
                    customer_id=m.customer_id,
                    reason="reconcile --repair",
                )
                events.extend(result.events)

            def commit(
                conn: Connection, _ids: Sequence[Delivery], outcomes: Sequence[Delivery]
            ) -> None:
                keeper.fence(conn)
                report.repaired += sum(1 for o in outcomes if o.ok)

            self.target.deliver([], events, commit)
        # Re-check what was repaired, so the report says whether anything is left.
        after = self.target.balances([m.customer_id for m in todo])
        report.remaining = [
            Mismatch(m.customer_id, m.perkville_user_id, m.perkville_balance, after.get(m.customer_id, Decimal(0)))
            for m in todo
            if after.get(m.customer_id, Decimal(0)) != m.perkville_balance
        ]
        if run_id is not None:
            outcomes: dict[str, tuple[Decimal, Decimal, str]] = {
                m.perkville_user_id: (m.perkville_balance, m.perkamo_balance, "pending") for m in report.pending
            }
            for m in todo:
                measured = after.get(m.customer_id, Decimal(0))
                outcomes[m.perkville_user_id] = (
                    m.perkville_balance, measured, "repaired" if measured == m.perkville_balance else "mismatch"
                )
            self.state.reconciled.settle(self.business, outcomes, run_id=run_id)

