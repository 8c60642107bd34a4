"""Table-driven tests of perks → program modules, checked against the engine's program validator."""

from __future__ import annotations

from typing import Any

import pytest

from config.programs import load_migration_program
from mapping import to_program_modules
from mapping.errors import MappingConfigError
from perkamo_core.program import Program
from tests.mapping.cases import assert_issues, params


@pytest.mark.parametrize("with_base", [pytest.param(False, id="alone"), pytest.param(True, id="on-migration")])
@pytest.mark.parametrize("case", params("program"))
def test_program(case: dict[str, Any], with_base: bool) -> None:
    base = load_migration_program() if with_base else None
    result = to_program_modules(case["perks"], timezone=case.get("timezone", "UTC"),
                                event_perks=case.get("event_perks"), base=base,
                                interval_codes=case.get("interval_codes"))
    expect = case["expect"]
    assert_issues(result.issues, expect.get("issues", []))
    assert len(result.skipped) == expect.get("skipped", 0)
    base_rules = base["events"]["rules"] if base else []
    rules = result.modules.get("events", {}).get("rules", [])
    assert rules[: len(base_rules)] == base_rules
    new_rules = rules[len(base_rules):]
    if "rules" in expect:
        assert new_rules == expect["rules"]
    if "rule_count" in expect:
        assert len(new_rules) == expect["rule_count"]
    if "rule_key_prefix" in expect:
        assert new_rules[0]["key"].startswith(expect["rule_key_prefix"])
    if "rewards" in expect:
        assert result.modules["perks"]["rewards"] == expect["rewards"]
    if with_base:
        assert result.modules["wallets"] == load_migration_program()["wallets"]
    Program.from_modules(result.modules)  # the engine accepts every translation


def test_translation_does_not_modify_base() -> None:
    base = load_migration_program()
    to_program_modules([{"perk_id": 1, "classification": "EARN", "points": 3}], base=base)
    assert base == load_migration_program()


def test_an_unknown_interval_code_names_the_perk_and_the_value() -> None:
    perks = [{"perk_id": 41, "classification": "EARN", "points": 2, "redemption_limit_count": 1,
              "redemption_limit_interval": 17},
             {"perk_id": 42, "classification": "REDEEM", "points": 20, "redemption_limit_count": 1,
              "redemption_limit_interval": "QUARTER"}]
    result = to_program_modules(perks)
    assert [(i.record_id, i.field, i.severity) for i in result.issues] == [
        ("41", "redemption_limit_interval", "warning"), ("42", "redemption_limit_interval", "warning")]
    assert "17" in result.issues[0].reason and "'QUARTER'" in result.issues[1].reason
    assert "limits" not in result.modules["events"]["rules"][0]  # never a guessed limit
    assert "limits" not in result.modules["perks"]["rewards"][0]


@pytest.mark.parametrize("codes, message", [
    ({"one": "DAY"}, "'one' is not an integer"),
    ({1: "FORTNIGHT"}, "'FORTNIGHT' is not an interval"),
])
def test_a_bad_interval_code_table_is_a_config_error(codes: dict[Any, str], message: str) -> None:
    with pytest.raises(MappingConfigError, match=message):
        to_program_modules([], interval_codes=codes)
