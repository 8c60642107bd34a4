"""Load benchmark of the local v1 API: ``perkbridge serve`` on loopback over a SQLite file.

It creates a key with the real CLI, starts ``perkbridge serve`` in a subprocess, loads a small
program through ``POST /v1/admin/config``, then drives ``POST /v1/events`` from concurrent asyncio
clients for a bounded count/time and ``GET /v1/customer/{id}`` afterwards, printing req/s and
latency percentiles.  Targets (SQLite, 2 cores): >= 1,000 events/s with p99 <= 50 ms; GET
customer p99 <= 20 ms.  Run: ``.venv/bin/python bench/api_load.py --events 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROGRAM: dict[str, dict[str, Any]] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points", "precision": 0}]},
    "events": {
        "rules": [
            {"event": "purchase.completed", "label": "Purchase", "wallet": "points", "formula": "{{amount}} / 100"},
            {"event": "page.viewed", "label": "Page view", "wallet": "points", "amount": 1},
        ]
    },
    "leveling": {"wallet": "points", "basis": "lifetime", "thresholds": [0, 100, 500, 2000]},
    "perks": {
        "perks": [
            {"key": "welcome", "name": "Welcome", "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}}
        ],
        "rewards": [{"key": "coffee", "name": "Coffee", "wallet": "points", "cost": 100}],
    },
}


@dataclass
class Stats:
    """Latencies (seconds) and failures of one phase."""

    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def report(self, name: str) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            if not ordered:
                return float("nan")
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        return {
            "phase": name,
            "ok": len(ordered),
            "failed": self.failures,
            "seconds": round(self.wall, 2),
            "req_per_s": round(len(ordered) / self.wall, 1) if self.wall else 0.0,
            "p50_ms": round(pct(0.50), 2),
            "p90_ms": round(pct(0.90), 2),
            "p99_ms": round(pct(0.99), 2),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"perkbridge {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection.

    httpx's async client costs more CPU per request than the server does on this 2-core machine
    (it capped a trivial endpoint near 300 req/s while this client reaches 2,000+), so the load
    generator writes requests and reads ``content-length`` bodies by hand to measure the server,
    not the client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, base_url: str) -> _Connection:
        url = httpx.URL(base_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        return cls(reader, writer, f"{url.host}:{url.port}")

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    def close(self) -> None:
        self.writer.close()


async def _drive(base_url: str, make_request: Any, *, total: int, seconds: float, concurrency: int) -> Stats:
    """Send up to ``total`` requests from ``concurrency`` keep-alive connections within ``seconds``."""
    stats = Stats()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        connection = await _Connection.open(base_url)
        try:
            while issued < total and time.perf_counter() < deadline:
                n = issued
                issued += 1
                method, path, headers, body = make_request(n)
                started = time.perf_counter()
                try:
                    status, _ = await connection.request(method, path, headers, body)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    stats.fail(type(exc).__name__)
                    connection.close()
                    connection = await _Connection.open(base_url)
                    continue
                elapsed = time.perf_counter() - started
                if status == 200:
                    stats.latencies.append(elapsed)
                else:
                    stats.fail(str(status))
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.wall = time.perf_counter() - began
    return stats


def _event_request(key: str, customers: int, run_id: str) -> Any:
    headers = {"x-perkamo-api-key": key, "content-type": "application/json"}

    def make(n: int) -> tuple[str, str, dict[str, str], bytes]:
        body = {
            "user_id": f"bench_{n % customers}",
            "event": "purchase.completed" if n % 4 == 0 else "page.viewed",
            "transaction_id": f"bench_{run_id}_{n}",
            "context": {"amount": 1000 + n % 5000, "currency": "CZK"},
        }
        return "POST", "/v1/events", headers, json.dumps(body).encode()

    return make


def _customer_request(key: str, customers: int) -> Any:
    headers = {"x-perkamo-api-key": key}

    def make(n: int) -> tuple[str, str, dict[str, str], bytes]:
        return "GET", f"/v1/customer/bench_{n % customers}", headers, b""

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="POST /v1/events requests at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="time bound of the events phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent event clients")
    parser.add_argument("--customers", type=int, default=1_000, help="distinct customers the events spread over")
    parser.add_argument("--reads", type=int, default=3_000, help="GET /v1/customer requests")
    parser.add_argument(
        "--read-concurrency", default="1,4", help="comma-separated client counts for the customer reads phase"
    )
    parser.add_argument("--warmup", type=int, default=300, help="events sent before measuring")
    parser.add_argument("--database", help="SQLite file (default: a fresh temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="perkbridge-bench-") as tmp:
        db_path = Path(args.database) if args.database else Path(tmp) / "bench.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKBRIDGE_", "PERKAMO_"))}
        env["PERKBRIDGE_DATABASE_URL"] = f"sqlite:///{db_path}"
        key = json.loads(_cli(env, "keys", "create", "--space", "bench", "--json"))["key"]
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
             "--log-level", "warning"],
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("perkbridge serve did not start")
                time.sleep(0.1)
            for module, body in PROGRAM.items():
                httpx.post(
                    f"{base_url}/v1/admin/config/{module}",
                    json={"version": "bench", "active": True, "body": body},
                    headers={"x-perkamo-api-key": key},
                ).raise_for_status()
            run_id = secrets.token_hex(4)
            events_of = _event_request(key, args.customers, run_id)
            asyncio.run(_drive(base_url, events_of, total=args.warmup, seconds=60, concurrency=args.concurrency))
            measured = _event_request(key, args.customers, run_id + "m")
            events = asyncio.run(_drive(base_url, measured, total=args.events, seconds=args.seconds, concurrency=args.concurrency))
            reads = {
                int(clients): asyncio.run(
                    _drive(
                        base_url, _customer_request(key, args.customers), total=args.reads, seconds=args.seconds,
                        concurrency=int(clients),
                    )
                )
                for clients in str(args.read_concurrency).split(",")
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "settings": vars(args),
        "events": events.report("POST /v1/events"),
        "customer": [stats.report(f"GET /v1/customer/{{id}} with {clients} clients") for clients, stats in reads.items()],
    }
    print(json.dumps(results, indent=2))
    events_ok = results["events"]["req_per_s"] >= 1000 and results["events"]["p99_ms"] <= 50
    print(f"events: {'met' if events_ok else 'NOT met'} (>= 1000 events/s with p99 <= 50 ms)")
    for clients, stats in reads.items():
        p99 = stats.report("")["p99_ms"]
        print(f"GET customer with {clients} clients: p99 {p99} ms, {'met' if p99 <= 20 else 'NOT met'} (<= 20 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
