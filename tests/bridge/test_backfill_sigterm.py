"""SIGTERM on ``perkbridge backfill``: it stops at a safe point (the page it is on is committed with
the checkpoint), releases its lease, says so in one line and exits 1; the same command resumes and
the result reconciles.

The sandbox holds the transactions pages past an offset until the signal has been sent, so the
signal always lands mid-history, whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.state import StateStore
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import SPACE, subprocess_env
from tests.bridge.gates import gated_transactions

TRANSACTIONS = 2000
PAGE = 25
GATE_OFFSET = 100
TIMEOUT = 180


def _perkbridge(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, so killpg reaches it and its worker only
    )


def _checkpoint_offset(db_url: str, business: str) -> int:
    engine = create_db_engine(db_url)
    try:
        raw = StateStore(engine).cursors.get(business, "backfill")
    finally:
        engine.dispose()
    return int(json.loads(raw).get("offset", 0)) if raw else 0


def _wait_for_checkpoint(db_url: str, business: str, offset: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _checkpoint_offset(db_url, business) < offset:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the backfill committed nothing before the gate"
        time.sleep(0.05)


@pytest.mark.parametrize("whole_group", [False, True], ids=["kill-pid", "kill-group"])
def test_sigterm_stops_at_a_safe_point_releases_the_lease_and_a_rerun_resumes(
    db_url: str, tmp_path: Path, whole_group: bool
) -> None:
    box = Sandbox(seed=5, members=25, transactions=TRANSACTIONS)
    box.start()
    try:
        config = tmp_path / "perkbridge.toml"
        config.write_text(f"[perkville]\npage_size = {PAGE}\nrequests_per_second = 1000\n")
        env = subprocess_env(box, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        business = str(box.business_ids[0])
        with gated_transactions(box, GATE_OFFSET) as gate:
            proc = _perkbridge(config, env, "backfill", "--json")
            try:
                assert gate.reached.wait(TIMEOUT), "the backfill never asked for the gated page"
                # Pages before the gate are served: wait until the first is committed (a row).
                _wait_for_checkpoint(db_url, business, PAGE, proc)
                if whole_group:
                    os.killpg(proc.pid, signal.SIGTERM)  # as systemd or a container stop sends it
                else:
                    proc.send_signal(signal.SIGTERM)
            finally:
                gate.open()
            out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 1, err
        body = json.loads(out)
        assert body["status"] == "stopped"
        assert body["read"] == body["applied"] + body["duplicate"] + body["skipped"] + body["dead_lettered"]
        last = err.splitlines()[-1]
        assert last == (
            f"error: backfill run {body['run_id']} stopped by SIGTERM; what it read is committed and "
            "its lease released; run the same command again to resume"
        ), err
        assert "Traceback" not in err

        engine = create_db_engine(db_url)
        try:
            state = StateStore(engine)
            run = state.runs.get(body["run_id"])
            assert run is not None and run.status == "stopped" and run.finished_at is not None
            assert state.leases.all() == [], "the stopped run kept its lease"
            checkpoint = json.loads(state.cursors.get(business, "backfill") or "{}")
            assert PAGE <= checkpoint["offset"] < TRANSACTIONS, checkpoint
        finally:
            engine.dispose()

        again = _perkbridge(config, env, "backfill", "--json")
        out, err = again.communicate(timeout=TIMEOUT)
        assert again.returncode == 0, err
        assert json.loads(out)["status"] == "succeeded"
        assert f"resuming the unfinished backfill from transaction offset {checkpoint['offset']}" in err

        check = _perkbridge(config, env, "reconcile", "--json")
        out, err = check.communicate(timeout=TIMEOUT)
        assert check.returncode == 0, err
        report = json.loads(out)
        assert report["mismatches"] == [] and report["checked"] == report["matched"] > 0
    finally:
        box.stop()
