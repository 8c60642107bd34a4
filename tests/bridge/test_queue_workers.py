"""``perkbridge worker`` processes against the sandbox and one PostgreSQL database: a deferred
backfill and the periodic syncs of two businesses; two workers never run one business at once;
SIGTERM mid-backfill commits the page, exits 0, and the job resumes on the next worker; the
periodic write-back job awards a Perkamo event in Perkville once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text

from bridge.state import StateStore
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import SPACE, subprocess_env
from tests.bridge.gates import gated_transactions

TIMEOUT = 180
PAGE = 25


def _config(path: Path, businesses: list[str], *, interval_minutes: float = 0.05) -> Path:
    path.write_text(
        f"[schedule]\nbusinesses = {json.dumps(businesses)}\nsync_interval_minutes = {interval_minutes}\n"
        "worker_heartbeat_seconds = 0.5\nstalled_after_seconds = 3\nlease_seconds = 10\n"
        f"[perkville]\npage_size = {PAGE}\nrequests_per_second = 1000\n",
        encoding="utf-8",
    )
    return path


def _perkbridge(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _run(config: Path, env: dict[str, str], *args: str) -> Any:
    proc = _perkbridge(config, env, *args)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return json.loads(out)


def _wait(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def _rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def _job_status(engine: Engine, job_id: int) -> str:
    rows = _rows(engine, "SELECT status::text FROM procrastinate_jobs WHERE id = :id", id=job_id)
    return str(rows[0][0]) if rows else "missing"


@contextmanager
def _sandbox(**kwargs: Any) -> Iterator[Sandbox]:
    box = Sandbox(**kwargs)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def _synced(engine: Engine, business: str) -> bool:
    return bool(_rows(
        engine,
        "SELECT 1 FROM scheduler_job_runs WHERE kind = 'sync' AND business_id = :b AND outcome = 'success'",
        b=business,
    ))


def test_a_worker_runs_a_deferred_backfill_and_the_periodic_syncs_of_two_businesses(
    pg_url: str, tmp_path: Path
) -> None:
    with _sandbox(seed=3, businesses=2, members=10, transactions=60) as box:
        b1, b2 = (str(b) for b in box.business_ids)
        config = _config(tmp_path / "perkbridge.toml", [b1, b2])
        env = subprocess_env(box, pg_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        job_id = _run(config, env, "backfill", "--enqueue", "--business", b1, "--json")["job_id"]
        worker = _perkbridge(config, env, "worker", "--name", "w-one")
        engine = create_db_engine(pg_url)
        try:
            _wait("the backfill", lambda: _job_status(engine, job_id) == "succeeded", [worker])
            _wait("a sync of each business", lambda: _synced(engine, b1) and _synced(engine, b2), [worker])
            listed = _run(config, env, "jobs", "list", "--json", "--business", b2)["jobs"]
            assert listed and {job["kind"] for job in listed} <= {"sync"}
            assert {job["args"]["business_id"] for job in listed} == {b2}
            err = _stop(worker)
            assert f"job {job_id} perkbridge.backfill business {b1} on worker w-one" in err
            runs = _rows(engine, "SELECT DISTINCT worker FROM scheduler_job_runs")
            assert runs == [("w-one",)]
            # Job arguments: business ids and options only, never a secret.
            stored = _rows(engine, "SELECT args::text FROM procrastinate_jobs")
            keys = {key for (args,) in stored for key in json.loads(args)}
            assert keys == {"business_id", "timestamp"} | ({"mode"} if "mode" in keys else set())
            secrets = [v for k, v in env.items() if k.endswith(("SECRET", "PASSWORD", "TOKEN", "USERNAME"))]
            assert secrets and not [v for v in secrets if any(v in args for (args,) in stored)]
            backfills = [r for r in StateStore(engine).runs.recent(b1, 50) if r.kind == "backfill"]
            assert [r.status for r in backfills] == ["succeeded"]
        finally:
            engine.dispose()
        # The result reconciles (both businesses, each in its own Space).
        for business in (b1, b2):
            report = _run(config, env, "reconcile", "--business", business, "--json")
            assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0


def test_two_workers_never_run_one_business_at_once(pg_url: str, tmp_path: Path) -> None:
    with _sandbox(seed=4, businesses=2, members=15, transactions=120) as box:
        businesses = [str(b) for b in box.business_ids]
        config = _config(tmp_path / "perkbridge.toml", businesses)
        env = subprocess_env(box, pg_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        for business in businesses:
            _run(config, env, "backfill", "--enqueue", "--business", business, "--json")
        workers = [_perkbridge(config, env, "worker", "--name", f"w{n}") for n in (1, 2)]
        engine = create_db_engine(pg_url)
        try:
            def enough() -> bool:
                with engine.connect() as conn:
                    if not inspect(conn).has_table("scheduler_job_runs"):
                        return False  # the workers are still migrating
                rows = _rows(engine, "SELECT count(*) FROM scheduler_job_runs WHERE outcome = 'success'")
                return int(rows[0][0]) >= 8

            _wait("eight syncs", enough, workers)
            for worker in workers:
                _stop(worker)
            runs = _rows(
                engine,
                "SELECT business, direction, kind, started_at, finished_at FROM bridge_runs ORDER BY started_at",
            )
            for business in businesses:
                mine = [r for r in runs if r[0] == business and r[1] == "import"]
                assert len(mine) >= 2, business
                for before, after in zip(mine, mine[1:], strict=False):
                    assert before[4] is not None and before[4] <= after[3], (
                        f"two runs of business {business} overlapped: {before} and {after}"
                    )
            # One job per business and period, whichever worker deferred it.
            periods = _rows(
                engine,
                "SELECT task_name, args->>'business_id', args->>'timestamp', count(*) FROM procrastinate_jobs "
                "WHERE args ? 'timestamp' GROUP BY 1, 2, 3 HAVING count(*) > 1",
            )
            assert periods == []
            # The fence: every applied transaction was committed by exactly one run.
            twice = _rows(
                engine,
                "SELECT business, transaction_id FROM bridge_run_events GROUP BY 1, 2 "
                "HAVING count(DISTINCT run_id) > 1",
            )
            assert twice == [] and _rows(engine, "SELECT count(*) FROM bridge_run_events")[0][0] > 0
            assert StateStore(engine).leases.all() == []
        finally:
            engine.dispose()
        for business in businesses:
            report = _run(config, env, "reconcile", "--business", business, "--json")
            assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0


def _offset(engine: Engine, business: str) -> int:
    raw = StateStore(engine).cursors.get(business, "backfill")
    return int(json.loads(raw).get("offset", 0)) if raw else 0


@dataclass
class Queued:
    """A backfill of one sandbox business waiting in the queue (no sync runs: a long interval)."""

    box: Sandbox
    business: str
    config: Path
    env: dict[str, str]
    job_id: int
    engine: Engine

    def worker_past_a_page(self, name: str, act: Callable[[subprocess.Popen[str]], None]) -> subprocess.Popen[str]:
        """Start a worker; once its backfill committed a page and waits at the sandbox's gate,
        ``act`` on it, then let the sandbox serve the rest."""
        with gated_transactions(self.box, 100) as gate:
            try:
                worker = _perkbridge(self.config, self.env, "worker", "--name", name)
                assert gate.reached.wait(TIMEOUT), "the backfill never asked for the gated page"
                _wait("a committed page", lambda: _offset(self.engine, self.business) >= PAGE, [worker])
                act(worker)
            finally:
                gate.open()
        return worker

    def status(self) -> str:
        return _job_status(self.engine, self.job_id)

    def backfills(self) -> list[str]:
        return [r.status for r in StateStore(self.engine).runs.recent(self.business, 10) if r.kind == "backfill"]

    def assert_reconciles(self) -> None:
        report = _run(self.config, self.env, "reconcile", "--json")
        assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0


@contextmanager
def _queued_backfill(pg_url: str, tmp_path: Path, seed: int) -> Iterator[Queued]:
    with _sandbox(seed=seed, members=25, transactions=2000) as box:
        business = str(box.business_ids[0])
        config = _config(tmp_path / "perkbridge.toml", [business], interval_minutes=60)
        env = subprocess_env(box, pg_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        job_id = _run(config, env, "backfill", "--enqueue", "--json")["job_id"]
        engine = create_db_engine(pg_url)
        try:
            yield Queued(box, business, config, env, job_id, engine)
        finally:
            engine.dispose()


def test_sigterm_mid_backfill_commits_the_page_exits_0_and_the_job_resumes(
    pg_url: str, tmp_path: Path
) -> None:
    with _queued_backfill(pg_url, tmp_path, seed=5) as queued:
        first = queued.worker_past_a_page("first", lambda worker: worker.send_signal(signal.SIGTERM))
        _out, err = first.communicate(timeout=TIMEOUT)
        assert first.returncode == 0, err
        assert PAGE <= _offset(queued.engine, queued.business) < 2000
        [run] = StateStore(queued.engine).runs.recent(queued.business, 10)
        assert run.status == "stopped" and run.finished_at is not None
        assert StateStore(queued.engine).leases.all() == [], "the stopped run kept its lease"
        # The job is back in the queue, due now, for whichever worker comes next.
        assert queued.status() == "todo"

        second = _perkbridge(queued.config, queued.env, "worker", "--name", "second")
        _wait("the resumed backfill", lambda: queued.status() == "succeeded", [second])
        _stop(second)
        assert queued.backfills() == ["succeeded", "stopped"]
        queued.assert_reconciles()


def test_cancelling_a_running_backfill_stops_it_after_its_page(pg_url: str, tmp_path: Path) -> None:
    with _queued_backfill(pg_url, tmp_path, seed=6) as queued:
        def cancel(_worker: subprocess.Popen[str]) -> None:
            [job] = _run(queued.config, queued.env, "jobs", "cancel", str(queued.job_id), "--json")["jobs"]
            assert job["status"] == "doing" and job["abort_requested"] is True

        worker = queued.worker_past_a_page("canceller", cancel)
        _wait("the aborted job", lambda: queued.status() == "aborted", [worker])
        assert queued.backfills() == ["stopped"]
        assert PAGE <= _offset(queued.engine, queued.business) < 2000
        _stop(worker)  # the worker itself kept running


def test_a_killed_workers_backfill_is_retried_by_another_worker_and_resumes(
    pg_url: str, tmp_path: Path
) -> None:
    with _queued_backfill(pg_url, tmp_path, seed=7) as queued:
        doomed = queued.worker_past_a_page("doomed", lambda worker: worker.kill())  # kill -9 mid-run
        doomed.communicate(timeout=TIMEOUT)
        assert queued.status() == "doing"  # until a live worker notices
        rescuer = _perkbridge(queued.config, queued.env, "worker", "--name", "rescuer")
        _wait("the rescued backfill", lambda: queued.status() == "succeeded", [rescuer])
        err = _stop(rescuer)
        assert f"job {queued.job_id} (perkbridge.backfill {queued.business}) was stalled" in err
        assert queued.backfills() == ["succeeded", "interrupted"]
        rescued, killed = [r for r in StateStore(queued.engine).runs.recent(queued.business, 10)
                           if r.kind == "backfill"]
        # The killed run ends when the rescue took its lease over, before the rescue's run began.
        assert killed.finished_at is not None and killed.duration_ms is not None
        assert killed.started_at < killed.finished_at <= rescued.started_at
        attempts = _rows(queued.engine, "SELECT attempts FROM procrastinate_jobs WHERE id = :id", id=queued.job_id)
        assert attempts == [(2,)]  # the killed attempt and the rescue
        queued.assert_reconciles()


def test_a_worker_writes_back_on_its_periodic_job_and_the_next_sync_finds_a_duplicate(
    pg_url: str, tmp_path: Path
) -> None:
    from importlib import resources

    from perkamo_core.models import EventInput
    from perkamo_core.service import CoreService

    visit = "visit.checked_in"
    source = "perkamo:pos:checkin:1"
    with _sandbox(seed=4, members=8, transactions=40) as box:
        business = str(box.business_ids[0])
        perk = next(
            p for p in sorted(box.ledger.perks.values(), key=lambda p: p["perk_id"])
            if str(p["business"]) == business and p["classification"] == "EARN" and p["points"] > 0
        )
        user = min(c["user"] for c in box.ledger.connections.values() if str(c["business"]) == business)
        config = _config(tmp_path / "perkbridge.toml", [business], interval_minutes=60)
        config.write_text(
            config.read_text(encoding="utf-8").replace("[schedule]\n", "[schedule]\nwriteback_interval_seconds = 1\n")
            + f"[writeback]\nenabled = true\nevent_perks = {{ \"{visit}\" = {perk['perk_id']} }}\n",
            encoding="utf-8",
        )
        env = subprocess_env(box, pg_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        assert _run(config, env, "backfill", "--json")["status"] == "succeeded"
        engine = create_db_engine(pg_url)
        try:
            # A Perkamo-side event with a perk to award it: what a dual run writes back.
            service = CoreService(engine)
            modules = json.loads(resources.files("config").joinpath("programs/migration.json").read_text("utf-8"))
            modules["events"]["rules"].append(
                {"event": visit, "key": "visit", "wallet": "points", "formula": str(perk["points"])}
            )
            service.load_program(SPACE, modules)
            event = EventInput(user_id=f"perkville:{user}", event=visit, transaction_id="pos:checkin:1")
            assert service.ingest(SPACE, event)["applied"] is True

            worker = _perkbridge(config, env, "worker", "--name", "w-back")
            _wait("the write-back", lambda: any(t.trans_source_id == source for t in box.ledger.txns.values()),
                  [worker])
            _wait("its job's record", lambda: bool(_rows(
                engine,
                "SELECT 1 FROM scheduler_job_runs WHERE kind = 'writeback' AND business_id = :b "
                "AND outcome = 'success'", b=business,
            )), [worker])
            _stop(worker)
        finally:
            engine.dispose()
        (row,) = [t for t in box.ledger.txns.values() if t.trans_source_id == source]
        assert (row.user_id, row.perk_id, row.classification) == (user, perk["perk_id"], "EARN")
        # The next sync reads the row back as the same Perkamo event: a duplicate, nothing moves.
        sync = _run(config, env, "sync", "--json")
        assert sync["kinds"]["transaction"]["duplicate"] >= 1, sync
        assert sync["kinds"]["transaction"]["applied"] == 0, sync
        assert sync["written_back"] == 0, sync  # the worker's job already did it, once
        report = _run(config, env, "reconcile", "--json")
        assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0
