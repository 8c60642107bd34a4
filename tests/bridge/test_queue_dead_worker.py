"""Issue 18's dead worker: three ``perkbridge worker`` processes sync twelve sandbox businesses
(latency on, a sync every 6 s) on one PostgreSQL database.  New activity arrives for several
businesses; the worker running one business's sync is killed with ``kill -9`` while its
transactions page is in flight (held at the sandbox's gate).  Every business then has a sync that
saw the new activity within two sync intervals of the recovery, all twelve reconcile exactly,
and no transaction was committed by two runs (the fence)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from typer.testing import CliRunner

from bridge.cli import app as cli_app
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import SPACE, subprocess_env
from tests.bridge.gates import gated_transactions
from tests.bridge.test_queue_workers import PAGE, TIMEOUT, _rows, _sandbox, _wait

pytestmark = pytest.mark.slow

BUSINESSES = 12
INTERVAL_SECONDS = 6.0  # sync_interval_minutes = 0.1
STALLED_AFTER = 3.0
LEASE_SECONDS = 5.0
NEW_FOR_VICTIM = 3 * PAGE  # three pages of new activity: the kill lands on the second
RUNNING = (
    "SELECT worker FROM scheduler_job_runs WHERE kind = 'sync' AND business_id = :b AND finished_at IS NULL"
)
COUNTED = (
    "SELECT read, applied, (SELECT count(*) FROM bridge_run_events WHERE run_id = :r) "
    "FROM bridge_runs WHERE id = :r"
)


def _config(path: Path, businesses: list[str]) -> Path:
    path.write_text(
        f"[schedule]\nbusinesses = {json.dumps(businesses)}\n"
        f"sync_interval_minutes = {INTERVAL_SECONDS / 60}\nworker_heartbeat_seconds = 0.5\n"
        f"stalled_after_seconds = {STALLED_AFTER}\nlease_seconds = {LEASE_SECONDS}\n"
        f"[perkville]\npage_size = {PAGE}\nrequests_per_second = 1000\n",
        encoding="utf-8",
    )
    return path


class Workers:
    """Worker processes whose stderr goes to a file each (read after the fact, never a full pipe)."""

    def __init__(self, config: Path, env: dict[str, str], logs: Path) -> None:
        self.config, self.env, self.logs = config, env, logs
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("w") as err:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "bridge", "--config", str(self.config), "worker", "--name", name],
                env=self.env, stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True,
            )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def live(self) -> list[subprocess.Popen[str]]:
        return [p for p in self.procs.values() if p.returncode is None]

    def stop_all(self) -> None:
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            if proc.returncode is None:
                proc.wait(TIMEOUT)
                assert proc.returncode == 0, self.log(name)
                assert "Traceback" not in self.log(name), self.log(name)

    def kill_all(self) -> None:
        for proc in self.live():
            proc.kill()
            proc.wait(TIMEOUT)


@contextmanager
def _workers(config: Path, env: dict[str, str], logs: Path, names: list[str]) -> Iterator[Workers]:
    workers = Workers(config, env, logs)
    try:
        for name in names:
            workers.start(name)
        yield workers
    finally:
        workers.kill_all()  # after a failure: nothing outlives the test


def _synced_since(engine: Engine, since: datetime) -> dict[str, tuple[datetime, str]]:
    """Per business: (finished_at, worker) of its first successful sync started at or after ``since``."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("scheduler_job_runs"):
            return {}  # the workers are still migrating
    rows = _rows(
        engine,
        "SELECT business_id, finished_at, worker FROM scheduler_job_runs "
        "WHERE kind = 'sync' AND outcome = 'success' AND started_at >= :since ORDER BY started_at",
        since=since,
    )
    first: dict[str, tuple[datetime, str]] = {}
    for business, finished, worker in rows:
        first.setdefault(str(business), (finished, str(worker)))
    return first


def _add_activity(box: Sandbox, business: int, count: int) -> None:
    ledger = box.ledger
    perk = next(
        p["perk_id"]
        for p in ledger.perks.values()
        if p["business"] == business and p["classification"] == "EARN" and p["points"]
    )
    connections = ledger.businesses[business].connection_ids
    for n in range(count):
        user = ledger.connections[connections[n % len(connections)]]["user"]
        box.add_transaction(business=business, perk=perk, user=user)


def _reconcile(config: Path, env: dict[str, str], business: str) -> dict[str, Any]:
    from bridge.cli import common

    common.STATE.config_file = str(config)  # what main() takes out of the command line
    common.STATE._settings = None
    try:
        result = CliRunner().invoke(cli_app, ["reconcile", "--business", business, "--json"], env=env)
    finally:
        common.STATE.config_file = None
        common.STATE._settings = None
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_worker_killed_mid_page_all_twelve_businesses_reconcile_within_two_intervals(
    pg_url: str, tmp_path: Path
) -> None:
    with _sandbox(seed=18, businesses=BUSINESSES, members=30, transactions=300) as box:
        box.set_network(latency_ms=30)
        ids = box.business_ids
        businesses = [str(b) for b in ids]
        config = _config(tmp_path / "perkbridge.toml", businesses)
        env = subprocess_env(box, pg_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        engine = create_db_engine(pg_url)
        started = datetime.now(UTC)
        try:
            with _workers(config, env, tmp_path, ["w1", "w2", "w3"]) as workers:
                _wait("a first sync of every business",
                      lambda: len(_synced_since(engine, started)) == BUSINESSES, workers.live())

                # New activity for five businesses; the victim's second page is held at the gate.
                victim = ids[0]
                with gated_transactions(box, PAGE, business=victim) as gate:
                    _add_activity(box, victim, NEW_FOR_VICTIM)
                    for other in ids[1:5]:
                        _add_activity(box, other, 7)
                    added = datetime.now(UTC)
                    assert gate.reached.wait(TIMEOUT), "no sync asked for the victim's second page"
                    _wait("the victim's running sync", lambda: bool(_rows(engine, RUNNING, b=str(victim))),
                          workers.live())
                    [(doomed,)] = _rows(engine, RUNNING, b=str(victim))
                    [(run_id,)] = _rows(
                        engine,
                        "SELECT id FROM bridge_runs WHERE business = :b AND direction = 'import' "
                        "AND finished_at IS NULL",
                        b=str(victim),
                    )
                    killed_at = datetime.now(UTC)
                    workers.procs[doomed].kill()  # kill -9 while its page is in flight
                    workers.procs[doomed].wait(TIMEOUT)
                    at_kill = _rows(engine, COUNTED, r=run_id)

                _wait("a sync of every business since the new activity",
                      lambda: len(_synced_since(engine, added)) == BUSINESSES, workers.live())
                synced = _synced_since(engine, added)
                workers.stop_all()

            # The bound: the dead worker's job is given back once its heartbeat is STALLED_AFTER
            # old (checked every STALLED_AFTER / 4) and its run lease lapses LEASE_SECONDS after
            # its last renewal; from the later of the two, two sync intervals.  The times are the
            # workers' own records (scheduler_job_runs), so the test's polling adds nothing.
            recovered = killed_at + timedelta(seconds=max(STALLED_AFTER * 1.25, LEASE_SECONDS))
            bound = recovered + timedelta(seconds=2 * INTERVAL_SECONDS)
            late = {b: f for b, (f, _w) in synced.items() if f > bound}
            assert not late, f"synced later than two intervals after the recovery ({recovered}): {late}"
            assert synced[str(victim)][1] != doomed

            logs = "".join(workers.log(name) for name in workers.procs if name != doomed)
            assert "was stalled on worker" in logs, logs

            # The killed run counted nothing after the kill; it ends interrupted, by its successor.
            assert _rows(engine, COUNTED, r=run_id) == at_kill
            assert _rows(engine, "SELECT status FROM bridge_runs WHERE id = :r", r=run_id) == [
                ("interrupted",)
            ]
            # The fence: every applied transaction was committed by exactly one run.
            twice = _rows(
                engine,
                "SELECT business, transaction_id FROM bridge_run_events GROUP BY 1, 2 "
                "HAVING count(DISTINCT run_id) > 1",
            )
            assert twice == [] and _rows(engine, "SELECT count(*) FROM bridge_run_events")[0][0] > 0
        finally:
            engine.dispose()
        for business in businesses:
            report = _reconcile(config, env, business)
            assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0, business
