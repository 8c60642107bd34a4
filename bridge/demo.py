"""``perkbridge demo``: sandbox → real HTTP + password grant → embedded core in a fresh SQLite file → reconcile."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.pipeline import Pipeline, PipelineConfig, RunOptions, RunSummary
from bridge.progress import NullProgress, Progress
from bridge.reconcile import Reconciler, ReconcileReport

DEMO_SEED = 7
DEMO_MEMBERS = 300
DEMO_TRANSACTIONS = 10_000
DEMO_SPACE = "demo"


@dataclass
class DemoResult:
    """What the demo did, for the summary it prints."""

    database: Path
    business: str
    members: int
    transactions: int
    run: RunSummary
    reconcile: ReconcileReport
    seconds: float
    requests: int
    example_customer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "database": str(self.database),
            "business": self.business,
            "members": self.members,
            "transactions": self.transactions,
            "run": self.run.to_json(),
            "reconcile": self.reconcile.to_json(),
            "balances_matched": self.reconcile.matched,
            "balances_checked": self.reconcile.checked,
            "seconds": round(self.seconds, 2),
            "perkville_requests": self.requests,
        }

    def lines(self) -> list[str]:
        r = self.reconcile
        counts = self.run.counts
        return [
            f"Migrated Perkville business {self.business} into {self.database}",
            f"  members:       {self.members}",
            f"  transactions:  {self.transactions} read from Perkville over HTTP "
            f"({self.requests} requests, password grant)",
            f"  records:       read {counts.read}, applied {counts.applied}, duplicate "
            f"{counts.duplicate}, skipped {counts.skipped}, dead-lettered {counts.dead_lettered}",
            f"  balances:      {r.matched}/{r.checked} matched"
            + ("" if r.ok else f"  ({len(r.mismatches)} MISMATCHED)"),
            f"  total points:  {r.perkville_total} in Perkville, {r.perkamo_total} in Perkamo",
            f"  time:          {self.seconds:.1f} s",
            "",
            f"Try: PERKBRIDGE_DATABASE_URL=sqlite:///{self.database} perkbridge customer "
            f"--space {DEMO_SPACE} {self.example_customer or 'perkville:<user id>'}",
        ]


def run_demo(
    *,
    database: Path | None = None,
    members: int = DEMO_MEMBERS,
    transactions: int = DEMO_TRANSACTIONS,
    seed: int = DEMO_SEED,
    progress: Progress | None = None,
) -> DemoResult:
    """Start the sandbox on a free loopback port, migrate it, reconcile; the sandbox stops after."""
    from bridge.state import StateStore
    from bridge.targets import EmbeddedTarget
    from bridge.wiring import core_service
    from connectors.perkville import PerkvilleClient
    from connectors.perkville.sandbox import Sandbox
    from perkamo_core.db import create_db_engine

    progress = progress or NullProgress()
    started = time.monotonic()
    if database is None:
        database = Path(tempfile.mkdtemp(prefix="perkbridge-demo-")) / "perkbridge-demo.db"
    if database.exists():
        raise FileExistsError(f"{database} already exists; the demo migrates into a fresh file")
    sandbox = Sandbox(seed=seed, businesses=1, members=members, transactions=transactions)
    sandbox.start(port=0)
    engine = create_db_engine(f"sqlite:///{database}")
    try:
        business = str(sandbox.business_ids[0])
        progress.note(f"sandbox listening on {sandbox.base_url} (business {business})")
        state = StateStore(engine)
        state.migrate()
        service = core_service(engine)
        target = EmbeddedTarget(service, engine, DEMO_SPACE)
        client = PerkvilleClient(**sandbox.client_kwargs(), page_size=500, requests_per_second=None)
        with client:
            config = PipelineConfig(business=business, secrets=tuple(sandbox.credentials.values()))
            run = Pipeline(
                state=state, source=client, target=target, config=config, progress=progress
            ).run(RunOptions(kind="backfill", mode="history"))
            report = Reconciler(
                state=state, source=client, target=target, business=business, progress=progress
            ).compare()
            requests = int(client.stats.get("requests", 0))
        return DemoResult(
            database=database,
            business=business,
            members=state.id_map.count(business),
            transactions=run.kinds.get("transaction", {}).get("read", 0),
            run=run,
            reconcile=report,
            seconds=time.monotonic() - started,
            requests=requests,
            example_customer=next((e.customer_id for e in state.id_map.iter_all(business)), None),
        )
    finally:
        engine.dispose()
        sandbox.stop()
