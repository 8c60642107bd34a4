"""Benchmark: ``perkbridge backfill`` against the raw-pull ceiling of the same sandbox, in one run.

1. The sandbox serves a generated business from its own process.
2. Raw-pull ceiling: a bare httpx loop (password grant, then ``transactions/`` page by page with
   ``limit``/``offset``, JSON-decoding every page) — no pacing, no mapping, no database.
3. ``perkbridge backfill --json`` of that business into a fresh SQLite file, in a child process
   whose peak RSS (``VmHWM``) is sampled while it runs.

It prints both rates (transactions per second of wall time), their ratio, the backfill's peak
RSS, the load average before and after, and
the CPU seconds the backfill's processes used per 1,000 transactions — a figure that does not
depend on what else the machine is doing — and the CPU seconds the sandbox used serving the raw
pull and the backfill (on a small machine all three share the cores).  Targets: ratio >= 0.25, peak RSS <= 250 MB.

    .venv/bin/python bench/backfill.py                       # 200,000 transactions, the CLI's defaults
    .venv/bin/python bench/backfill.py --transactions 20000  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

RATIO_TARGET = 0.25
RSS_TARGET_MB = 250.0


PACKAGES = ("bridge", "config", "connectors", "mapping", "perkamo_core")


def byte_compiled() -> None:
    """Byte-compile the project once, as ``pip install`` does for an installed package.

    The timed commands are fresh processes of an editable checkout; with
    ``PYTHONDONTWRITEBYTECODE`` set (as on the build machine) each would otherwise compile every
    module from source on every start (about 0.2 CPU-s), which no installed perkbridge does.
    """
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(root / name) for name in PACKAGES)], check=True
    )


def _start_sandbox(
    transactions: int, members: int, seed: int, *extra: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "connectors.perkville.sandbox", "--port", "0", "--seed", str(seed),
            "--members", str(members), "--transactions", str(transactions), *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the sandbox did not start")
    return proc, json.loads(line)


def raw_pull(info: dict[str, Any], page_size: int) -> dict[str, Any]:
    """The ceiling: token, then every transactions page decoded, nothing else."""
    started = time.perf_counter()
    with httpx.Client(timeout=60.0) as http:
        token = http.post(
            info["token_url"],
            data={"grant_type": "password", "username": info["username"], "password": info["password"]},
            auth=(info["client_id"], info["client_secret"]),
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        url = info["api_url"].rstrip("/") + "/transactions/"
        business = info["business_ids"][0]
        offset = 0
        rows = 0
        pages = 0
        while True:
            response = http.get(
                url, params={"business": business, "limit": page_size, "offset": offset}, headers=headers
            )
            response.raise_for_status()
            objects = response.json().get("objects", [])
            pages += 1
            if not objects:
                break
            rows += len(objects)
            offset += len(objects)
    seconds = time.perf_counter() - started
    return {"rows": rows, "pages": pages, "seconds": seconds, "rate": rows / seconds}


def _vmhwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_env(info: dict[str, Any], workdir: Path) -> dict[str, str]:
    """This process's environment without perkbridge settings, plus the sandbox's and a SQLite file's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))}
    env.update(
        PERKBRIDGE_DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        PERKVILLE_API_URL=info["api_url"],
        PERKVILLE_TOKEN_URL=info["token_url"],
        PERKVILLE_CLIENT_ID=info["client_id"],
        PERKVILLE_CLIENT_SECRET=info["client_secret"],
        PERKVILLE_USERNAME=info["username"],
        PERKVILLE_PASSWORD=info["password"],
        PERKVILLE_BUSINESS_ID=str(info["business_ids"][0]),
        PERKBRIDGE_LOG_FORMAT="plain",
    )
    return env


def backfill(
    info: dict[str, Any], page_size: int | None, workdir: Path, *, perkville: str = ""
) -> dict[str, Any]:
    """``perkbridge backfill --json`` in a child process; wall time and sampled peak RSS.

    ``page_size`` None: the default settings, as a new user runs it, plus the ``[perkville]``
    lines in ``perkville`` (for an A/B of one setting).
    """
    config = workdir / "bench.toml"
    if page_size is not None:
        config.write_text(f"[perkville]\npage_size = {page_size}\nrequests_per_second = 100000\n")
    else:
        config.write_text(f"[perkville]\n{perkville}\n" if perkville else "")
    env = bench_env(info, workdir)
    started = time.perf_counter()
    command = [sys.executable, "-m", "bridge", "--config", str(config), "backfill", "--json"]
    proc = subprocess.Popen(
        command,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = 0.0
    done = threading.Event()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            value = _vmhwm_mb(proc.pid)
            if value is not None:
                peak = max(peak, value)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"backfill failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    body = json.loads(out)
    transactions = int(body["kinds"]["transaction"]["read"])
    phase_rate = None
    for line in err.splitlines():  # the plain log's "phase_done phase=transactions … rate=…"
        if "phase_done" in line and "phase=transactions" in line and "rate=" in line:
            phase_rate = float(line.split("rate=", 1)[1].split()[0])
    return {
        "phase_rate": phase_rate,
        "run": body,
        "transactions": transactions,
        "seconds": seconds,
        "run_seconds": float(body.get("seconds", seconds)),
        "rate": transactions / seconds,
        "peak_rss_mb": peak,
        "cpu_seconds": cpu,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (from /proc; 0.0 where it is unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as load:
            return " ".join(load.read().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=None, help="default: transactions / 50")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    members = args.members or max(200, args.transactions // 50)
    byte_compiled()
    print(f"load average before: {_load()} ({os.cpu_count()} cores)")
    print(f"sandbox: {args.transactions:,} transactions, {members:,} members (own process); page size {args.page_size}")
    sandbox, info = _start_sandbox(args.transactions, members, args.seed)
    try:
        sandbox_cpu = _cpu_seconds(sandbox.pid)
        raw = raw_pull(info, args.page_size)
        raw_sandbox_cpu = _cpu_seconds(sandbox.pid) - sandbox_cpu
        print(f"raw pull ceiling : {raw['rows']:>9,} rows in {raw['seconds']:7.2f} s = {raw['rate']:>9,.0f} rows/s")
        with tempfile.TemporaryDirectory(prefix="perkbridge-bench-") as tmp:
            sandbox_cpu = _cpu_seconds(sandbox.pid)
            result = backfill(info, args.page_size, Path(tmp))
            backfill_sandbox_cpu = _cpu_seconds(sandbox.pid) - sandbox_cpu
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    run = result["run"]
    ratio = result["rate"] / raw["rate"]
    print(
        f"perkbridge backfill: {result['transactions']:>7,} rows in {result['seconds']:7.2f} s = "
        f"{result['rate']:>9,.0f} rows/s (wall, incl. start-up and {run['kinds']['connection']['read']:,} members; "
        f"run itself {result['run_seconds']:.2f} s)"
    )
    print(
        f"records: read {run['read']:,} applied {run['applied']:,} duplicate {run['duplicate']:,} "
        f"skipped {run['skipped']:,} dead-lettered {run['dead_lettered']:,}"
    )
    print(f"ratio backfill / raw pull: {ratio:.2f}  (target >= {RATIO_TARGET})")
    if result["phase_rate"]:
        print(f"for information, the transactions phase alone (after start-up and the members phase): "
              f"{result['phase_rate']:,.0f} rows/s = {result['phase_rate'] / raw['rate']:.2f} of the raw pull")
    print(f"backfill peak RSS: {result['peak_rss_mb']:.1f} MB  (target <= {RSS_TARGET_MB:.0f} MB)")
    per_k = result["cpu_seconds"] / max(result["transactions"], 1) * 1000
    print(f"backfill CPU: {result['cpu_seconds']:.2f} s in all its processes = {per_k:.3f} CPU-s per 1,000 rows")
    print(f"sandbox CPU serving them: raw pull {raw_sandbox_cpu:.2f} s, backfill {backfill_sandbox_cpu:.2f} s "
          f"(the sandbox shares the machine's {os.cpu_count()} cores with the backfill)")
    print(f"load average after: {_load()}")
    ok = ratio >= RATIO_TARGET and result["peak_rss_mb"] <= RSS_TARGET_MB and raw["rows"] == result["transactions"]
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
