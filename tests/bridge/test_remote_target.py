"""Remote target: a history backfill into ``perkbridge serve`` on loopback through ``connectors.perkamo``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.pipeline import Pipeline, PipelineConfig, RunOptions
from bridge.reconcile import Reconciler
from bridge.state import StateStore
from bridge.targets import RemoteTarget
from connectors.perkamo import PerkamoClient
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import MEMBERS, TRANSACTIONS, make_client, subprocess_env

REMOTE_SPACE = "remote"
MIGRATION_PROGRAM = Path(__file__).resolve().parents[2] / "config" / "programs" / "migration.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``perkbridge serve`` on a free loopback port over its own database; yields (base_url, key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))}
    env["PERKBRIDGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'remote-perkamo.db'}"
    key = json.loads(_cli(env, "keys", "create", "--space", REMOTE_SPACE, "--json"))["key"]
    _cli(env, "program", "load", str(MIGRATION_PROGRAM), "--space", REMOTE_SPACE)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"perkbridge serve did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        yield base, key
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_history_backfill_into_a_remote_perkamo_reconciles_through_its_customers(
    db_url: str, sandbox: Sandbox, served: tuple[str, str]
) -> None:
    base, key = served
    engine = create_db_engine(db_url)
    state = StateStore(engine)
    state.migrate()
    business = str(sandbox.business_ids[0])
    client = make_client(sandbox)
    perkamo = PerkamoClient(key, base_url=base, timeout=30.0)
    try:
        target = RemoteTarget(perkamo, engine, batch_size=100)
        assert "has rules for perkville" in target.ensure_program()
        config = PipelineConfig(business=business, target_kind="remote")
        first = Pipeline(state=state, source=client, target=target, config=config).run(RunOptions())
        assert first.status == "succeeded"
        assert first.kinds["transaction"]["read"] == TRANSACTIONS
        assert first.counts.dead_lettered == 0 and first.counts.balanced
        report = Reconciler(state=state, source=client, target=target, business=business).compare()
        assert report.ok and report.matched == MEMBERS, report.to_json()
        truth = sandbox.true_balances()
        user, balance = next(iter(truth.items()))
        assert perkamo.customer(f"perkville:{user}")["wallets"]["points"] == balance

        second = Pipeline(state=state, source=client, target=target, config=config).run(RunOptions())
        assert second.counts.applied == 0  # every event came back duplicate: true
        assert second.counts.duplicate + second.counts.skipped == second.counts.read
    finally:
        perkamo.close()
        client.close()
        engine.dispose()


def test_the_cli_backfills_and_reconciles_a_remote_target(
    db_url: str, sandbox: Sandbox, served: tuple[str, str], tmp_path: Path
) -> None:
    base, key = served
    env = subprocess_env(
        sandbox,
        db_url,
        PERKAMO_TARGET="remote",
        PERKAMO_BASE_URL=base,
        PERKAMO_SECRET_KEY=key,
        PERKBRIDGE_LOG_FORMAT="plain",
    )
    config = tmp_path / "remote.toml"
    config.write_text("[perkville]\nrequests_per_second = 1000\n")
    body = json.loads(_cli(env, "--config", str(config), "backfill", "--json"))
    assert body["status"] == "succeeded" and body["dead_lettered"] == 0
    report = json.loads(_cli(env, "--config", str(config), "reconcile", "--json"))
    assert report["checked"] == MEMBERS and report["mismatches"] == []
    assert key not in json.dumps(body) + json.dumps(report)
