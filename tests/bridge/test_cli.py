"""The run commands through the real CLI entry point: JSON shapes, exit codes, repair, dry run, status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.bridge.conftest import MEMBERS, SPACE, run

CONTRACT_RUN_KEYS = {"run_id", "status", "read", "applied", "duplicate", "skipped", "dead_lettered"}


def test_backfill_json_reconcile_repair_and_status(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str, sandbox: Sandbox
) -> None:
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0, err
    assert CONTRACT_RUN_KEYS <= set(body)
    assert body["status"] == "succeeded"
    assert body["read"] == body["applied"] + body["duplicate"] + body["skipped"] + body["dead_lettered"]
    assert "migration program" in err  # the run says it ensured the perkville.* rules
    assert 0 < body["request_rate"] <= 1000  # what the adaptive budget learned, under the ceiling

    code, body, _ = run(capsys, cli_env, "reconcile", "--json")
    assert code == 0
    assert body["checked"] == MEMBERS and body["matched"] == MEMBERS and body["mismatches"] == []

    # Someone moves points in Perkamo behind the bridge's back.
    engine = create_db_engine(db_url)
    try:
        user = next(iter(sandbox.true_balances()))
        CoreService(engine).ingest(
            SPACE,
            EventInput(
                user_id=f"perkville:{user}",
                event="perkville.balance_adjusted",
                transaction_id="manual-1",
                context={"amount": 7},
            ),
        )
    finally:
        engine.dispose()
    csv_file = cli_env.parent / "reconcile.csv"
    code, body, _ = run(capsys, cli_env, "reconcile", "--json", "--csv", str(csv_file))
    assert code == 1
    assert body["matched"] == MEMBERS - 1
    (mismatch,) = body["mismatches"]
    assert set(mismatch) == {"customer_id", "perkville_user_id", "perkville_balance", "perkamo_balance", "difference"}
    assert mismatch["customer_id"] == f"perkville:{user}" and mismatch["difference"] == -7
    rows = csv_file.read_text().splitlines()
    assert rows[0].startswith("customer_id,perkville_user_id") and len(rows) == MEMBERS + 1

    code, body, _ = run(capsys, cli_env, "reconcile", "--repair", "--json")
    assert code == 0 and body["repaired"] == 1 and body["remaining"] == []
    code, body, _ = run(capsys, cli_env, "reconcile", "--json")
    assert code == 0 and body["mismatches"] == []

    engine = create_db_engine(db_url)
    try:
        from perkamo_core.storage import events

        with engine.connect() as conn:
            ids = set(conn.execute(select(events.c.transaction_id)).scalars())
    finally:
        engine.dispose()
    assert f"perkville:{sandbox.business_ids[0]}:adjust:{user}:1" in ids

    code, body, _ = run(capsys, cli_env, "status", "--json")
    assert code == 0
    assert {"runs", "cursors", "leases", "dead_letters"} <= set(body)
    assert body["runs"][0]["status"] == "succeeded"
    assert {c["resource"] for c in body["cursors"]} >= {"users", "connections", "transactions"}
    assert body["request_rate"] == body["runs"][0]["details"]["request_rate"]  # the next run starts there

    code, body, _ = run(capsys, cli_env, "sync", "--json")
    assert code == 0 and CONTRACT_RUN_KEYS <= set(body) and body["applied"] == 0


def test_dry_run_writes_nothing_and_predicts_balances(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str, sandbox: Sandbox
) -> None:
    code, body, err = run(capsys, cli_env, "backfill", "--dry-run", "--json")
    assert code == 0, err
    assert body["dry_run"] is True
    assert body["kinds"]["transaction"]["read"] > 0
    assert body["predicted_mismatches"] == []
    truth = {f"perkville:{u}": b for u, b in sandbox.true_balances().items()}
    assert body["predicted"]["balances"] == {k: v for k, v in truth.items() if k in body["predicted"]["balances"]}
    assert body["predicted"]["total_points"] == sum(truth.values())
    engine = create_db_engine(db_url)
    try:
        from sqlalchemy import inspect

        assert inspect(engine).get_table_names() == []  # not even the schema was created
    finally:
        engine.dispose()


def test_dead_letters_list_and_discard(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    victim = next(t for t in sandbox.ledger.txns.values() if t.status == "ACTIVE")
    victim.points = -5 if victim.classification == "EARN" else victim.points  # still mappable
    victim.classification = "MYSTERY"
    code, body, _ = run(capsys, cli_env, "backfill", "--json")
    assert code == 0 and body["dead_lettered"] == 1
    code, body, _ = run(capsys, cli_env, "deadletters", "list", "--json", "--raw")
    assert code == 0
    (letter,) = body
    assert letter["record_id"] == str(victim.id) and letter["reason"] == "bad_classification"
    assert letter["raw"]["classification"] == "MYSTERY" and letter["attempts"] == 1
    code, body, _ = run(capsys, cli_env, "deadletters", "retry", "--json")
    assert code == 1 and body["dead_lettered"] == 1  # still broken at the source
    code, body, _ = run(capsys, cli_env, "deadletters", "list", "--json")
    assert body[0]["attempts"] == 2
    code, body, _ = run(capsys, cli_env, "deadletters", "discard", "--reason", "bad_classification", "--json")
    assert code == 0 and body == {"discarded": 1}
    code, body, _ = run(capsys, cli_env, "deadletters", "list", "--json")
    assert body == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["backfill", "--mode", "sideways"], 2, "--mode"),
        (["backfill", "--since", "yesterday-ish"], 2, "--since"),
        (["deadletters", "discard"], 2, "say what to discard"),
    ],
    ids=["bad-mode", "bad-since", "discard-needs-a-filter"],
)
def test_usage_errors_are_one_line_with_exit_2(
    cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    got, _, err = run(capsys, cli_env, *args)
    assert got == code
    assert message in err and err.count("\n") == 1


def test_missing_business_is_a_configuration_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERKVILLE_BUSINESS_ID")
    code, _, err = run(capsys, cli_env, "backfill")
    assert code == 3 and "PERKVILLE_BUSINESS_ID" in err


def test_a_wrong_password_fails_in_one_line_without_leaking_it(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.setenv("PERKVILLE_PASSWORD", "Wrong-Pa55word-xyz")
    code, _, err = run(capsys, cli_env, "backfill")
    assert code == 3  # fix the settings, not "retry later"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "PERKVILLE_PASSWORD" in last
    assert "Perkville refused the credentials" in last
    assert "Wrong-Pa55word-xyz" not in err
    code, body, _ = run(capsys, cli_env, "status", "--json")
    failed = body["runs"][0]
    assert failed["status"] == "failed" and "Wrong-Pa55word-xyz" not in json.dumps(body)


def test_program_from_perkville_and_idmap_export(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str, sandbox: Sandbox
) -> None:
    code, modules, err = run(capsys, cli_env, "program", "from-perkville", "--load")
    assert code == 0, err
    events = {rule["event"] for rule in modules["events"]["rules"]}
    assert "perkville.points_earned" in events  # built on the migration program
    assert any(name.startswith("perk.") for name in events)  # plus the translated EARN perks
    assert "loaded" in err
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0, err
    assert "already active" in err  # the loaded program kept the perkville.* rules
    csv_file = cli_env.parent / "idmap.csv"
    code, _, err = run(capsys, cli_env, "idmap", "--csv", str(csv_file))
    assert code == 0 and f"wrote {MEMBERS} rows" in err
    header, *rows = csv_file.read_text().splitlines()
    assert header.split(",")[:4] == ["business", "perkville_user_id", "customer_id", "strategy"]
    assert len(rows) == MEMBERS and all(",perkville:" in row for row in rows)
    code, body, _ = run(capsys, cli_env, "idmap", "--json")
    assert code == 0 and len(body) == MEMBERS and body[0]["customer_id"].startswith("perkville:")


def test_status_never_prints_the_database_urls_password_or_query(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password="pw-in-url-123")
    monkeypatch.setenv(
        "PERKBRIDGE_DATABASE_URL",
        url.render_as_string(hide_password=False) + "?application_name=query-secret-456",
    )
    code, out, err = run(capsys, cli_env, "status")  # the test server trusts loopback
    assert code == 0, err
    assert f"database: {url.get_backend_name()}" in out
    for secret in ("pw-in-url-123", "query-secret-456"):
        assert secret not in out and secret not in err
