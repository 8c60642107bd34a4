"""The dead-letter use case the CLI and the dashboard share: plan, retry, discard and their refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import deadletters
from bridge.deadletters import DeadLetterChoiceError
from bridge.errors import ConfigurationError
from bridge.wiring import RunParts
from config.settings import Settings, load_settings
from perkamo_core.models import EventInput
from tests.bridge.conftest import SPACE, Bridge, sandbox_settings
from tests.bridge.test_deadletters_cli import _break, _letters
from tests.bridge.test_writeback import VISIT, _member, _prepared, _writeback


def _settings(bridge: Bridge, db_url: str, **extra: str) -> Settings:
    return load_settings(
        environ={**sandbox_settings(bridge.box, db_url), "PERKAMO_SPACE": SPACE, **extra}
    )


@pytest.fixture
def parts(bridge: Bridge, db_url: str) -> Iterator[RunParts]:
    wired = RunParts(_settings(bridge, db_url), bridge.engine, bridge.business)
    try:
        yield wired
    finally:
        wired.close()


def test_a_retry_resolves_what_was_fixed_at_the_source_and_counts_what_still_fails(
    bridge: Bridge, parts: RunParts
) -> None:
    fixed, broken = _break(bridge, 2)
    assert bridge.backfill().counts.dead_lettered == 2
    letters = _letters(bridge)
    plan = deadletters.plan_retry(parts.state, parts.settings, bridge.business)
    assert [d.record_id for d in plan.letters] == [str(fixed), str(broken)] and plan.writebacks == []

    bridge.box.ledger.txns[fixed].classification = "EARN"
    bridge.box.ledger.version += 1
    result = deadletters.retry(parts)

    assert (result.resolved, result.failing, result.writeback) == (1, 1, None)
    assert result.to_json()["run_id"] == result.run.run_id and result.to_json()["read"] == 2
    after = _letters(bridge, status=None)
    assert after[str(fixed)] == (letters[str(fixed)][0], "resolved", 1)
    assert after[str(broken)] == (letters[str(broken)][0], "open", 2)
    assert parts.state.runs.get(result.run.run_id).kind == "retry"  # type: ignore[union-attr]


def test_a_retry_of_chosen_ids_touches_only_those(bridge: Bridge, parts: RunParts) -> None:
    first, second = _break(bridge, 2)
    bridge.backfill()
    letters = _letters(bridge)
    for txn_id in (first, second):
        bridge.box.ledger.txns[txn_id].classification = "EARN"
    bridge.box.ledger.version += 1

    result = deadletters.retry(parts, ids=[letters[str(first)][0]])

    assert (result.run.counts.read, result.resolved, result.failing) == (1, 1, 0)
    assert _letters(bridge, status=None)[str(second)] == letters[str(second)]  # untouched


def test_unknown_and_closed_ids_are_refused_and_nothing_changes(bridge: Bridge, parts: RunParts) -> None:
    first, second = _break(bridge, 2)
    bridge.backfill()
    letters = _letters(bridge)
    one, two = letters[str(first)][0], letters[str(second)][0]
    assert deadletters.discard(parts.state, bridge.business, ids=[one]) == 1

    with pytest.raises(DeadLetterChoiceError) as unknown:
        deadletters.retry(parts, ids=[two, 999])
    assert unknown.value.missing == (999,) and unknown.value.closed == ()
    assert f"no dead letter #999 of business {bridge.business}; nothing retried" in unknown.value.message
    with pytest.raises(DeadLetterChoiceError) as closed:
        deadletters.discard(parts.state, bridge.business, ids=[two, one])
    assert closed.value.closed == (one,)
    assert f"dead letter #{one} is discarded, not open; nothing discarded" in closed.value.message
    with pytest.raises(DeadLetterChoiceError, match="say what to discard"):
        deadletters.discard(parts.state, bridge.business)

    assert _letters(bridge, status=None) == {
        str(first): (one, "discarded", 1), str(second): (two, "open", 1)
    }
    assert [r.kind for r in parts.state.runs.recent(bridge.business)] == ["backfill"]  # no retry run


def test_discard_by_reason_or_everything_only_closes_open_letters(bridge: Bridge, parts: RunParts) -> None:
    _break(bridge, 3)
    bridge.backfill()
    assert deadletters.discard(parts.state, bridge.business, reason="no_such_reason") == 0
    assert deadletters.discard(parts.state, bridge.business, everything=True) == 3
    assert deadletters.discard(parts.state, bridge.business, everything=True) == 0
    assert {s for _, s, _ in _letters(bridge, status=None).values()} == {"discarded"}


def test_write_back_letters_without_their_settings_are_refused_before_anything_runs(
    bridge: Bridge, parts: RunParts
) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(SPACE, EventInput(user_id=f"perkville:{user}", event="late.perk", transaction_id="late:1"))
    assert _writeback(bridge, {VISIT: perk["perk_id"], "late.perk": 999_999}).run().dead_lettered == 1
    runs_before = parts.state.runs.recent(bridge.business, limit=100)

    with pytest.raises(ConfigurationError, match=r"\[writeback\] enabled .*nothing was retried"):
        deadletters.plan_retry(parts.state, parts.settings, bridge.business)
    with pytest.raises(ConfigurationError):
        deadletters.retry(parts)

    assert parts.state.runs.recent(bridge.business, limit=100) == runs_before
    assert [d.status for d in parts.state.dead_letters.list(bridge.business, status=None)] == ["open"]
