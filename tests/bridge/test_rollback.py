"""``perkbridge rollback --run ID`` against the sandbox: exact, idempotent, resumable, refusing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bridge.reissue import reissued_id, rollback_id
from bridge.rollback import DIRECTION, EVENT, RollbackRefusedError, check_run, plan_rollback, run_rollback
from bridge.state import StateStore
from bridge.state.schema import runs
from bridge.state.stores import read_connection
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.models import EventInput
from tests.bridge.conftest import SPACE, Bridge, checksum, event_count, run, subprocess_env
from tests.bridge.killing import kill_at_progress, read_or_zero


def _wallets(bridge: Bridge) -> dict[str, Decimal]:
    return dict(bridge.service.wallet_balances(SPACE, "points"))


def _rollback(bridge: Bridge, run_id: int, **options: Any) -> dict[str, Any]:
    summary = run_rollback(bridge.engine, bridge.state, bridge.service, run_id, lease_seconds=30, **options)
    return summary.to_json()


def _earn_perk(bridge: Bridge) -> int:
    return int(next(p["perk_id"] for p in bridge.box.ledger.perks.values()
                    if p["classification"] == "EARN" and p["points"] > 0))


@pytest.mark.parametrize(
    ("full", "generation", "expected"),
    [
        ("perkville:25:txn:1", 0, "perkville:25:txn:1"),
        ("perkville:25:txn:1", 2, "perkville:25:txn:1:again:2"),
        ("perkville:25:src:" + "x" * 240, 1, None),  # past 256 characters: hashed
    ],
    ids=["first", "reissued", "hashed"],
)
def test_reissued_and_rollback_ids_are_deterministic_and_bounded(
    full: str, generation: int, expected: str | None
) -> None:
    sent = reissued_id(full, generation, "25")
    assert sent == reissued_id(full, generation, "25") and len(sent) <= 256
    if expected is None:
        assert sent.startswith("perkville:25:h:") and len(sent) == len("perkville:25:h:") + 64
    else:
        assert sent == expected
    assert rollback_id("perkville:25:txn:1", "25") == "perkville:25:txn:1:rollback"
    assert rollback_id("perkville:25:txn:" + "y" * 240, "25").startswith("perkville:25:h:")


def test_a_run_links_exactly_the_events_it_applied_in_commit_order(bridge: Bridge) -> None:
    from perkamo_core.storage import events

    first = bridge.backfill()
    linked = list(bridge.state.run_events.of_run(first.run_id))
    with bridge.engine.connect() as conn:
        stored = [row[0] for row in conn.execute(select(events.c.transaction_id).order_by(events.c.id))]
    assert [link.transaction_id for link in linked] == stored  # all of them, in commit order
    assert {link.space for link in linked} == {SPACE} and all(link.base_id is None for link in linked)
    again = bridge.backfill()  # everything a duplicate: nothing linked
    assert again.counts.applied == 0 and bridge.state.run_events.count(again.run_id) == 0


def test_rollback_of_a_sync_gives_the_wallets_as_before_it_once(bridge: Bridge) -> None:
    assert bridge.backfill().status == "succeeded"
    before = _wallets(bridge)
    users = sorted(int(c["user"]) for c in bridge.box.ledger.connections.values())[:5]
    for n, user in enumerate(users):
        bridge.box.add_transaction(perk=_earn_perk(bridge), user=user, quantity=1 + n)
    sync = bridge.sync()
    assert sync.counts.applied >= len(users)
    assert _wallets(bridge) != before

    body = _rollback(bridge, sync.run_id)
    assert body["status"] == "succeeded"
    assert body["applied"] >= len(users) and body["duplicate"] == 0
    assert body["read"] == body["applied"] + body["duplicate"] + body["skipped"] + body["dead_lettered"]
    assert {k: v for k, v in _wallets(bridge).items() if v or k in before} == before

    record = bridge.state.runs.get(int(body["run_id"]))
    assert record is not None and record.direction == DIRECTION and record.status == "succeeded"
    assert record.counts.as_dict() == {k: body[k] for k in record.counts.as_dict()}

    # Running it twice reverses once.
    after_first = checksum(bridge.engine)
    again = _rollback(bridge, sync.run_id)
    assert again["applied"] == 0 and again["duplicate"] == body["applied"]
    assert checksum(bridge.engine) == after_first


def test_rollback_of_a_first_backfill_then_a_new_backfill_applies_everything_again(bridge: Bridge) -> None:
    first = bridge.backfill()
    assert first.status == "succeeded" and bridge.reconcile().ok
    events_after_first = event_count(bridge.engine)

    body = _rollback(bridge, first.run_id)
    assert body["status"] == "succeeded"
    assert set(_wallets(bridge).values()) == {Decimal(0)}  # every wallet back at 0
    assert event_count(bridge.engine) == events_after_first + body["applied"]  # nothing deleted
    with bridge.engine.connect() as conn:
        from perkamo_core.storage import events

        names = {row[0] for row in conn.execute(select(events.c.transaction_id).where(events.c.event == EVENT))}
    assert names and all(name.endswith(":rollback") for name in names)

    second = bridge.backfill()
    assert second.status == "succeeded"
    # The originals are not duplicates now: every record with a wallet movement applies again
    # (members whose traits did not change and 0-point activities were never reversed).
    assert second.counts.applied + second.counts.duplicate == first.counts.applied
    assert second.counts.applied >= len(names) - second.counts.duplicate
    assert bridge.reconcile().ok

    # A rollback of the new backfill reverses its reissued ids, and a third backfill comes back.
    assert _rollback(bridge, second.run_id)["status"] == "succeeded"
    assert set(_wallets(bridge).values()) == {Decimal(0)}
    third = bridge.backfill()
    assert third.counts.applied == second.counts.applied
    assert bridge.reconcile().ok


def test_a_rollback_refuses_when_points_were_spent_since_and_allow_negative_passes(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0, err
    run_id = body["run_id"]
    engine = create_db_engine(db_url)
    try:
        from perkamo_core.service import CoreService

        service = CoreService(engine)
        balances = service.wallet_balances(SPACE, "points")
        spender, balance = max(balances.items(), key=lambda item: item[1])
        assert balance > 0
        service.ingest(SPACE, EventInput(user_id=spender, event="perkville.balance_adjusted",
                                         transaction_id="test:spent", context={"amount": -int(balance)}))
        before = checksum(engine)

        code, _, err = run(capsys, cli_env, "rollback", "--run", str(run_id))
        assert code == 1
        assert spender in err and "--allow-negative" in err
        assert checksum(engine) == before  # nothing written
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).where(runs.c.direction == DIRECTION)).scalar() == 0

        code, body, err = run(capsys, cli_env, "rollback", "--run", str(run_id), "--allow-negative", "--json")
        assert code == 0, err
        assert body["reversed"]["run_id"] == run_id
        after = service.wallet_balances(SPACE, "points")
        assert after[spender] == -balance  # only what was spent since is left
        assert {v for k, v in after.items() if k != spender} <= {Decimal(0)}
    finally:
        engine.dispose()


def test_dry_run_shows_members_and_amounts_and_writes_nothing(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0, err
    engine = create_db_engine(db_url)
    try:
        before = checksum(engine)
        with engine.connect() as conn:
            runs_before = conn.execute(select(func.count()).select_from(runs)).scalar()
        code, plan, err = run(capsys, cli_env, "rollback", "--run", str(body["run_id"]), "--dry-run", "--json")
        assert code == 0, err
        assert plan["dry_run"] is True and plan["refusals"] == []
        from perkamo_core.service import CoreService

        balances = CoreService(engine).wallet_balances(SPACE, "points")
        shown = {m["customer_id"]: m["wallets"]["points"] for m in plan["members"]}
        assert shown and all(shown[c]["reversal"] == -balances[c] and shown[c]["after"] == 0 for c in shown)
        code, text, _ = run(capsys, cli_env, "rollback", "--run", str(body["run_id"]), "--dry-run")
        assert code == 0 and next(iter(shown)) in text
        assert checksum(engine) == before
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(runs)).scalar() == runs_before
    finally:
        engine.dispose()


def test_unknown_runs_and_rollbacks_of_rollbacks_are_refused(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, cli_env, "rollback", "--run", "999")
    assert code == 2 and "999" in err
    first = bridge.backfill()
    with pytest.raises(RollbackRefusedError, match="Space 'test', not 'other'"):
        plan_rollback(bridge.engine, bridge.state, check_run(bridge.state, first.run_id), space="other")
    # A boost on every event would multiply the reversals of redemptions (positive movements).
    bridge.service.load_program(SPACE, {"boosts": {"boosts": [{"key": "double", "multiplier": 2}]}})
    with pytest.raises(RollbackRefusedError, match="boost 'double'"):
        _rollback(bridge, first.run_id)
    assert set(_wallets(bridge).values()) != {Decimal(0)}  # nothing reversed
    bridge.service.load_program(SPACE, {"boosts": {"boosts": [
        {"key": "double", "multiplier": 2, "events": ["perkville.points_earned"]}]}})
    body = _rollback(bridge, first.run_id)
    assert set(_wallets(bridge).values()) == {Decimal(0)}
    with pytest.raises(RollbackRefusedError, match="itself a rollback"):
        check_run(bridge.state, int(body["run_id"]))
    assert plan_rollback(bridge.engine, bridge.state, check_run(bridge.state, first.run_id)).pending == []


def _rollback_applied(engine: Engine) -> int:
    """Compensating events the rollback runs have committed so far (a reader: never waits on the
    stopped child's write lock)."""
    with read_connection(engine) as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(runs.c.applied), 0)).where(runs.c.direction == DIRECTION)
        ).scalar()
    return int(total or 0)


@pytest.mark.slow
def test_kill_9_during_a_rollback_then_resume_gives_the_same_wallets(db_url: str, tmp_path: Path) -> None:
    box = Sandbox(seed=11, members=20, transactions=300)
    box.start()
    try:
        config = tmp_path / "perkbridge.toml"
        config.write_text("[perkville]\npage_size = 100\nrequests_per_second = 1000\n")
        env = subprocess_env(box, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain")
        base = [sys.executable, "-m", "bridge", "--config", str(config)]
        done = subprocess.run([*base, "backfill", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        run_id = json.loads(done.stdout)["run_id"]

        killed = 0
        rng = random.Random(20261205)
        watcher = create_db_engine(db_url)
        try:
            progress = read_or_zero(watcher, _rollback_applied)
            for _ in range(3):
                # A random point past what earlier attempts committed (they resume from there).
                threshold = progress() + rng.randint(1, 60)
                proc = subprocess.Popen([*base, "rollback", "--run", str(run_id), "--batch", "1", "--json"],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                # Aimed at a committed counter, the child run in steps: never at a time.
                if kill_at_progress(proc, progress, threshold):
                    killed += 1
                proc.communicate(timeout=60)
        finally:
            watcher.dispose()
        assert killed == 3, "a rollback ended before its kill"
        final = subprocess.run([*base, "rollback", "--run", str(run_id), "--json"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        body = json.loads(final.stdout)
        assert body["status"] == "succeeded" and body["duplicate"] > 0

        engine = create_db_engine(db_url)
        try:
            from perkamo_core.service import CoreService

            state = StateStore(engine)
            assert set(CoreService(engine).wallet_balances(SPACE, "points").values()) == {Decimal(0)}
            statuses = [r.status for r in state.runs.recent(limit=10) if r.direction == DIRECTION]
            assert "interrupted" in statuses
            plan = plan_rollback(engine, state, check_run(state, run_id))
            assert plan.pending == []
            with engine.connect() as conn:
                from perkamo_core.storage import events

                reversals = conn.execute(select(func.count()).where(events.c.event == EVENT)).scalar()
            assert reversals == len(plan.reversals)  # each reversed exactly once
        finally:
            engine.dispose()
    finally:
        box.stop()
