"""CoreService program modules: versions, activation, all-or-nothing loads, the blueprint."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from perkamo_core.errors import ProgramValidationError, ValidationError
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SEED_PROGRAM, SPACE, make_service, purchase

DOUBLE_RULE = {"rules": [{"event": "purchase.completed", "wallet": "points", "amount": 100}]}


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    return make_service(db_engine)


def test_new_version_becomes_active_and_old_ones_are_kept(service: CoreService) -> None:
    stored = service.load_program_module(SPACE, "events", DOUBLE_RULE, version="2026-06-02")
    assert (stored["module"], stored["version"], stored["active"]) == ("events", "2026-06-02", True)

    versions = [(v["version"], v["active"]) for v in service.program_versions(SPACE)
                if v["module"] == "events"]
    assert versions == [("v1", False), ("2026-06-02", True)]
    assert service.active_modules(SPACE) == {**SEED_PROGRAM, "events": DOUBLE_RULE}
    assert service.ingest(SPACE, purchase("a", "t1"))["delta"] == [{"wallet": "points", "amount": 100}]


def test_inactive_upload_is_stored_but_not_used(service: CoreService) -> None:
    service.load_program_module(SPACE, "events", DOUBLE_RULE, active=False)
    assert service.ingest(SPACE, purchase("a", "t1"))["delta"] == [{"wallet": "points", "amount": 50}]
    assert [v["active"] for v in service.program_versions(SPACE) if v["module"] == "events"] == [
        True, False]


@pytest.mark.parametrize(
    ("module", "body", "path"),
    [
        pytest.param("events", {"rules": [{"event": "x", "amount": 1, "formula": "2"}]},
                     "events.rules[0]", id="amount-and-formula"),
        pytest.param("events", {"rules": [{"event": "x", "formula": "{{a}} +"}]},
                     "events.rules[0].formula", id="bad-formula"),
        pytest.param("events", {"rules": [{"event": "x", "wallet": "gems", "amount": 1}]},
                     "events.rules[0].wallet", id="unknown-wallet"),
        pytest.param("leveling", {"thresholds": [10, 5]}, "leveling", id="bad-thresholds"),
        pytest.param("perks", {"perks": [{"key": "p", "name": "P",
                                          "trigger": {"type": "achievement", "achievement": "nope"}}]},
                     "perks.perks[0].trigger.achievement", id="unknown-achievement"),
        pytest.param("badges", {}, "badges", id="unknown-module"),
    ],
)
def test_invalid_body_names_the_path_and_leaves_the_program_unchanged(
    service: CoreService, module: str, body: dict[str, Any], path: str
) -> None:
    before = service.program(SPACE)
    with pytest.raises(ProgramValidationError) as raised:
        service.load_program_module(SPACE, module, body)
    assert raised.value.path.startswith(path)
    assert raised.value.status == 400
    assert service.program(SPACE) == before
    assert service.ingest(SPACE, purchase("a", "t1"))["delta"] == [{"wallet": "points", "amount": 50}]


def test_load_program_is_all_or_nothing(service: CoreService) -> None:
    before = service.program_versions(SPACE)
    with pytest.raises(ProgramValidationError):
        service.load_program(SPACE, {
            "events": DOUBLE_RULE,
            "leveling": {"wallet": "points", "thresholds": [0, 0]},
        })
    assert service.program_versions(SPACE) == before


def test_duplicate_version_label_is_rejected(service: CoreService) -> None:
    service.load_program_module(SPACE, "events", DOUBLE_RULE, version="x")
    with pytest.raises(ValidationError) as raised:
        service.load_program_module(SPACE, "events", DOUBLE_RULE, version="x")
    assert raised.value.field == "version"


def test_blueprint_lists_rules_rewards_and_active_versions(service: CoreService) -> None:
    blueprint = service.program(SPACE)
    assert blueprint["tenant"] == SPACE
    assert [r["event"] for r in blueprint["blueprint"]["earningRules"]] == ["purchase.completed"]
    assert blueprint["blueprint"]["earningRules"][0]["amount"] == 50
    assert [r["key"] for r in blueprint["blueprint"]["rewards"]] == ["free_shipping"]
    assert set(blueprint["modules"]) == set(SEED_PROGRAM)
    assert blueprint["metrics"] == {"customers": 0, "events": 0}


def test_program_change_applies_to_the_next_event_only(service: CoreService) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    service.load_program_module(SPACE, "events", DOUBLE_RULE)
    service.ingest(SPACE, EventInput(user_id="a", event="purchase.completed", transaction_id="t2"))
    # The duplicate keeps the first outcome even though the program changed.
    assert service.ingest(SPACE, purchase("a", "t1"))["delta"] == [{"wallet": "points", "amount": 50}]
    assert service.customer(SPACE, "a")["wallets"] == {"points": 150}
