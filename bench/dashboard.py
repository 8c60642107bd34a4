"""Benchmark of the dashboard's pages on a large state database (a script, not a test).

Target (issue 17): every page renders in under 200 ms with 100,000 members and 1,000 runs.

1. A real backfill and reconcile of a small sandbox business give real run rows (details with
   phases, request stats) and real reconcile rows; 999 more runs are copies of those.
2. ``--members`` more members go in as the bridge writes them: one event each into the embedded
   core (``ingest_bulk``), an id-map row and a reconcile row each (1 % of them mismatched), plus
   ``--letters`` open dead letters with raw records.
3. ``perkbridge serve`` runs as a real process on loopback; a client signs in and requests each
   page ``--requests`` times. It prints median, p95 and max per page, and whether p95 < 200 ms.

    .venv/bin/python bench/dashboard.py                                   # SQLite file
    .venv/bin/python bench/dashboard.py --database-url postgresql+psycopg://…/bench_dashboard
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import Engine, insert, select

from bridge.pipeline import Pipeline, PipelineConfig, RunOptions
from bridge.reconcile import Reconciler
from bridge.state import StateStore
from bridge.state.schema import dead_letters, id_map, reconciled, runs
from bridge.targets import EmbeddedTarget
from bridge.usecases import reconcile
from config.programs import load_migration_program
from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService

SPACE = "bench"
TARGET_MS = 200.0
BATCH = 2000


def real_runs(engine: Engine, state: StateStore, service: CoreService) -> tuple[str, str]:
    """A real backfill and reconcile of a small sandbox business; its business id and one member."""
    box = Sandbox(seed=5, members=200, transactions=3000)
    box.start()
    client = PerkvilleClient(**box.client_kwargs(), page_size=100, requests_per_second=None)
    try:
        business = str(box.business_ids[0])
        target = EmbeddedTarget(service, engine, SPACE)
        pipeline = Pipeline(state=state, source=client, target=target, config=PipelineConfig(business=business))
        pipeline.run(RunOptions(kind="backfill", mode="history"))
        reconciler = Reconciler(state=state, source=client, target=target, business=business)
        reconcile(pipeline, reconciler, mode="history")
        with engine.connect() as c:
            member = c.execute(select(id_map.c.perkville_user_id).where(id_map.c.business == business)).scalar()
        assert member is not None, "the backfill mapped no member"
        return business, str(member)
    finally:
        client.close()
        box.stop()


def copy_runs(engine: Engine, business: str, total: int) -> None:
    """Fill the run log up to ``total`` runs with copies of the real ones, a minute apart."""
    with engine.begin() as c:
        real = [dict(r) for r in c.execute(select(runs)).mappings()]
        have = len(real)
        rows = []
        start = datetime.now(UTC) - timedelta(minutes=total)
        for i in range(total - have):
            row = {k: v for k, v in real[i % have].items() if k != "id"}
            row["started_at"] = start + timedelta(minutes=i)
            row["finished_at"] = row["started_at"] + timedelta(milliseconds=row["duration_ms"] or 0)
            row["business"] = business
            rows.append(row)
        for at in range(0, len(rows), BATCH):
            c.execute(insert(runs), rows[at : at + BATCH])


def bulk_members(engine: Engine, service: CoreService, business: str, members: int, letters: int) -> None:
    """``members`` more members: a core event, an id-map row and a reconcile row each."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    run_id = 1
    started = time.perf_counter()
    for at in range(0, members, BATCH):
        ids = range(100_000 + at, 100_000 + min(members, at + BATCH))
        amounts = {uid: rng.randint(1, 5000) for uid in ids}
        service.ingest_bulk(SPACE, [
            EventInput(user_id=f"perkville:{uid}", event="perkville.points_earned",
                       transaction_id=f"bench:{uid}", context={"amount": amounts[uid]},
                       occurred_at=now - timedelta(days=uid % 700))
            for uid in ids
        ], outbox=False)
        map_rows, rec_rows = [], []
        for uid in ids:
            perkamo = Decimal(amounts[uid])
            perkville = perkamo + (rng.randint(-50, 50) if uid % 100 == 0 else 0)
            diff = perkville - perkamo
            map_rows.append({
                "business": business, "perkville_user_id": str(uid), "customer_id": f"perkville:{uid}",
                "strategy": "perkville_user", "connection_id": str(uid), "connection_status": "active",
                "perkville_balance": perkville, "traits_hash": None, "adjustments": 0, "tier_level": None,
                "created_at": now, "updated_at": now,
            })
            rec_rows.append({
                "business": business, "perkville_user_id": str(uid), "customer_id": f"perkville:{uid}",
                "perkville_balance": perkville, "perkamo_balance": perkamo, "difference": diff,
                "abs_difference": abs(diff), "status": "match" if diff == 0 else "mismatch",
                "flagged": 0 if diff == 0 else 1, "run_id": run_id, "checked_at": now,
            })
        with engine.begin() as c:
            c.execute(insert(id_map), map_rows)
            c.execute(insert(reconciled), rec_rows)
        print(f"  seeded {min(members, at + BATCH):,} members ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, end="\r")
    print(file=sys.stderr)
    reasons = ("mapping_error", "invalid_record", "rejected_by_target", "unknown_member")
    letter_rows = [
        {
            "business": business, "kind": "transaction", "record_id": str(900_000 + i), "run_id": run_id,
            "raw": json.dumps({"id": 900_000 + i, "points": rng.randint(1, 99), "note": "bench",
                               "user": {"id": 100_000 + i, "email": f"m{i}@example.com"}}),
            "reason": reasons[i % len(reasons)], "detail": "seeded by bench/dashboard.py", "attempts": 1,
            "status": "open", "created_at": now, "updated_at": now,
        }
        for i in range(letters)
    ]
    with engine.begin() as c:
        for at in range(0, len(letter_rows), BATCH):
            c.execute(insert(dead_letters), letter_rows[at : at + BATCH])


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", "0", "--json", "--no-access-log", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("perkbridge serve did not start")
    return proc, json.loads(line)["url"]


def time_pages(url: str, key: str, pages: dict[str, str], requests: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        signed = client.post("/dashboard/login", data={"key": key, "next": "/dashboard"})
        if signed.status_code not in (200, 303) or "perkbridge_session" not in client.cookies:
            raise SystemExit(f"sign-in failed: {signed.status_code}")
        for name, path in pages.items():
            client.get(path)  # warm: the first request of a route compiles its template
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                answer = client.get(path)
                samples.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {answer.status_code}")
            timings[name] = samples
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--letters", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    url = args.database_url or f"sqlite:///{workdir / 'state.db'}"
    engine = create_db_engine(url)
    service = CoreService(engine)
    service.migrate()
    service.ensure_space(SPACE)
    service.load_program(SPACE, load_migration_program())
    state = StateStore(engine)
    state.migrate()
    seed_started = time.perf_counter()
    business, member = real_runs(engine, state, service)
    copy_runs(engine, business, args.runs)
    bulk_members(engine, service, business, args.members, args.letters)
    seed_seconds = time.perf_counter() - seed_started
    with engine.connect() as c:
        run_ids = [r for (r,) in c.execute(select(runs.c.id).order_by(runs.c.id))]
        members_total = len(c.execute(select(reconciled.c.perkville_user_id)).all())
    key = service.create_api_key(SPACE, ["dashboard"]).key
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))}
    env.update(PERKBRIDGE_DATABASE_URL=url, PERKAMO_SPACE=SPACE, PERKVILLE_BUSINESS_ID=business)
    pages = {
        "overview": "/dashboard",
        "runs (first page)": "/dashboard/runs",
        "runs (page 10)": "/dashboard/runs?page=10",
        "run (backfill)": f"/dashboard/runs/{run_ids[0]}",
        "run (oldest copy)": f"/dashboard/runs/{run_ids[2]}",
        "dead letters": "/dashboard/deadletters",
        "reconciliation": "/dashboard/reconcile",
        "reconciliation (page 500)": "/dashboard/reconcile?page=500",
        "reconciliation search": "/dashboard/reconcile?q=1234",
        "member (real)": f"/dashboard/members/{member}?business={business}",
        "member (seeded)": f"/dashboard/members/{100_000 + args.members // 2}?business={business}",
    }
    proc, served = start_serve(env)
    try:
        timings = time_pages(served, key, pages, args.requests)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        engine.dispose()
    backend = url.split(":", 1)[0]
    print(f"dashboard pages: {backend}, {members_total:,} members reconciled, {len(run_ids):,} runs, "
          f"{args.letters:,} open dead letters (seeded in {seed_seconds:.0f} s); {args.requests} requests each, "
          "over HTTP on loopback")
    print(f"{'page':<28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    worst = 0.0
    for name, samples in timings.items():
        ordered = sorted(samples)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        worst = max(worst, p95)
        print(f"{name:<28} {statistics.median(samples):>10.1f} {p95:>8.1f} {max(samples):>8.1f}")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"target p95 < {TARGET_MS:.0f} ms on every page: {verdict} (worst p95 {worst:.1f} ms)")


if __name__ == "__main__":
    main()
