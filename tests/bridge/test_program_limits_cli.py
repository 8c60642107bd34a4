"""`perkbridge program from-perkville` carries the perks' redemption limits over, whatever the type of
``redemption_limit_interval``, and reports the earn perks whose limit it cannot know (issue 15 §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import run

CHECK_IN = "perkville_perk_7700"  # the sandbox's "Gym Check-In": 1 per 1 DAY
UNLIMITED = ("7701", "7702")  # "Purchase", "Birthday Bonus": redemption_limit_count null


def _rules(modules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["key"]: rule for rule in modules["events"]["rules"] if rule["key"].startswith("perkville_perk_")}


def _warnings(err: str, perk: str) -> list[str]:
    return [line for line in err.splitlines() if f"perk {perk}:" in line]


@pytest.mark.parametrize("integer_codes", [pytest.param(False, id="named-interval"),
                                           pytest.param(True, id="integer-interval")])
def test_limits_are_translated_and_unknown_ones_reported(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox, integer_codes: bool
) -> None:
    if integer_codes:
        sandbox.ledger.use_integer_intervals()
    code, modules, err = run(capsys, cli_env, "program", "from-perkville")
    assert code == 0, err
    rules = _rules(modules)
    assert rules[CHECK_IN]["limits"] == {"per_day": 1}
    inferred = _warnings(err, "7700")
    if integer_codes:
        assert len(inferred) == 1 and "integer code 1" in inferred[0] and inferred[0].startswith("warning:")
    else:
        assert inferred == []
    for perk in UNLIMITED:
        assert "limits" not in rules[f"perkville_perk_{perk}"]  # no daily limit invented...
        (line,) = _warnings(err, perk)  # ...and the unknown is said once
        assert "limit unknown" in line and "limit_to_once_per_calendar_day" in line


def test_interval_codes_can_be_replaced_and_a_bad_table_is_refused(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    sandbox.ledger.use_integer_intervals()
    code, modules, err = run(capsys, cli_env, "program", "from-perkville", "--interval-code", "1=WEEK")
    assert code == 0, err
    assert _rules(modules)[CHECK_IN]["limits"] == {"per_week": 1}

    code, modules, err = run(capsys, cli_env, "program", "from-perkville", "--interval-code", "2=WEEK")
    assert code == 0, err
    assert "limits" not in _rules(modules)[CHECK_IN]  # code 1 is no longer known: a warning, no limit
    (line,) = _warnings(err, "7700")
    assert "unknown redemption_limit_interval 1" in line

    code, _, err = run(capsys, cli_env, "program", "from-perkville", "--interval-code", "1=FORTNIGHT")
    assert code == 2 and "'FORTNIGHT' is not an interval" in err
    code, _, err = run(capsys, cli_env, "program", "from-perkville", "--interval-code", "DAY")
    assert code == 2 and "expected CODE=INTERVAL" in err
