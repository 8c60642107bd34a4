"""Benchmark of the embedded core's bulk ingest and customer read (a script, not a test).

Ingests ``--events`` events for ``--customers`` customers through ``CoreService.ingest_bulk`` in
pages of ``--page`` into a fresh SQLite file, prints events/s and peak RSS, then compares reading a
customer with ``--heavy`` events against one with 10 (median of repeated reads).

    .venv/bin/python bench/core_ingest.py                       # full size: 200,000 / 20,000
    .venv/bin/python bench/core_ingest.py --events 20000 --customers 2000 --heavy 10000
    .venv/bin/python bench/core_ingest.py --no-outbox --program synthetic
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from config.programs import load_migration_program
from perkamo_core.db import create_db_engine
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService

SPACE = "bench"
SYNTHETIC_PROGRAM: dict[str, Any] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points", "allow_negative": True}]},
    "events": {"rules": [
        {"event": "perkville.points_earned", "label": "Earned", "wallet": "points",
         "formula": "{{points}}"},
        {"event": "perkville.points_redeemed", "label": "Redeemed", "wallet": "points",
         "formula": "0 - {{points}}"},
        {"event": "purchase.completed", "label": "Purchase", "wallet": "points", "amount": 50,
         "limits": {"per_day": 3}},
    ]},
    "leveling": {"wallet": "points", "thresholds": [0, 100, 500, 2000],
                 "names": ["Member", "Silver", "Gold", "Platinum"]},
    "perks": {"perks": [
        {"key": "welcome_member", "name": "Welcome member",
         "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
        {"key": "silver", "name": "Silver lounge", "trigger": {"type": "level", "level": 2}},
    ]},
}
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def make_events(n: int, customers: int, seed: int, prefix: str) -> Iterator[EventInput]:
    """Events generated lazily (the benchmark measures the core, not a list of 200,000 inputs).

    Names and context have the shape ``mapping.to_events`` gives the bridge's Perkville
    transactions (the shipped migration program reads ``amount``; the synthetic one ``points``).
    """
    rng = random.Random(seed)
    kinds = ["perkville.points_earned"] * 7 + ["perkville.points_redeemed", "purchase.completed",
                                                "perkville.activity"]
    for i in range(n):
        kind = rng.choice(kinds)
        points = rng.randint(1, 40)
        yield EventInput(
            user_id=f"perkville:{rng.randrange(customers)}",
            event=kind,
            transaction_id=f"{prefix}:{i}",
            context={"source": "perkville",
                     "classification": "REDEEM" if kind.endswith("redeemed") else "EARN",
                     "points": points, "quantity": 1, "amount": points,
                     "perkville_transaction_id": str(1_000_000 + i),
                     "location_id": rng.randint(1, 5), "perkville_user_id": str(rng.randrange(10**6))},
            occurred_at=EPOCH + timedelta(seconds=i * 90),
        )


def ingest(
    service: CoreService, events: Iterable[EventInput], page: int, *, outbox: bool = True
) -> tuple[float, float]:
    """Wall and CPU seconds spent inside ``ingest_bulk`` (building the inputs is not counted).

    CPU seconds of this process show what the machine's other load does to the wall figure.
    """
    spent = 0.0
    cpu = 0.0
    iterator = iter(events)
    while batch := list(itertools.islice(iterator, page)):
        started = time.perf_counter()
        cpu_started = time.process_time()
        outcomes = service.ingest_bulk(SPACE, batch, outbox=outbox)
        spent += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        bad = [o.error for o in outcomes if o.error is not None]
        if bad:
            raise SystemExit(f"ingest failed: {bad[0]!r}")
    return spent, cpu


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_read(service: CoreService, user_id: str, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        service.customer(SPACE, user_id)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--heavy", type=int, default=100_000, help="events of the heavy customer")
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest phase")
    parser.add_argument("--sort", default="tottime", help="pstats sort key for --profile")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp dir)")
    parser.add_argument("--program", choices=("migration", "synthetic"), default="migration",
                        help="the shipped migration program (what the bridge ingests with) or a "
                        "synthetic one with a per-day limit, a level ladder and perks")
    parser.add_argument("--no-outbox", action="store_true",
                        help="ingest_bulk(outbox=False), as the bridge does for Perkville-born events")
    parser.add_argument("--url", default=None,
                        help="an empty database URL to use instead of SQLite (e.g. PostgreSQL)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        if db.exists() and not args.url:
            raise SystemExit(f"{db} exists; the benchmark needs a fresh file")
        engine = create_db_engine(args.url or f"sqlite:///{db}")
        service = CoreService(engine)
        service.migrate()
        service.ensure_space(SPACE)
        program = load_migration_program() if args.program == "migration" else SYNTHETIC_PROGRAM
        service.load_program(SPACE, program)

        events = make_events(args.events, args.customers, seed=1, prefix="bulk")
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        seconds, cpu = ingest(service, events, args.page, outbox=not args.no_outbox)
        if profiler:
            profiler.disable()
        rate = args.events / seconds
        print(f"ingest: {args.events} events for {args.customers} customers in {seconds:.2f} s "
              f"= {rate:,.0f} events/s (pages of {args.page}); {cpu:.2f} CPU s of this process "
              f"= {args.events / cpu:,.0f} events per CPU second; program {args.program}, "
              f"outbox {'off' if args.no_outbox else 'on'}")
        print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"peak RSS after ingest: {peak_rss_mb():.0f} MB")
        if profiler:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)

        heavy = (
            EventInput(user_id="heavy", event="perkville.points_earned", transaction_id=f"heavy:{i}",
                       context={"points": 1, "amount": 1}, occurred_at=EPOCH + timedelta(seconds=i * 60))
            for i in range(args.heavy)
        )
        ingest(service, heavy, args.page)
        light = [
            EventInput(user_id="light", event="perkville.points_earned", transaction_id=f"light:{i}",
                       context={"points": 1, "amount": 1}, occurred_at=EPOCH + timedelta(seconds=i * 60))
            for i in range(10)
        ]
        ingest(service, light, args.page)
        median_read(service, "heavy", 5)  # warm caches
        median_read(service, "light", 5)
        heavy_s = median_read(service, "heavy", args.reads)
        light_s = median_read(service, "light", args.reads)
        print(f"read customer: {args.heavy} events {heavy_s * 1000:.2f} ms, 10 events "
              f"{light_s * 1000:.2f} ms, ratio {heavy_s / light_s:.2f}x (median of {args.reads})")
        size = f"; db size {db.stat().st_size / 1e6:.0f} MB" if not args.url else ""
        print(f"peak RSS overall: {peak_rss_mb():.0f} MB{size}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
