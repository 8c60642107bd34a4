"""Table-driven tests of opening-balance and repair-adjustment events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mapping import MappingConfigError, to_adjustment_event, to_opening_balance_event
from tests.mapping.cases import assert_issues, params, plain

CUTOVER = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _check_event(result: Any, expect: dict[str, Any]) -> None:
    (event,) = result.events
    for field in ("event", "transaction_id", "user_id"):
        if field in expect:
            assert getattr(event, field) == expect[field]
    for key, value in expect.get("context", {}).items():
        assert plain(event.context[key]) == value
    assert event.context["source"] == "perkville"
    assert event.occurred_at == CUTOVER


@pytest.mark.parametrize("case", params("balances", "opening"))
def test_opening_balance(case: dict[str, Any]) -> None:
    result = to_opening_balance_event(case["connection"], business_id=25, cutover_at=CUTOVER,
                                      customer_ids=case.get("customer_ids"))
    expect = case["expect"]
    if "issues" in expect:
        assert_issues(result.issues, expect["issues"])
        assert not result.events
        return
    assert not result.issues
    _check_event(result, expect)


@pytest.mark.parametrize("case", params("balances", "adjust"))
def test_adjustment(case: dict[str, Any]) -> None:
    result = to_adjustment_event(business_id=25, perkville_user_id=case["user"], n=case["n"], amount=case["amount"],
                                 occurred_at=CUTOVER, reason=case.get("reason"))
    expect = case["expect"]
    if "skipped" in expect:
        assert len(result.skipped) == expect["skipped"] and not result.events
        return
    _check_event(result, expect)


def test_naive_cutover_is_config_error() -> None:
    with pytest.raises(MappingConfigError):
        to_opening_balance_event({"user": 1, "point_balance": 1}, business_id=25, cutover_at=datetime(2026, 1, 1))
