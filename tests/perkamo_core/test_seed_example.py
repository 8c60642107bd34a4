"""The seed example end to end through the ``perkbridge`` CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bridge.cli import app, common
from tests.perkamo_core.test_service_ingest import SEED_RESULT

SEED_SPACE = "commerce-test"

# The seed's program: wallet points, 50 points per purchase, levels [0, 100], two perks.
SEED_PROGRAM_FILE: dict[str, Any] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points"}]},
    "events": {"rules": [{"event": "purchase.completed", "label": "Purchase", "wallet": "points",
                          "amount": 50}]},
    "leveling": {"wallet": "points", "basis": "lifetime", "thresholds": [0, 100]},
    "perks": {"perks": [
        {"key": "welcome_member", "name": "Welcome member",
         "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
        {"key": "active_user", "name": "Active user",
         "description": "Daily habit perk for apps like progress trackers or banking.",
         "trigger": {"type": "points_threshold", "wallet": "points", "amount": 1000}},
    ]},
}

EMIT_ARGS = [
    "emit", "customer_123", "purchase.completed",
    "--context", '{"amount": 12900, "currency": "CZK"}',
    "--txid", "order_1092",
    "--occurred-at", "2026-06-01T10:00:00.000Z",
]

# The seed's customer response (the excerpt's `events: []` aside: the emitted event is listed).
SEED_CUSTOMER: dict[str, Any] = {
    "tenant": "commerce-test",
    "user_id": "customer_123",
    "traits": {},
    "wallets": {"points": 50},
    "level": {"wallet": "points", "level": 1, "current": 50, "nextLevelAt": 100,
              "currentLevelAt": 0, "progress": 0.5},
    "perks": [{"key": "welcome_member", "unlocked_at": "2026-06-01T10:00:00.000Z",
               "metadata": {"trigger": {"type": "points_threshold", "wallet": "points",
                                        "amount": 30}}}],
    "next_perks": [{"key": "active_user", "name": "Active user",
                    "description": "Daily habit perk for apps like progress trackers or banking."}],
    "achievements": {"completed": [], "in_progress": [], "unlocked": []},
    "flags": {"levels": {"level_1": True}, "has_level_at_least": {"level_1": True},
              "perks": {"welcome_member": True}},
    "events": [{"event": "purchase.completed", "transaction_id": "order_1092",
                "occurred_at": "2026-06-01T10:00:00.000Z",
                "delta": [{"wallet": "points", "amount": 50}]}],
    "streaks": [],
    "active_boosts": [],
}


def invoke(db_url: str, *args: str) -> Result:
    """Run ``perkbridge ARGS`` in-process against ``db_url`` (settings re-read per invocation)."""
    common.STATE.config_file = None
    common.STATE._settings = None
    env = {"PERKBRIDGE_DATABASE_URL": db_url, "PERKAMO_SPACE": SEED_SPACE}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def seeded(db_url: str, tmp_path: Path) -> str:
    program = tmp_path / "program.json"
    program.write_text(json.dumps(SEED_PROGRAM_FILE))
    assert invoke(db_url, "space", "create", SEED_SPACE).exit_code == 0
    loaded = invoke(db_url, "program", "load", str(program))
    assert loaded.exit_code == 0, loaded.output
    return db_url


def test_emit_prints_exactly_the_seed_response(seeded: str) -> None:
    result = invoke(seeded, *EMIT_ARGS)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == SEED_RESULT
    assert '"amount": 50' in result.stdout and '"progress": 0.5' in result.stdout
    assert list(printed) == list(SEED_RESULT)


def test_emitting_again_is_a_duplicate_and_changes_nothing(seeded: str) -> None:
    invoke(seeded, *EMIT_ARGS)
    before = json.loads(invoke(seeded, "customer", "customer_123").stdout)

    again = invoke(seeded, *EMIT_ARGS)

    assert again.exit_code == 0
    assert json.loads(again.stdout) == {**SEED_RESULT, "applied": False, "duplicate": True}
    assert json.loads(invoke(seeded, "customer", "customer_123").stdout) == before


def test_customer_prints_the_seed_profile(seeded: str) -> None:
    invoke(seeded, *EMIT_ARGS)
    result = invoke(seeded, "customer", "customer_123", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert list(printed) == list(SEED_CUSTOMER)
    assert printed == SEED_CUSTOMER


def test_console_script_runs_the_seed_example(seeded: str) -> None:
    env = {**os.environ, "PERKBRIDGE_DATABASE_URL": seeded, "PERKAMO_SPACE": SEED_SPACE}
    script = Path(sys.executable).with_name("perkbridge")
    done = subprocess.run([str(script), *EMIT_ARGS], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == SEED_RESULT
