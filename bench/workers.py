"""Benchmark: ``perkbridge worker`` processes keeping many sandbox businesses in sync (issue 18).

1. A database of its own on a PostgreSQL server (``--admin-url``, or ``PERKBRIDGE_TEST_POSTGRES_URL``,
   or the URL in ``/tmp/shared_pg_url``); dropped at the end unless ``--keep``.
2. The sandbox in its own process: ``--businesses`` businesses of ``--members`` members and
   ``--transactions`` transactions each, every request answered ``--latency-ms`` late.
3. ``--workers`` ``perkbridge worker`` processes (default settings but the sync interval), every
   business configured; each business's first sync is its backfill (the warm-up).
4. After the warm-up, ``--windows`` whole sync intervals (aligned as the crons are: on the
   interval's multiples in UTC): in each, how many businesses had a sync that started in it
   and succeeded, and how late the last one finished.  The interval is reached when every
   business has one in every window.

While it runs it samples the database's connections (``pg_stat_activity``) and each worker's
CPU seconds and peak RSS (psutil, ``VmHWM``).  It prints a table and one JSON line.

    .venv/bin/python bench/workers.py                                   # 200 x 200, 4 workers, 1 min
    .venv/bin/python bench/workers.py --businesses 20 --windows 2       # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from perkamo_core.db import normalize_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill import _start_sandbox, bench_env  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parent.parent


def _admin_url(given: str | None) -> str:
    url = given or os.environ.get("PERKBRIDGE_TEST_POSTGRES_URL")
    if not url and Path("/tmp/shared_pg_url").exists():
        url = Path("/tmp/shared_pg_url").read_text().strip()
    if not url:
        raise SystemExit("no PostgreSQL: pass --admin-url or set PERKBRIDGE_TEST_POSTGRES_URL")
    return normalize_url(url)


def _database(admin_url: str) -> tuple[str, str]:
    name = f"bench_workers_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def _drop(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _sandbox(args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    return _start_sandbox(
        args.transactions, args.members, 18, "--businesses", str(args.businesses), "--latency-ms", str(args.latency_ms)
    )


def _env(info: dict[str, Any], db_url: str, workdir: Path) -> dict[str, str]:
    env = bench_env(info, workdir)
    env.update(PERKBRIDGE_DATABASE_URL=db_url, PERKAMO_SPACE="bench")
    return env


class Sampler(threading.Thread):
    """Every second: the database's connections and each worker's CPU and RSS."""

    def __init__(self, db_url: str, db_name: str, pids: dict[str, int], sandbox_pid: int) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(db_url, pool_size=1)
        self.db_name = db_name
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.connections: list[int] = []
        self.cpu: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.rss_peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.sandbox = psutil.Process(sandbox_pid)
        self.sandbox_cpu = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with self.engine.connect() as conn:
                    count = conn.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                        {"d": self.db_name},
                    ).scalar_one()
                self.connections.append(int(count))
            except Exception:  # the database is busy or going: the next sample
                pass
            for name, proc in self.procs.items():
                try:
                    times = proc.cpu_times()
                    self.cpu[name] = times.user + times.system
                    self.rss_peak[name] = max(self.rss_peak[name], _hwm(proc.pid) or proc.memory_info().rss)
                except psutil.Error:
                    pass
            try:
                times = self.sandbox.cpu_times()
                self.sandbox_cpu = times.user + times.system
            except psutil.Error:
                pass
        self.engine.dispose()


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _succeeded(engine: Any, since: datetime | None = None) -> list[tuple[str, datetime, datetime]]:
    sql = "SELECT business_id, started_at, finished_at FROM scheduler_job_runs WHERE kind = 'sync' AND outcome = 'success'"
    params: dict[str, Any] = {}
    if since is not None:
        sql += " AND started_at >= :since"
        params["since"] = since
    try:
        with engine.connect() as conn:
            return [(str(b), s, f) for b, s, f in conn.execute(text(sql), params)]
    except Exception:  # the workers are still migrating
        return []


def _next_boundary(now: datetime, seconds: float) -> datetime:
    epoch = now.timestamp()
    return datetime.fromtimestamp((int(epoch // seconds) + 1) * seconds, UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--businesses", type=int, default=200)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--transactions", type=int, default=200, help="per business")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="[schedule] worker_concurrency (default: the setting's default)")
    parser.add_argument("--interval-minutes", type=float, default=1.0)
    parser.add_argument("--windows", type=int, default=3, help="sync intervals measured after the warm-up")
    parser.add_argument("--warmup-timeout", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--admin-url", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args(argv)
    interval = args.interval_minutes * 60

    admin_url = _admin_url(args.admin_url)
    db_name, db_url = _database(admin_url)
    load_before = os.getloadavg()
    started = time.monotonic()
    sandbox, info = _sandbox(args)
    print(f"sandbox up in {time.monotonic() - started:.1f} s; database {db_name}", flush=True)
    businesses = [str(b) for b in info["business_ids"]]
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    config = workdir / "perkbridge.toml"
    config.write_text(
        f"[schedule]\nbusinesses = {json.dumps(businesses)}\nsync_interval_minutes = {args.interval_minutes}\n"
        # The nightly reconcile (all 200 at once) is not what is measured: keep it 12 h away.
        f"reconcile_cron = \"0 {(datetime.now(UTC).hour + 12) % 24} * * *\"\n"
        + (f"worker_concurrency = {args.concurrency}\n" if args.concurrency else ""),
        encoding="utf-8",
    )
    env = _env(info, db_url, workdir)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    engine = create_engine(db_url, pool_size=1)
    sampler: Sampler | None = None
    result: dict[str, Any] = {}
    try:
        for n in range(1, args.workers + 1):
            name = f"bench-w{n}"
            with (workdir / f"{name}.log").open("w") as err:
                workers[name] = subprocess.Popen(
                    [sys.executable, "-m", "bridge", "--config", str(config), "worker", "--name", name],
                    env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                )
        sampler = Sampler(db_url, db_name, {name: proc.pid for name, proc in workers.items()}, sandbox.pid)
        sampler.start()

        # Warm-up: every business's first sync (its backfill).
        warm_start = time.monotonic()
        while True:
            done = {b for b, _s, _f in _succeeded(engine)}
            if len(done) == len(businesses):
                break
            for name, proc in workers.items():
                if proc.poll() is not None:
                    raise SystemExit(f"worker {name} exited {proc.returncode}: see {workdir / (name + '.log')}")
            if time.monotonic() - warm_start > args.warmup_timeout:
                print(f"warm-up not finished after {args.warmup_timeout:.0f} s: {len(done)} of {len(businesses)} "
                      "businesses had a first sync", flush=True)
                break
            time.sleep(2.0)
        warmup = time.monotonic() - warm_start
        warmed = len({b for b, _s, _f in _succeeded(engine)})
        cpu_warm = dict(sampler.cpu)
        sandbox_cpu_warm = sampler.sandbox_cpu
        warm_end = datetime.now(UTC)
        print(f"warm-up: {warmed}/{len(businesses)} businesses synced once in {warmup:.0f} s", flush=True)

        first = _next_boundary(datetime.now(UTC), interval)
        windows = [(first + timedelta(seconds=k * interval), first + timedelta(seconds=(k + 1) * interval))
                   for k in range(args.windows)]
        end = windows[-1][1]
        # A window's syncs may finish after it closes: wait one more interval for the stragglers.
        while datetime.now(UTC) < end + timedelta(seconds=interval):
            time.sleep(1.0)
        rows = _succeeded(engine, first)
        per_window = []
        for lo, hi in windows:
            mine = [(b, s, f) for b, s, f in rows if lo <= s < hi]
            covered = {b for b, _s, _f in mine}
            last = max((f for _b, _s, f in mine), default=None)
            took = sorted((f - s).total_seconds() for _b, s, f in mine)
            per_window.append({
                "window": lo.strftime("%H:%M:%S"),
                "businesses_synced": len(covered),
                "syncs": len(mine),
                "last_finished_s": round((last - lo).total_seconds(), 1) if last else None,
                "sync_s_median": round(took[len(took) // 2], 2) if took else None,
                "sync_s_p95": round(took[int(len(took) * 0.95)], 2) if took else None,
            })
        reached = all(w["businesses_synced"] == len(businesses) for w in per_window)
        sampler.stop.set()
        sampler.join()
        conns = sampler.connections or [0]
        wall = time.monotonic() - started
        steady = (datetime.now(UTC) - warm_end).total_seconds()
        result = {
            "businesses": len(businesses), "members": args.members, "transactions": args.transactions,
            "latency_ms": args.latency_ms, "workers": args.workers, "interval_s": interval,
            "warmup_s": round(warmup, 1), "warmed": warmed, "windows": per_window, "reached": reached,
            "db_connections": {"max": max(conns), "median": sorted(conns)[len(conns) // 2]},
            "worker_cpu_s": {n: round(c, 1) for n, c in sampler.cpu.items()},
            "worker_cpu_s_per_interval_steady": {
                n: round((c - cpu_warm[n]) / steady * interval, 1) for n, c in sampler.cpu.items()
            },
            "sandbox_cpu_share_steady": round((sampler.sandbox_cpu - sandbox_cpu_warm) / steady, 2),
            "concurrency": args.concurrency,
            "worker_rss_peak_mb": {n: round(r / 2**20, 1) for n, r in sampler.rss_peak.items()},
            "wall_s": round(wall, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        }
    finally:
        if sampler is not None:
            sampler.stop.set()
        for proc in workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        sandbox.terminate()
        sandbox.wait(30)
        engine.dispose()
        if not args.keep:
            _drop(admin_url, db_name)

    print()
    print(f"{result['businesses']} businesses x {args.members} members, {args.transactions} transactions each, "
          f"{args.latency_ms:.0f} ms latency, {args.workers} workers "
          f"(worker_concurrency {args.concurrency or 'default'}), interval {interval:.0f} s")
    print(f"warm-up (first sync = backfill of every business): {result['warmup_s']} s")
    print(f"{'window (UTC)':<14}{'businesses synced':>20}{'syncs':>8}{'last finished (s)':>20}"
          f"{'one sync median / p95 (s)':>28}")
    for w in per_window:
        print(f"{w['window']:<14}{w['businesses_synced']:>20}{w['syncs']:>8}{w['last_finished_s']!s:>20}"
              f"{w['sync_s_median']!s:>16} / {w['sync_s_p95']!s:<8}")
    print(f"interval {interval:.0f} s reached: {'yes' if reached else 'NO'}")
    print(f"database connections: max {result['db_connections']['max']}, "
          f"median {result['db_connections']['median']}")
    print(f"{'worker':<12}{'CPU s (all)':>12}{'CPU s / interval after warm-up':>32}{'peak RSS MB':>14}")
    for name in workers:
        print(f"{name:<12}{result['worker_cpu_s'][name]:>12}"
              f"{result['worker_cpu_s_per_interval_steady'][name]:>32}{result['worker_rss_peak_mb'][name]:>14}")
    print(f"sandbox (one process, every business): {result['sandbox_cpu_share_steady']:.0%} of a core "
          "after warm-up")
    print(f"wall {result['wall_s']} s; load {result['load_before']} -> {result['load_after']}")
    print(json.dumps(result))
    return 0 if reached else 1


if __name__ == "__main__":
    raise SystemExit(main())
