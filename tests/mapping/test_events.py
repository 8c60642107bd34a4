"""Table-driven tests of ``to_events`` from ``fixtures/transactions.json``."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mapping import RESERVED_CONTEXT_KEYS, parse_transaction, to_events
from tests.mapping.cases import assert_issues, load, params, plain


def _raw(case: dict[str, Any]) -> Any:
    if "raw" in case:
        return case["raw"]
    raw = copy.deepcopy(load("transactions")["base"])
    raw.update(case.get("set", {}))
    if raw.get("business") == "/v2/businesses/LONG/":
        raw["business"] = "/v2/businesses/" + "9" * 100 + "/"
    for key in case.get("unset", []):
        raw.pop(key, None)
    return raw


@pytest.mark.parametrize("case", params("transactions"))
def test_to_events(case: dict[str, Any]) -> None:
    raw = _raw(case)
    result = to_events(raw, business_id=25, timezone=case.get("timezone", "UTC"),
                       customer_ids=case.get("customer_ids"))
    expect = case["expect"]
    assert_issues(result.issues, expect.get("issues", []))
    assert len(result.skipped) == len(expect.get("skipped", []))
    for skip, want in zip(result.skipped, expect.get("skipped", [])):
        assert want["reason"] in skip.reason
        assert skip.raw == raw
    wanted = expect.get("events", [])
    assert len(result.events) == len(wanted), result.events
    for event, want in zip(result.events, wanted):
        for field in ("event", "transaction_id", "user_id"):
            if field in want:
                assert getattr(event, field) == want[field]
        if "occurred_at" in want:
            assert event.to_wire()["occurred_at"] == want["occurred_at"]
        for key, value in want.get("context", {}).items():
            assert plain(event.context[key]) == value, key
        assert event.context["source"] == "perkville"
        assert not {k.lower() for k in event.context} & RESERVED_CONTEXT_KEYS
        assert event.occurred_at is not None and event.occurred_at.utcoffset() is not None
    if result.issues and any(i.severity == "error" for i in result.issues):
        assert not result.events and not result.ok
        assert all(i.raw is not None for i in result.issues)


@pytest.mark.parametrize("case", params("transactions"))
def test_parsed_record_maps_like_raw(case: dict[str, Any]) -> None:
    """Passing the parsed record gives the same result (events and issues) as the raw row."""
    raw = _raw(case)
    parsed = parse_transaction(raw, timezone=case.get("timezone", "UTC"))
    if parsed.record is None:
        return
    from_raw = to_events(raw, business_id=25, timezone=case.get("timezone", "UTC"), customer_ids=case.get("customer_ids"))
    from_record = to_events(parsed.record, business_id=25, customer_ids=case.get("customer_ids"))
    assert from_record == from_raw


def test_void_seen_late_gives_same_original_event() -> None:
    """The original event is identical whether the row is first seen ACTIVE or already VOID."""
    base = load("transactions")["base"]
    active = to_events(base, business_id=25).events
    voided = to_events(dict(base, transaction_status="VOID"), business_id=25).events
    assert voided[0] == active[0]
    assert voided[1].transaction_id != active[0].transaction_id
