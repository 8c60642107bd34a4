"""Table-driven tests of perks → program modules, checked against the engine's program validator."""

from __future__ import annotations

from typing import Any

import pytest

from config.programs import load_migration_program
from mapping import to_program_modules
from perkamo_core.program import Program
from tests.mapping.cases import assert_issues, params


@pytest.mark.parametrize("with_base", [pytest.param(False, id="alone"), pytest.param(True, id="on-migration")])
@pytest.mark.parametrize("case", params("program"))
def test_program(case: dict[str, Any], with_base: bool) -> None:
    base = load_migration_program() if with_base else None
    result = to_program_modules(case["perks"], timezone=case.get("timezone", "UTC"),
                                event_perks=case.get("event_perks"), base=base)
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
