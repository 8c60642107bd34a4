"""``perkbridge probe`` and the staff-reach gate of a backfill, against the real sandbox over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.probe import (
    CONFIRMED,
    CONTRADICTED,
    UNKNOWN,
    assess,
    judge,
    recorded_duplicate_answer,
    referenced_locations,
)
from connectors.perkville import RecordedAnswer
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import event_count, run


def _statuses(body: dict[str, object]) -> dict[str, str]:
    return {row["key"]: row["status"] for row in body["assumptions"]}  # type: ignore[attr-defined,index]


def _location(box: Sandbox) -> int:
    return box.ledger.businesses[box.business_ids[0]].location_ids[0]


def _assert_no_events(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        assert event_count(engine) == 0
    finally:
        engine.dispose()


def _member_email(box: Sandbox) -> str:
    business = box.ledger.businesses[box.business_ids[0]]
    user = box.ledger.connections[business.connection_ids[0]]["user"]
    return str(box.ledger.users[user]["emails"][0]["email"])


def test_probe_prints_every_assumption_and_records_it(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    code, out, err = run(capsys, cli_env, "probe")
    assert code == 0, err
    for mark in (
        "✓ the API describes itself",
        "✓ the staff account sees every location",
        "? a repeated trans_source_id",
    ):
        assert mark in out
    code, body, err = run(capsys, cli_env, "probe", "--json")
    assert code == 0, err
    statuses = _statuses(body)
    assert statuses["schema"] == CONFIRMED and statuses["sync_cursor"] == CONFIRMED
    assert statuses["transactions_post"] == CONFIRMED
    assert statuses["staff_reach"] == CONFIRMED and statuses["duplicate_answer"] == UNKNOWN
    assert body["schema"]["how"] == "fullschema"
    assert body["probe_id"] == 2  # both probes were recorded
    assert sandbox.credentials["client_secret"] not in str(body) + err
    code, status, err = run(capsys, cli_env, "status", "--json")
    assert code == 0, err
    assert status["probe"]["probe_id"] == 2 and status["probe"]["contradicted"] == []
    code, text, err = run(capsys, cli_env, "status")
    assert "probe: #2" in text


def test_without_schema_endpoints_everything_is_unknown_not_an_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    sandbox.set_behaviour(schema_endpoints=False)
    code, body, err = run(capsys, cli_env, "probe", "--json")
    assert code == 0, err
    statuses = _statuses(body)
    assert body["schema"]["how"] == "none"
    assert statuses["schema"] == UNKNOWN
    assert {statuses[k] for k in ("sync_cursor", "transaction_window", "users_cursor")} == {UNKNOWN}
    assert statuses["page_cap"] == CONFIRMED  # still seen on a page's meta.limit


def test_transactions_without_last_mod_dt_and_ignored_filters(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    sandbox.set_behaviour(hidden_transaction_fields=["last_mod_dt"], unknown_filters="ignore")
    code, body, err = run(capsys, cli_env, "probe", "--json")
    assert code == 0, err
    row = next(r for r in body["assumptions"] if r["key"] == "sync_cursor")
    assert row["status"] == CONTRADICTED and "transaction_dt" in row["action"]
    assert "last_mod_dt" not in body["transactions_have"]


def test_limited_staff_is_reported_and_stops_the_backfill_writing_nothing(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox, db_url: str
) -> None:
    sandbox.set_behaviour(staff_locations=[_location(sandbox)])
    code, body, err = run(capsys, cli_env, "probe", "--json")
    assert code == 1
    assert _statuses(body)["staff_reach"] == CONTRADICTED
    assert body["reach"]["unlisted"]  # the locations rows point to but the account cannot see
    assert "staff_reach" in err
    code, _, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 1
    assert "backfill refused before writing anything" in err and "--allow-partial" in err
    _assert_no_events(db_url)
    code, body, err = run(capsys, cli_env, "backfill", "--json", "--allow-partial")
    assert code == 0, err
    assert (
        any("partial import allowed" in note for note in body.get("notes", []))
        or "partial import allowed" in err
    )


def test_backfill_refuses_a_limited_staff_without_a_probe(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox, db_url: str
) -> None:
    sandbox.set_behaviour(staff_locations=[_location(sandbox)])
    code, _, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 1
    assert "backfill refused before writing anything" in err
    _assert_no_events(db_url)


def test_write_test_needs_a_named_perk(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, cli_env, "probe", "--write-test")
    assert code == 2 and "--perk" in err


def test_write_test_records_the_duplicate_answer(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    business = sandbox.ledger.businesses[sandbox.business_ids[0]]
    perk = next(p for p in business.perk_ids if sandbox.ledger.perks[p]["classification"] != "REDEEM")
    code, body, err = run(
        capsys,
        cli_env,
        "probe",
        "--json",
        "--write-test",
        "--perk",
        str(perk),
        "--customer",
        _member_email(sandbox),
    )
    assert code == 0, err
    test = body["write_test"]
    assert test["trans_source_id"].startswith("perkbridge-probe:")
    assert test["first"]["status"] == "2xx" and test["second"]["status"] != "2xx"
    assert test["rows_with_id"] == 1  # awarded once
    assert _statuses(body)["duplicate_answer"] == CONFIRMED


def test_reach_assessment() -> None:
    rows = [{"home_location": "/v2/locations/300/", "location": "/v2/locations/301/"}]
    partial = assess(["/v2/locations/300/"], referenced_locations(rows))
    assert partial.full is False and partial.unlisted == {"301": 1}
    assert assess([300, 301], referenced_locations(rows)).full is True
    assert assess([300, 301], {"300": 4}).full is None  # an unused location is only a hint
    assert assess([300, 301], {}, expected_locations=3).full is False
    assert assess([300, 301, 302], {}, expected_locations=3).full is True


def test_judge_with_no_findings_is_all_unknown() -> None:
    table = judge({})
    assert {row.status for row in table} == {UNKNOWN}


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        (
            {"trans_source_id": "perkbridge-probe:1", "first": {"status": "2xx"},
             "second": {"status": 400, "body": {"error": "taken"}}, "rows_with_id": 1},
            RecordedAnswer(400, {"error": "taken"}, "perkbridge-probe:1"),
        ),
        ({"first": {"status": "2xx"}, "second": {"status": "2xx", "body": None}, "rows_with_id": 1}, None),
        ({"first": {"status": "2xx"}, "second": {"status": 400, "body": {}}, "rows_with_id": 2}, None),
        ({"first": {"status": 400}, "second": {"status": 400, "body": {}}}, None),
        ({"first": {"status": "2xx"}, "second": {"status": "unanswered", "body": None}}, None),
        ({"first": {"status": "2xx"}, "second": {"status": 503, "body": {}}}, None),
        (None, None),
    ],
    ids=[
        "refusal-recorded", "idempotent-2xx", "double-award", "first-failed", "unanswered", "5xx", "no-test"
    ],
)
def test_the_recorded_duplicate_answer_write_back_learns(test: Any, expected: RecordedAnswer | None) -> None:
    report = {} if test is None else {"write_test": test}
    assert recorded_duplicate_answer(report) == expected
