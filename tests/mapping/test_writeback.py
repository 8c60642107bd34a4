"""Table-driven tests of the write-back inverse from ``fixtures/writeback.json``."""

from __future__ import annotations

from typing import Any

import pytest

from mapping import PerkamoEvent, to_events, to_perkville_transaction
from tests.mapping.cases import load, params


@pytest.mark.parametrize("case", params("writeback"))
def test_writeback(case: dict[str, Any]) -> None:
    decision = to_perkville_transaction(
        case["event"],
        event_perks=load("writeback")["event_perks"],
        perkville_user_id=case.get("perkville_user_id"),
        email=case.get("email"),
        external_member_id=case.get("external_member_id"),
        location_id=case.get("location_id"),
        timezone=case.get("timezone", "UTC"),
        limit_to_once_per_calendar_day=case.get("limit_daily", False),
    )
    expect = case["expect"]
    if "reason" in expect:
        assert decision.payload is None
        assert decision.reason is not None and expect["reason"] in decision.reason
        assert decision.code == expect["code"]
        return
    assert decision.reason is None and decision.code is None and decision.payload is not None
    wire = decision.payload.to_wire()
    for key, value in expect["payload"].items():
        assert wire[key] == value, key
    for key in expect.get("absent", []):
        assert key not in wire


def test_written_back_row_maps_home_to_the_same_id() -> None:
    """Write-back and read-back close the loop: the Perkville row maps to the Perkamo id again."""
    event = PerkamoEvent(user_id="perkville:3106882", event="visit.checked_in", transaction_id="lesson:1:user:9",
                         context={})
    decision = to_perkville_transaction(event, event_perks={"visit.checked_in": 7788})
    assert decision.payload is not None
    row = {
        "transaction_id": 1, "user": "/v2/users/3106882/", "classification": "EARN", "points": 1,
        "transaction_dt": "2026-06-01 10:00:00", "transaction_status": "ACTIVE",
        "trans_source_id": decision.payload.trans_source_id,
    }
    (mapped,) = to_events(row, business_id=25).events
    assert mapped.transaction_id == event.transaction_id
    again = to_perkville_transaction(mapped, event_perks={"perkville.points_earned": 1})
    assert again.payload is None


def test_the_external_member_field_is_named_by_the_caller() -> None:
    event = {"user_id": "ACC-9", "event": "visit.checked_in", "transaction_id": "t-1"}
    decision = to_perkville_transaction(
        event, event_perks={"visit.checked_in": 1}, external_member_id="ACC-9"
    )
    assert decision.payload is not None
    wire = decision.payload.to_wire(external_member_field="member__account_id")
    assert wire["member__account_id"] == "ACC-9" and "external_member_id" not in wire
