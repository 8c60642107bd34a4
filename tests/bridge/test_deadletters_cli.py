"""Dead letters through the real CLI: a discard is final, ids must exist, words match exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.pipeline import RunOptions
from perkamo_core.models import EventInput
from tests.bridge.conftest import SPACE, Bridge, run
from tests.bridge.test_writeback import (
    VISIT,
    _member,
    _prepared,
    _rows_with_source,
    _writeback,
)

LEAKS = ("[SQL", "[parameters", "Traceback", "sqlalche.me")


def _one_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert not any(leak in err for leak in LEAKS), err


def _break(bridge: Bridge, n: int) -> list[int]:
    """``n`` ACTIVE rows turn unmappable at the source; their ids."""
    victims = [t for t in bridge.box.ledger.txns.values() if t.status == "ACTIVE" and t.points][:n]
    for txn in victims:
        txn.classification = "MYSTERY"
    bridge.box.ledger.version += 1
    return [t.id for t in victims]


def _letters(bridge: Bridge, status: str | None = None) -> dict[str, tuple[int, str, int]]:
    return {
        d.record_id: (d.id, d.status, d.attempts)
        for d in bridge.state.dead_letters.list(bridge.business, status=status)
    }


def test_a_discarded_dead_letter_stays_discarded_through_backfill_sync_and_retry(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = (str(i) for i in _break(bridge, 2))
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0 and body["dead_lettered"] == 2, err
    letters = _letters(bridge)
    code, body, err = run(capsys, cli_env, "deadletters", "discard", "--id", str(letters[first][0]), "--json")
    assert code == 0 and body == {"discarded": 1}, err

    # A later backfill, a sync and a retry meet the same broken row again.
    bridge.pipeline().run(RunOptions(kind="backfill", force=True))
    code, _, err = run(capsys, cli_env, "sync")
    assert code == 0, err
    code, body, err = run(capsys, cli_env, "deadletters", "retry", "--json")
    assert code == 1 and body["read"] == 1, err  # only the open one was retried

    everything = _letters(bridge, status=None)
    assert everything[first] == (letters[first][0], "discarded", 1)  # untouched since the discard
    assert everything[second][1] == "open" and everything[second][2] > 1
    code, body, err = run(capsys, cli_env, "deadletters", "retry", "--id", str(letters[first][0]))
    assert code == 2 and "is discarded, not open; nothing retried" in err
    _one_line(err)


def test_discarding_an_id_that_does_not_exist_is_an_error_and_changes_nothing(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _break(bridge, 1)
    assert run(capsys, cli_env, "backfill", "--json")[0] == 0
    (existing,) = [d.id for d in bridge.state.dead_letters.list(bridge.business)]
    code, out, err = run(capsys, cli_env, "deadletters", "discard", "--id", str(existing), "--id", "999")
    assert code == 2 and out == ""
    assert f"no dead letter #999 of business {bridge.business}; nothing discarded" in err
    _one_line(err)
    assert [d.status for d in bridge.state.dead_letters.list(bridge.business)] == ["open"]


def test_list_with_an_unknown_status_is_a_usage_error(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, cli_env, "deadletters", "list", "--status", "bogus")
    assert code == 2 and out == ""
    assert "bogus" in err and all(s in err for s in ("open", "resolved", "discarded", "all"))
    assert "Traceback" not in err


def test_retry_says_what_still_fails_and_exits_1_then_0_once_fixed(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victims = _break(bridge, 2)
    assert run(capsys, cli_env, "backfill")[0] == 0
    code, out, err = run(capsys, cli_env, "deadletters", "retry")
    assert code == 1, err
    assert "2 dead letters retried: 0 resolved, 2 still failing" in out
    assert "succeeded" not in out  # words and exit code agree
    for txn_id in victims:  # fixed at the source
        bridge.box.ledger.txns[txn_id].classification = "EARN"
    bridge.box.ledger.version += 1
    code, out, err = run(capsys, cli_env, "deadletters", "retry")
    assert code == 0, err
    assert "2 dead letters retried: 2 resolved, 0 still failing" in out


def test_retrying_write_back_dead_letters_without_write_back_settings_is_refused(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(SPACE, EventInput(user_id=f"perkville:{user}", event="late.perk", transaction_id="late:1"))
    assert _writeback(bridge, {VISIT: perk["perk_id"], "late.perk": 999_999}).run().dead_lettered == 1
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.kind == "writeback_event"

    code, out, err = run(capsys, cli_env, "deadletters", "retry")
    assert code == 3 and out == ""
    assert "write-back dead letters need the write-back settings" in err and "nothing was retried" in err
    assert "[writeback] enabled" in err and "[writeback] event_perks" in err
    _one_line(err)
    assert [d.status for d in bridge.state.dead_letters.list(bridge.business, status=None)] == ["open"]
    assert _rows_with_source(bridge, "perkamo:late:1") == []

    # With the settings (the operator fixed the perk id), the retry sends it.
    cli_env.write_text(
        cli_env.read_text()
        + f'[writeback]\nenabled = true\nevent_perks = {{ "{VISIT}" = {perk["perk_id"]}, "late.perk" = {perk["perk_id"]} }}\n'
    )
    code, out, err = run(capsys, cli_env, "deadletters", "retry")
    assert code == 0, err
    assert "1 written back, 0 still failing" in out
    assert len(_rows_with_source(bridge, "perkamo:late:1")) == 1


def test_list_raw_shows_the_raw_record_redacted_as_the_dashboard_does(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configured = bridge.box.credentials["password"]  # a settings secret, under an innocent key
    raw = {
        "transaction_id": 4242,
        "classification": "MYSTERY",
        "user": {"email": "m@example.com", "api_key": "k-0123456789"},
        "password": "hunter2-plain",
        "links": ["https://perk.test/cb?access_token=tok-abcdef&page=2"],
        "note": f"paid at the desk with {configured}",
    }
    with bridge.engine.begin() as conn:
        bridge.state.dead_letters.put(
            conn, business=bridge.business, kind="transaction", record_id="4242", raw=raw,
            reason="unknown_classification", detail="refused: Authorization: Bearer eyJ.sekrit.sig", run_id=None,
        )
    secrets = ("k-0123456789", "hunter2-plain", "tok-abcdef", configured, "eyJ.sekrit.sig")

    code, body, err = run(capsys, cli_env, "deadletters", "list", "--raw", "--json")
    assert code == 0, err
    (letter,) = body
    assert letter["raw"] == {
        "transaction_id": 4242,
        "classification": "MYSTERY",
        "user": {"email": "m@example.com", "api_key": "***"},
        "password": "***",
        "links": ["https://perk.test/cb?access_token=***&page=2"],
        "note": "paid at the desk with ***",
    }
    assert letter["detail"] == "refused: Authorization: Bearer ***"

    code, out, err = run(capsys, cli_env, "deadletters", "list", "--raw")
    assert code == 0, err
    assert "m@example.com" in out and "MYSTERY" in out and "***" in out
    assert not any(secret in out for secret in secrets), out
    # The stored record is the evidence: kept as it came, only the output is redacted.
    (stored,) = bridge.state.dead_letters.list(bridge.business)
    assert stored.raw == raw
