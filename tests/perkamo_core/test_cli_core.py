"""The core CLI commands: space, keys, program load/show, identify, emit, customer; exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from bridge.cli import app, common
from bridge.cli.core_cmds import program_app
from perkamo_core.db import create_db_engine
from perkamo_core.service import CoreService
from tests.perkamo_core.test_seed_example import SEED_SPACE, invoke

TOML_PROGRAM = """
[wallets]
wallets = [{ key = "points", name = "Points", precision = 2 }]

[events]
rules = [{ event = "purchase.completed", wallet = "points", formula = "{{amount}} / 100 * 2.5" }]
"""


def test_space_create_with_options(db_url: str) -> None:
    result = invoke(db_url, "space", "create", "shop-live", "--environment", "live",
                    "--timezone", "Europe/Prague", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"space": "shop-live", "environment": "live",
                                         "timezone": "Europe/Prague"}
    bad = invoke(db_url, "space", "create", "x", "--timezone", "Nowhere/City")
    assert bad.exit_code == common.EXIT_USAGE
    assert "timezone" in bad.stderr


def test_keys_create_prints_the_key_once_and_it_authenticates(db_url: str) -> None:
    created = invoke(db_url, "keys", "create", "--space", "shop", "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert set(body) == {"key", "space", "scopes"}
    assert body["space"] == "shop"
    assert body["scopes"] == ["events:write", "profile:read", "rewards:redeem", "admin:config"]
    assert body["key"].startswith("sk_test_")

    plain = invoke(db_url, "keys", "create", "--space", "shop", "--scope", "profile:read",
                   "--scope", "events:write")
    assert plain.exit_code == 0
    key = plain.stdout.strip()
    assert key.startswith("sk_test_") and "\n" not in key
    assert key not in plain.stderr

    service = CoreService(create_db_engine(db_url))
    assert service.authenticate(body["key"]).space == "shop"
    assert service.authenticate(key).scopes == frozenset({"profile:read", "events:write"})


def test_a_dashboard_key_is_made_on_request_and_keys_revoke_ends_it(db_url: str) -> None:
    created = invoke(db_url, "keys", "create", "--space", "shop", "--scope", "dashboard", "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["scopes"] == ["dashboard"]
    service = CoreService(create_db_engine(db_url))
    info = service.authenticate(json.loads(created.stdout)["key"])
    assert service.active_key(info.key_id) == info
    revoked = invoke(db_url, "keys", "revoke", info.key_id, "--json")
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout) == {"key_id": info.key_id, "revoked": True}
    assert service.active_key(info.key_id) is None
    again = invoke(db_url, "keys", "revoke", "key_nosuch")
    assert again.exit_code != 0 and "does not exist" in again.stderr
    unknown = invoke(db_url, "keys", "create", "--space", "shop", "--scope", "root")
    assert unknown.exit_code == common.EXIT_USAGE and "dashboard" in unknown.stderr


def test_program_load_toml_and_show(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "program.toml"
    path.write_text(TOML_PROGRAM)
    loaded = invoke(db_url, "program", "load", str(path), "--json")
    assert loaded.exit_code == 0, loaded.output
    assert [m["module"] for m in json.loads(loaded.stdout)["modules"]] == ["wallets", "events"]

    shown = json.loads(invoke(db_url, "program", "show").stdout)
    assert shown["blueprint"]["earningRules"][0]["formula"] == "{{amount}} / 100 * 2.5"

    emitted = invoke(db_url, "emit", "u1", "purchase.completed", "--context", '{"amount": 1234}')
    assert json.loads(emitted.stdout)["delta"] == [{"wallet": "points", "amount": 30.85}]


@pytest.mark.parametrize(
    ("content", "suffix", "code", "needle"),
    [
        pytest.param('{"events": {"rules": [{"event": "x"}]}}', ".json", common.EXIT_FAILURE,
                     "events.rules[0]", id="invalid-body"),
        pytest.param('{"badges": {}}', ".json", common.EXIT_FAILURE, "badges", id="unknown-module"),
        pytest.param("{not json", ".json", common.EXIT_USAGE, "not valid JSON", id="bad-json"),
        pytest.param("x = = 1", ".toml", common.EXIT_USAGE, "not valid TOML", id="bad-toml"),
        pytest.param("[1, 2]", ".json", common.EXIT_USAGE, "module names", id="not-an-object"),
    ],
)
def test_program_load_errors(db_url: str, tmp_path: Path, content: str, suffix: str, code: int,
                             needle: str) -> None:
    path = tmp_path / f"program{suffix}"
    path.write_text(content)
    result = invoke(db_url, "program", "load", str(path))
    assert result.exit_code == code
    assert needle in result.stderr


def test_identify_emit_customer_and_their_errors(db_url: str) -> None:
    identified = invoke(db_url, "identify", "u1", "--traits", '{"plan": "premium"}')
    assert identified.exit_code == 0
    assert json.loads(identified.stdout) == {"tenant": SEED_SPACE, "user_id": "u1",
                                             "traits": {"plan": "premium"}}

    reserved = invoke(db_url, "emit", "u1", "page.viewed", "--context", '{"XP": 5}')
    assert reserved.exit_code == common.EXIT_USAGE
    assert "context.XP" in reserved.stderr

    not_json = invoke(db_url, "emit", "u1", "page.viewed", "--context", "[1]")
    assert not_json.exit_code == common.EXIT_USAGE

    bad_time = invoke(db_url, "emit", "u1", "page.viewed", "--occurred-at", "soon")
    assert bad_time.exit_code == common.EXIT_USAGE
    assert "occurred_at" in bad_time.stderr

    ok = invoke(db_url, "emit", "u1", "page.viewed", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["applied"] is True
    profile = json.loads(invoke(db_url, "customer", "u1").stdout)
    assert profile["traits"] == {"plan": "premium"}
    assert profile["level"] is None and profile["wallets"] == {}

    missing = invoke(db_url, "customer", "nobody")
    assert missing.exit_code == common.EXIT_FAILURE
    assert "nobody" in missing.stderr


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_emit_with_an_out_of_range_occurred_at_is_one_line_and_exit_2(db_url: str, moment: str) -> None:
    result = invoke(db_url, "emit", "u1", "page.viewed", "--occurred-at", moment, "--txid", "t-1")
    assert result.exit_code == common.EXIT_USAGE
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: occurred_at ") and "out of range" in line and "1970-01-01" in line
    assert "Traceback" not in result.output and "Overflow" not in result.output
    # Nothing was recorded: the same id applies once corrected.
    fixed = invoke(db_url, "emit", "u1", "page.viewed", "--occurred-at", "2026-06-01T10:00:00Z", "--txid", "t-1")
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["applied"] is True


def test_emit_with_a_reused_transaction_id_is_one_line_and_exit_1(db_url: str) -> None:
    assert invoke(db_url, "emit", "u1", "page.viewed", "--txid", "t-9").exit_code == 0
    other = invoke(db_url, "emit", "u2", "page.viewed", "--txid", "t-9")
    assert other.exit_code == common.EXIT_FAILURE and other.stdout == ""
    (line,) = other.stderr.splitlines()
    assert "already used for a different payload" in line and "u1" not in line


def test_unusable_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    result = invoke("mysql://nobody@localhost/x", "customer", "u1")
    assert result.exit_code == common.EXIT_CONFIG


def test_program_group_is_reachable_for_other_command_modules() -> None:
    group = program_app(app)
    assert isinstance(group, typer.Typer)
    assert {c.name for c in group.registered_commands} >= {"load", "show"}
