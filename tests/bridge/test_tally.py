"""``tally``: what a page's records became, from the target's outcomes (table-driven, pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.pipeline.records import PageRecord
from bridge.pipeline.tally import tally
from bridge.targets import Delivery
from mapping.types import IdentifyCall, PerkamoEvent

A, D = Delivery("applied"), Delivery("duplicate")
R = Delivery("rejected", "invalid_request", "bad context")


def _record(rid: str, *, identify: bool = False, events: int = 0, skipped: bool = False,
            problem: tuple[str, str] | None = None) -> PageRecord:
    record = PageRecord("transaction", rid, {"id": rid}, skipped=skipped, problem=problem)
    if identify:
        record.identify = IdentifyCall(user_id=f"u{rid}", traits={}, perkville_user_id=rid)
    record.events = [
        PerkamoEvent(user_id=f"u{rid}", event="e", transaction_id=f"{rid}-{n}",
                     occurred_at=datetime(2025, 1, 1, tzinfo=UTC))
        for n in range(events)
    ]
    return record


CASES = [
    # (records, identify outcomes, event outcomes, applied, duplicate, skipped, dead-lettered reasons)
    ([_record("1", events=1)], [], [A], 1, 0, 0, []),
    ([_record("1", events=2)], [], [D, D], 0, 1, 0, []),
    ([_record("1", events=2)], [], [D, A], 1, 0, 0, []),
    ([_record("1", events=2)], [], [A, R], 0, 0, 0, ["rejected_invalid_request"]),
    ([_record("1", identify=True)], [A], [], 1, 0, 0, []),
    ([_record("1", identify=True)], [D], [], 0, 1, 0, []),
    ([_record("1", identify=True, events=1)], [R], [A], 0, 0, 0, ["rejected_invalid_request"]),
    ([_record("1")], [], [], 0, 1, 0, []),  # nothing to send: an unchanged member
    ([_record("1", skipped=True)], [], [], 0, 0, 1, []),
    ([_record("1", problem=("bad_points", "points missing"))], [], [], 0, 0, 0, ["bad_points"]),
    (
        [_record("1", events=1), _record("2", problem=("bad_user", "x")), _record("3", identify=True, events=1),
         _record("4", skipped=True), _record("5", events=1)],
        [D], [A, D, R], 1, 1, 1, ["bad_user", "rejected_invalid_request"],
    ),
]


@pytest.mark.parametrize(("records", "ids", "evs", "applied", "duplicate", "skipped", "reasons"), CASES)
def test_tally(records: list[PageRecord], ids: list[Delivery], evs: list[Delivery], applied: int,
               duplicate: int, skipped: int, reasons: list[str]) -> None:
    before = [(r.problem, r.skipped) for r in records]
    page = tally(records, ids, evs)
    c = page.counts
    assert (c.applied, c.duplicate, c.skipped, c.dead_lettered) == (applied, duplicate, skipped, len(reasons))
    assert c.read == len(records) and c.balanced
    assert [d.reason for d in page.dead_letters] == reasons
    assert {r.record_id for r in page.delivered} | {d.record.record_id for d in page.dead_letters} == {
        r.record_id for r in records
    }
    assert [(r.problem, r.skipped) for r in records] == before  # pure: records untouched


def test_a_rejection_names_the_targets_reason_and_detail() -> None:
    (letter,) = tally([_record("9", events=1)], [], [R]).dead_letters
    assert (letter.record.record_id, letter.reason, letter.detail) == ("9", "rejected_invalid_request", "bad context")
    (bare,) = tally([_record("9", events=1)], [], [Delivery("rejected")]).dead_letters
    assert (bare.reason, bare.detail) == ("rejected_error", "the target rejected the record")


def test_applied_to_names_the_customers_of_applied_events_of_delivered_records_only() -> None:
    records = [_record("1", events=2), _record("2", events=1), _record("3", events=1)]
    page = tally(records, [], [D, A, R, A])
    assert page.applied_to == frozenset({"u1", "u3"})  # u2's record was dead-lettered
