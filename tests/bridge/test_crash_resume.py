"""Crash safety: ``kill -9`` a ``perkbridge backfill`` at random checkpoints mid-history, resume, compare checksums."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.state import StateStore
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.service import CoreService
from tests.bridge.conftest import SPACE, Bridge, checksum, make_client, subprocess_env

TRIALS = 6
CRASH_TRANSACTIONS = 1500


def _backfill(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), "backfill", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkpoint_offset(db_url: str, business: str) -> int:
    """Offset of the next transactions page in the unfinished backfill's checkpoint (0 if none)."""
    engine = create_db_engine(db_url)
    try:
        state = StateStore(engine)
        state.migrate()
        raw = state.cursors.get(business, "backfill")
    finally:
        engine.dispose()
    return int(json.loads(raw).get("offset", 0)) if raw else 0


def _kill_mid_history(proc: subprocess.Popen[str], db_url: str, business: str, threshold: int) -> bool:
    """SIGKILL ``proc`` once its checkpoint passed ``threshold`` transactions (False: it ended first).

    The kill is aimed by progress, not by time: start-up and page times vary with the machine's
    load, the checkpoint row does not.
    """
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _checkpoint_offset(db_url, business) >= threshold:
            os.kill(proc.pid, signal.SIGKILL)
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("in_flight", [4, 1], ids=["overlapped", "one-at-a-time"])
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(
    db_url: str, tmp_path: Path, in_flight: int
) -> None:
    box = Sandbox(seed=5, members=25, transactions=CRASH_TRANSACTIONS)
    box.start()
    try:
        config = tmp_path / "perkbridge.toml"
        # Pages of 25 with a count: with 4 in flight the client reads them overlapped.
        config.write_text(
            f"[perkville]\npage_size = 25\nrequests_per_second = 200\nmax_in_flight = {in_flight}\n"
        )
        env = subprocess_env(box, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        rng = random.Random(20261122)
        killed_mid_run = 0
        offsets: list[int] = []
        business = str(box.business_ids[0])
        for _ in range(TRIALS):
            proc = _backfill(config, env)
            # Each kill is aimed at checkpoint progress, never at a time: a busy machine only
            # makes the run slower, not the kill land elsewhere.
            threshold = _checkpoint_offset(db_url, business) + rng.randint(25, 300)
            if _kill_mid_history(proc, db_url, business, threshold):
                killed_mid_run += 1
            proc.wait()
            offsets.append(_checkpoint_offset(db_url, business))
        final = _backfill(config, env)
        out, err = final.communicate(timeout=300)
        assert final.returncode == 0, err
        body = json.loads(out)
        assert body["status"] == "succeeded"
        assert body["read"] == body["applied"] + body["duplicate"] + body["skipped"] + body["dead_lettered"]
        assert killed_mid_run >= 3, f"the kills came too late to interrupt anything: {offsets}"
        assert any(offset > 0 for offset in offsets), f"no kill landed mid-history: {offsets}"

        engine = create_db_engine(db_url)
        try:
            state = StateStore(engine)
            statuses = [run.status for run in state.runs.recent(limit=50)]
            assert "interrupted" in statuses
            resumed = checksum(engine)
        finally:
            engine.dispose()

        reference_engine = create_db_engine(f"sqlite:///{tmp_path / 'reference.db'}")
        try:
            state = StateStore(reference_engine)
            state.migrate()
            service = CoreService(reference_engine)
            service.migrate()
            client = make_client(box)
            try:
                reference = Bridge(box, reference_engine, state, service, client, str(box.business_ids[0]))
                assert reference.backfill("history").status == "succeeded"
                assert reference.reconcile().ok
            finally:
                client.close()
            assert checksum(reference_engine) == resumed
        finally:
            reference_engine.dispose()
    finally:
        box.stop()
