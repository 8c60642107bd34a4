"""Benchmark: ``perkbridge backfill`` with DEFAULT settings against a far-away, rationed Perkville.

For each request budget (default 5, 10 and 20 requests/s) it:

1. starts the sandbox in its own process with ``--latency-ms 120 --rate-limit R`` (every request
   answered 120 ms after it arrived; past R API requests in any second, 429 + ``Retry-After``);
2. runs ``perkbridge backfill --json`` of it into a fresh SQLite file with no config file at all
   (the settings a new user gets), timing the whole command and sampling its peak RSS;
3. reads the sandbox's count of accepted and throttled requests;
4. runs ``perkbridge reconcile --json`` (not timed) and checks every member matches.

The figure is floor / wall. The floor is the time the data pages alone need with the budget
fully used: users, connections and transactions at the server's largest page (1,000 rows), one
request each, R per second. Targets: >= 0.7 at 10 requests/s; >= 0.6 with 429s <= 10 % of the
requests at 5 requests/s; every member reconciles.

    .venv/bin/python bench/wan.py                       # 50,000 transactions, 1,000 members
    .venv/bin/python bench/wan.py --budgets 10 --runs 5 # five runs of one budget
    .venv/bin/python bench/wan.py --budgets 10 --set max_in_flight=1   # an A/B of one setting
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill import _load, _start_sandbox, backfill, bench_env, byte_compiled  # noqa: E402  (a sibling script)

SERVER_MAX_PAGE = 1000
TARGETS = {10: (0.7, None), 5: (0.6, 0.10)}  # budget: (floor/wall at least, 429 share at most)


def _reconcile(info: dict[str, Any], workdir: Path) -> dict[str, Any]:
    env = bench_env(info, workdir)
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(workdir / "bench.toml"), "reconcile", "--json"],
        env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"reconcile failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return dict(json.loads(done.stdout))


def _network_stats(info: dict[str, Any]) -> dict[str, int]:
    stats = httpx.get(info["control_url"] + "stats", timeout=30).json()
    return {"accepted": int(stats["accepted"]), "throttled": int(stats["throttled"])}


def one_run(
    budget: int, transactions: int, members: int, latency_ms: float, seed: int, settings: list[str]
) -> dict[str, Any]:
    sandbox, info = _start_sandbox(
        transactions, members, seed, "--latency-ms", str(latency_ms), "--rate-limit", str(budget)
    )
    try:
        with tempfile.TemporaryDirectory(prefix="perkbridge-wan-") as tmp:
            result = backfill(info, None, Path(tmp), perkville="\n".join(settings))
            network = _network_stats(info)
            report = _reconcile(info, Path(tmp))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    pages = 2 * math.ceil(members / SERVER_MAX_PAGE) + math.ceil(transactions / SERVER_MAX_PAGE)
    floor = pages / budget
    requests = network["accepted"] + network["throttled"]
    return {
        "budget": budget,
        "floor": floor,
        "wall": result["seconds"],
        "ratio": floor / result["seconds"],
        "requests": requests,
        "throttled": network["throttled"],
        "share_429": network["throttled"] / max(requests, 1),
        "peak_rss_mb": result["peak_rss_mb"],
        "learned_rate": result["run"].get("request_rate"),
        "read": result["transactions"],
        "mismatched": len(report.get("mismatches", [])) + len(report.get("pending", [])),
        "members": int(report.get("checked", 0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--members", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=120.0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a [perkville] setting for an A/B (for example --set max_in_flight=1); default: none",
    )
    args = parser.parse_args()
    byte_compiled()
    print(f"load average before: {_load()} ({os.cpu_count()} cores)")
    print(
        f"sandbox: {args.transactions:,} transactions, {args.members:,} members, "
        f"{args.latency_ms:g} ms latency; perkbridge with "
        + (f"default settings except {', '.join(args.set)}" if args.set else "default settings")
    )
    print("budget  run  floor s  wall s  floor/wall  requests  429s (share)  learned r/s  peak RSS  reconcile")
    ok = True
    for budget in args.budgets:
        for run in range(1, args.runs + 1):
            r = one_run(budget, args.transactions, args.members, args.latency_ms, args.seed, args.set)
            reconciled = r["mismatched"] == 0 and r["members"] == args.members and r["read"] == args.transactions
            print(
                f"{budget:>4}/s  {run:>3}  {r['floor']:7.2f}  {r['wall']:6.2f}  {r['ratio']:10.2f}  "
                f"{r['requests']:8d}  {r['throttled']:4d} ({r['share_429']:5.1%})  "
                f"{r['learned_rate'] or 0:11.2f}  {r['peak_rss_mb']:6.1f} MB  "
                f"{'all match' if reconciled else 'MISMATCH'}",
                flush=True,
            )
            target = TARGETS.get(budget)
            if target is not None:
                least, most_429 = target
                ok = ok and r["ratio"] >= least and (most_429 is None or r["share_429"] <= most_429)
            ok = ok and reconciled
    print(f"load average after: {_load()}")
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
