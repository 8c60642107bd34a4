"""Simultaneous ``perkbridge backfill`` runs of one business: exactly one runs, every other one says
"already running" (exit 1) and none fails with "database is locked", on a fresh database.

The sandbox holds the winner's first transactions request until every other run has ended, so
the winner holds the lease throughout, whatever the machine's load; the outcome is exact.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import SPACE, subprocess_env
from tests.bridge.gates import TransactionsGate, gated_transactions

CONTENDERS = 6
TIMEOUT = 180
LEAKS = ("locked", "Traceback", "[SQL", "[parameters", "OperationalError")


def _backfill(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), "backfill", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _start_together(n: int, config: Path, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    return [_backfill(config, env) for _ in range(n)]


def _wait_until_all_but_one_ended(procs: list[subprocess.Popen[str]], gate: TransactionsGate) -> None:
    deadline = time.monotonic() + TIMEOUT
    while sum(p.poll() is not None for p in procs) < len(procs) - 1:
        assert time.monotonic() < deadline, "the contenders did not end"
        time.sleep(0.05)
    assert gate.reached.wait(TIMEOUT), "no run reached the transactions phase"


def _assert_one_ran_the_rest_already_running(
    procs: list[subprocess.Popen[str]], business: str
) -> None:
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        outcomes.append((proc.returncode, out, err))
    ran = [o for o in outcomes if o[0] == 0]
    refused = [o for o in outcomes if o[0] != 0]
    assert len(ran) == 1, outcomes
    assert json.loads(ran[0][1])["status"] == "succeeded"
    for code, _out, err in refused:
        assert code == 1, err
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"error: import:{business} is already running (held by "), err
        assert not any(leak in err for leak in LEAKS), err


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "perkbridge.toml"
    config.write_text("[perkville]\npage_size = 100\nrequests_per_second = 1000\n")
    return config


def test_simultaneous_backfills_on_a_fresh_database_one_runs_the_rest_say_already_running(
    db_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    env = subprocess_env(sandbox, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
    config = _config(tmp_path)
    with gated_transactions(sandbox, 0) as gate:
        procs = _start_together(CONTENDERS, config, env)  # the database does not exist yet
        try:
            _wait_until_all_but_one_ended(procs, gate)
        finally:
            gate.open()
    _assert_one_ran_the_rest_already_running(procs, str(sandbox.business_ids[0]))


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_contenders_say_already_running_while_the_holder_has_the_sqlite_write_lock(
    db_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A backfill holds SQLite's write lock page after page; the contenders' start (migrations,
    lease check) must not need it, or they wait out the busy timeout and say "database is locked"."""
    env = subprocess_env(sandbox, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
    config = _config(tmp_path)
    first = subprocess.run(  # an existing, migrated database
        [sys.executable, "-m", "bridge", "--config", str(config), "status"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert first.returncode == 0, first.stderr
    with gated_transactions(sandbox, 0) as gate:
        holder = _backfill(config, env)
        procs = [holder]
        try:
            assert gate.reached.wait(TIMEOUT), holder.communicate()
            writer = sqlite3.connect(str(make_url(db_url).database), isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")  # what the holder's page transactions do
                procs += _start_together(CONTENDERS - 1, config, env)
                for proc in procs[1:]:
                    proc.wait(timeout=TIMEOUT)
            finally:
                writer.execute("ROLLBACK")
                writer.close()
        finally:
            gate.open()
    _assert_one_ran_the_rest_already_running(procs, str(sandbox.business_ids[0]))
