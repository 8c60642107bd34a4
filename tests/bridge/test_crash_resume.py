"""Crash safety: ``kill -9`` a ``perkbridge backfill`` at random checkpoints mid-history, resume, compare checksums."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bridge.state import StateStore
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.service import CoreService
from tests.bridge.conftest import SPACE, Bridge, checksum, make_client, subprocess_env
from tests.bridge.killing import kill_at_progress, read_or_zero

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


def _checkpoint_offset(engine: Engine, business: str) -> int:
    """Offset of the next transactions page in the unfinished backfill's checkpoint (0 if none).

    Read only (``CursorStore.get`` reads through a deferred connection), so it never waits on a
    stopped child's write lock.
    """
    raw = StateStore(engine).cursors.get(business, "backfill")
    return int(json.loads(raw).get("offset", 0)) if raw else 0


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
        watcher = create_db_engine(db_url)
        try:
            progress = read_or_zero(watcher, lambda engine: _checkpoint_offset(engine, business))
            for _ in range(TRIALS):
                proc = _backfill(config, env)
                # Each kill is aimed at checkpoint progress, the child run in steps, never at a
                # time: a busy machine only makes the run slower, not the kill land elsewhere.
                threshold = progress() + rng.randint(25, 300)
                if kill_at_progress(proc, progress, threshold):
                    killed_mid_run += 1
                proc.communicate(timeout=60)
                offsets.append(progress())
        finally:
            watcher.dispose()
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
