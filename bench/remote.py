"""Benchmark: ``perkbridge backfill`` into a REMOTE Perkamo (``perkbridge serve`` over HTTP), by lanes.

1. ``perkbridge serve`` on a loopback port over its own SQLite file, with a key and the
   migration program loaded into its Space.
2. The sandbox in its own process (no latency, no budget: the Perkville side is not measured).
3. ``perkbridge backfill --json`` with ``PERKAMO_TARGET=remote`` for each ``--lanes`` value
   (``[perkville] max_in_flight``: identify calls and event batches at once, one lane per member),
   each into a fresh bridge database and a fresh Space, timing the whole command.

    .venv/bin/python bench/remote.py                      # 5,000 transactions, 500 members, lanes 1 and 4
    .venv/bin/python bench/remote.py --lanes 1 4 --runs 3

The served API runs on the same machine's cores as the backfill and the sandbox: on loopback
the lanes can only win where calls wait on each other, not on the CPU.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backfill import _load, _start_sandbox, bench_env  # noqa: E402  (a sibling script)

MIGRATION = Path(__file__).resolve().parents[1] / "config" / "programs" / "migration.json"


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"perkbridge {' '.join(args[:2])} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(workdir: Path, space: str) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))}
    env["PERKBRIDGE_DATABASE_URL"] = f"sqlite:///{workdir / 'served.db'}"
    key = json.loads(_cli(env, "keys", "create", "--space", space, "--json"))["key"]
    _cli(env, "program", "load", str(MIGRATION), "--space", space)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
         "--log-level", "warning"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base, key
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("perkbridge serve did not start")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"load average before: {_load()}")
    print(f"{args.transactions:,} transactions, {args.members:,} members into perkbridge serve on loopback")
    sandbox, info = _start_sandbox(args.transactions, args.members, 3)
    try:
        with tempfile.TemporaryDirectory(prefix="perkbridge-remote-") as tmp:
            for run in range(1, args.runs + 1):
                for lanes in args.lanes:
                    workdir = Path(tmp) / f"run{run}-lanes{lanes}"
                    workdir.mkdir()
                    space = f"bench{run}l{lanes}"
                    server, base, key = _serve(workdir, space)
                    try:
                        env = bench_env(info, workdir)
                        env.update(PERKAMO_TARGET="remote", PERKAMO_BASE_URL=base, PERKAMO_SECRET_KEY=key)
                        config = workdir / "bench.toml"
                        config.write_text(f"[perkville]\nrequests_per_second = 100000\nmax_in_flight = {lanes}\n")
                        started = time.perf_counter()
                        body = json.loads(_cli(env, "--config", str(config), "backfill", "--json"))
                        seconds = time.perf_counter() - started
                    finally:
                        server.terminate()
                        server.wait(timeout=30)
                    print(
                        f"lanes {lanes}  run {run}: {seconds:6.2f} s  status {body['status']}  "
                        f"applied {body['applied']:,} duplicate {body['duplicate']:,} dead {body['dead_lettered']:,}",
                        flush=True,
                    )
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
