"""Reconcile: each connection's Perkville ``point_balance`` against the Perkamo ``points`` wallet.

Connections are read live from Perkville page by page; the matching Perkamo balances come from
the target (the embedded core's ``wallet_balances`` or the remote ``customer``).  ``repair``
emits one ``perkville.balance_adjusted`` event per mismatch with the id
``perkville:{business}:adjust:{perkville_user_id}:{n}`` (``n`` reserved in the id map first, so a
repeated repair never reuses a number), which makes the next reconcile pass.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import IO, Any

from sqlalchemy import Connection

from bridge.progress import NullProgress, Progress
from bridge.state import IdMapEntry, LeaseKeeper, StateStore, lease_name, new_owner_id, utcnow
from bridge.state.stores import plain_decimal
from bridge.targets import Delivery, Target

CSV_COLUMNS = (
    "customer_id",
    "perkville_user_id",
    "perkville_balance",
    "perkamo_balance",
    "difference",
    "status",
)


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
    unreadable: int = 0
    perkville_total: Decimal = Decimal(0)
    perkamo_total: Decimal = Decimal(0)

    @property
    def ok(self) -> bool:
        """No mismatch is left (after a repair, none of the re-checked members differs)."""
        if self.repaired:
            return not self.remaining and self.unreadable == 0
        return not self.mismatches and self.unreadable == 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "checked": self.checked,
            "matched": self.matched,
            "mismatches": [m.to_json() for m in self.mismatches],
        }
        body["repaired"] = self.repaired
        if self.repaired:
            body["remaining"] = [m.to_json() for m in self.remaining]
        body["unreadable"] = self.unreadable
        body["perkville_total"] = plain_decimal(self.perkville_total)
        body["perkamo_total"] = plain_decimal(self.perkamo_total)
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
        lease_seconds: int = 120,
        progress: Progress | None = None,
    ) -> None:
        self.state = state
        self.source = source
        self.target = target
        self.business = business
        self.timezone = timezone
        self.id_strategy = id_strategy
        self.lease_seconds = lease_seconds
        self.progress = progress or NullProgress()

    def run(
        self, *, repair: bool = False, csv_out: IO[str] | None = None, wait: bool = False
    ) -> ReconcileReport:
        """Compare every connection; with ``repair`` (under the import lease) emit adjustments."""
        if not repair:
            return self._compare(csv_out)
        ttl = timedelta(seconds=self.lease_seconds)
        lease = self.state.leases.acquire(
            lease_name(self.business, "import"), new_owner_id(), ttl, wait=wait
        )
        with LeaseKeeper(self.state.leases, lease, ttl) as keeper:
            report = self._compare(csv_out)
            if report.mismatches:
                self._repair(report, keeper)
            return report

    def _compare(self, csv_out: IO[str] | None) -> ReconcileReport:
        from mapping.records import parse_connection

        report = ReconcileReport()
        writer = csv.writer(csv_out) if csv_out is not None else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        self.progress.phase("reconcile")
        for page in self.source.iter_connections(self.business):
            pairs: list[tuple[str, Decimal]] = []
            for raw in page.objects:
                parsed = parse_connection(raw, timezone=self.timezone)
                record = parsed.record
                if record is None or record.point_balance is None:
                    report.unreadable += 1
                    continue
                pairs.append((record.user_id, record.point_balance))
            known = self.state.id_map.get_many(self.business, [uid for uid, _ in pairs])
            ids = {uid: self._customer_id(uid, known.get(uid)) for uid, _ in pairs}
            balances = self.target.balances(list(dict.fromkeys(ids.values())))
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
                if writer is not None:
                    writer.writerow(
                        [cid, uid, plain_decimal(perkville), plain_decimal(perkamo),
                         plain_decimal(perkville - perkamo), status]
                    )
            self.progress.advance("reconcile", len(page.objects), total=page.meta.get("total_count"))
        self.progress.done("reconcile", f"{report.matched}/{report.checked} balances match")
        return report

    def _customer_id(self, perkville_user_id: str, entry: IdMapEntry | None) -> str:
        if entry is not None:
            return entry.customer_id
        from mapping.ids import to_customer_id

        assigned = to_customer_id(perkville_user_id)
        return getattr(assigned, "customer_id", f"perkville:{perkville_user_id}")

    def _repair(self, report: ReconcileReport, keeper: LeaseKeeper) -> None:
        from mapping.events import to_adjustment_event

        now = utcnow()
        for start in range(0, len(report.mismatches), 100):
            chunk = report.mismatches[start : start + 100]
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
        wanted = [m.customer_id for m in report.mismatches]
        after = self.target.balances(wanted)
        report.remaining = [
            Mismatch(m.customer_id, m.perkville_user_id, m.perkville_balance, after.get(m.customer_id, Decimal(0)))
            for m in report.mismatches
            if after.get(m.customer_id, Decimal(0)) != m.perkville_balance
        ]

