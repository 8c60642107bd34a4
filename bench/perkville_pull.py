"""Benchmark: stream a large Perkville history from the sandbox page by page; rows/s and peak RSS.

Each size runs in fresh processes: the sandbox serves from its own process (its memory is not
counted), and the client pull runs in a separate worker whose peak RSS (``VmHWM``) is reported.
A flat peak RSS across sizes shows the pull streams instead of accumulating rows.

    .venv/bin/python bench/perkville_pull.py                 # 50,000 and 200,000 transactions
    .venv/bin/python bench/perkville_pull.py --sizes 5000 20000 --page-size 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from typing import Any


def _peak_rss_mb() -> float:
    """Peak resident set of this process image in MB.

    ``VmHWM`` from /proc belongs to the current address space, so it starts afresh at exec; Linux
    carries ``ru_maxrss`` over from the forking parent, which would mix the parent's peak in.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(info: dict[str, Any], page_size: int) -> dict[str, Any]:
    """Pull every transaction of the first business, keeping only a running count and checksum."""
    from connectors.perkville import PerkvilleClient

    rss_before = _peak_rss_mb()
    digest = 0
    rows = 0
    pages = 0
    kwargs = {
        key: info[key]
        for key in ("api_url", "token_url", "client_id", "client_secret", "username", "password")
    }
    started = time.perf_counter()
    with PerkvilleClient(**kwargs, requests_per_second=None, page_size=page_size) as client:
        for page in client.iter_transactions(info["business_ids"][0]):
            pages += 1
            for row in page.objects:
                rows += 1
                digest ^= _mix(row["transaction_id"])
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "pages": pages,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds) if seconds else None,
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "checksum": f"{digest:016x}",
    }


def _mix(value: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big")


def _expected_checksum(size: int, members: int, seed: int) -> str:
    from connectors.perkville.sandbox import Sandbox

    digest = 0
    for txn_id in Sandbox(seed=seed, members=members, transactions=size).transaction_ids():
        digest ^= _mix(txn_id)
    return f"{digest:016x}"


def _run_size(size: int, page_size: int, seed: int) -> dict[str, Any]:
    members = max(200, size // 50)
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connectors.perkville.sandbox",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--members",
            str(members),
            "--transactions",
            str(size),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        info_line = sandbox.stdout.readline()
        worker = subprocess.run(
            [sys.executable, __file__, "--worker", info_line.strip(), "--page-size", str(page_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        result: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    result["size"] = size
    result["exact"] = result["rows"] == size and result["checksum"] == _expected_checksum(size, members, seed)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker), args.page_size)))
        return 0
    print(
        f"{'transactions':>12} {'pages':>6} {'seconds':>8} {'rows/s':>8} {'RSS before':>11} {'peak RSS':>9}  exact"
    )
    results = []
    for size in args.sizes:
        r = _run_size(size, args.page_size, args.seed)
        results.append(r)
        print(
            f"{r['size']:>12,} {r['pages']:>6} {r['seconds']:>8.2f} {r['rows_per_s']:>8,} "
            f"{r['rss_before_mb']:>9.1f}MB {r['peak_rss_mb']:>7.1f}MB  {r['exact']}"
        )
    if len(results) > 1:
        growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
        print(
            f"peak RSS change from {results[0]['size']:,} to {results[-1]['size']:,} rows: {growth:+.1f} MB"
        )
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
