"""Write-back against the Perkville sandbox over real HTTP, on both databases.

The round trip is the point: a Perkamo event goes to Perkville with ``trans_source_id``
``perkamo:{transaction_id}``; the next sync pulls that row, maps it to the same Perkamo id, the
core answers ``duplicate: true`` and no balance moves — loop-free by construction.
"""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest

from bridge.errors import SourceUnavailableError
from bridge.pipeline import RunOptions
from bridge.writeback import Writeback, WritebackConfig, to_external_member
from connectors.perkville import RequestRejected
from connectors.perkville.sandbox import Faults
from perkamo_core.models import EventInput
from tests.bridge.conftest import SPACE, Bridge, make_client

VISIT = "visit.checked_in"


def _earn_perk(bridge: Bridge) -> dict[str, Any]:
    business = int(bridge.business)
    return next(
        p for p in sorted(bridge.box.ledger.perks.values(), key=lambda p: p["perk_id"])
        if p["business"] == business and p["classification"] == "EARN" and p["points"] > 0
    )


def _redeem_perk(bridge: Bridge) -> dict[str, Any]:
    business = int(bridge.business)
    return next(
        p for p in sorted(bridge.box.ledger.perks.values(), key=lambda p: p["perk_id"])
        if p["business"] == business and p["classification"] == "REDEEM" and p["points"] > 0
    )


def _load_program(
    bridge: Bridge, rules: list[dict[str, Any]], perks: dict[str, Any] | None = None
) -> None:
    """The shipped migration program plus Perkamo-side rules that mirror the mapped perks."""
    text = resources.files("config").joinpath("programs/migration.json").read_text("utf-8")
    modules = json.loads(text)
    modules["events"]["rules"].extend(rules)
    if perks is not None:
        modules["perks"] = perks
    bridge.service.load_program(SPACE, modules)


def _prepared(bridge: Bridge) -> dict[str, Any]:
    summary = bridge.backfill("history")
    assert summary.status == "succeeded"
    perk = _earn_perk(bridge)
    _load_program(
        bridge,
        [{"event": VISIT, "key": "visit", "wallet": "points", "formula": str(perk["points"])}],
    )
    return perk


def _writeback(bridge: Bridge, event_perks: dict[str, Any], **changes: Any) -> Writeback:
    config = WritebackConfig(business=bridge.business, space=SPACE, event_perks=event_perks, **changes)
    return Writeback(state=bridge.state, outbox=bridge.service, client=bridge.client, config=config)


def _member(bridge: Bridge) -> int:
    business = int(bridge.business)
    return min(c["user"] for c in bridge.box.ledger.connections.values() if c["business"] == business)


def _rows_with_source(bridge: Bridge, source: str) -> list[Any]:
    return [t for t in bridge.box.ledger.businesses[int(bridge.business)].txns if t.trans_source_id == source]


def _balance(bridge: Bridge, user: int) -> Decimal:
    return bridge.service.wallet_balances(SPACE, "points").get(f"perkville:{user}", Decimal(0))


def test_round_trip_is_loop_free_and_balances_stay_exact(bridge: Bridge) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    customer = f"perkville:{user}"
    before = _balance(bridge, user)
    assert bridge.reconcile().ok

    result = bridge.service.ingest(
        SPACE, EventInput(user_id=customer, event=VISIT, transaction_id="pos:checkin:1")
    )
    assert result["applied"] is True
    assert _balance(bridge, user) == before + perk["points"]
    bridge.service.ingest(SPACE, EventInput(user_id=customer, event="app.opened", transaction_id="app:1"))
    bridge.service.ingest(SPACE, EventInput(user_id="shop:walk-in-7", event=VISIT, transaction_id="pos:checkin:2"))

    first = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert first.status == "succeeded"
    assert first.balanced
    assert (first.written_back, first.duplicate, first.dead_lettered) == (1, 0, 1)
    assert first.skip_reasons["no_perk_for_event"] == 1
    assert first.skip_reasons["born_in_perkville"] > 0  # every imported event is in the outbox
    (row,) = _rows_with_source(bridge, "perkamo:pos:checkin:1")
    assert (row.user_id, row.perk_id, row.classification) == (user, perk["perk_id"], "EARN")
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert (letter.kind, letter.record_id, letter.reason) == (
        "writeback_event", "pos:checkin:2", "no_perkville_member"
    )
    run = bridge.state.runs.get(first.run_id)
    assert run is not None and run.direction == "writeback" and run.status == "succeeded"
    assert run.counts.read == first.read and run.counts.applied == 1

    # The next sync pulls the written-back row: same Perkamo id, a duplicate, nothing moves.
    sync = bridge.sync()
    assert sync.status == "succeeded"
    assert sync.kinds["transaction"]["duplicate"] >= 1
    assert sync.kinds["transaction"]["applied"] == 0
    assert _balance(bridge, user) == before + perk["points"]
    report = bridge.reconcile()
    assert report.ok, report.to_json()

    # No event to write back: the duplicate was not applied, so it never re-entered the outbox
    # (the sync only refreshed the member's traits, an identify).
    again = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert (again.written_back, again.duplicate, again.dead_lettered) == (0, 0, 0)
    assert set(again.skip_reasons) <= {"external_members_disabled"}
    assert len(_rows_with_source(bridge, "perkamo:pos:checkin:1")) == 1


@pytest.mark.parametrize("answer", ["field", "conflict", "code", "django", "server_error"])
def test_a_resend_after_a_lost_commit_is_an_idempotent_duplicate(bridge: Bridge, answer: str) -> None:
    # Whatever shape Perkville's duplicate answer has — even Tastypie's canned 500, which only the
    # read-back by trans_source_id can tell from an outage — the resend counts once.
    bridge.box.set_behaviour(duplicate_answer=answer)
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(
        SPACE, EventInput(user_id=f"perkville:{user}", event=VISIT, transaction_id="pos:resend")
    )
    first = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert first.written_back == 1
    # As if the process died after Perkville confirmed but before the cursor committed.
    with bridge.engine.begin() as conn:
        bridge.state.cursors.delete(conn, bridge.business, f"writeback:{SPACE}")
    second = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert (second.written_back, second.duplicate, second.dead_lettered) == (0, 1, 0)
    assert second.balanced
    assert len(_rows_with_source(bridge, "perkamo:pos:resend")) == 1
    assert bridge.state.dead_letters.list(bridge.business) == []


def test_under_external_member_ids_awards_name_the_customer_by_external_member_id(bridge: Bridge) -> None:
    assert bridge.pipeline(id_strategy="external_member").run(RunOptions()).status == "succeeded"
    perk = _earn_perk(bridge)
    rule = {"event": VISIT, "key": "visit", "wallet": "points", "formula": str(perk["points"])}
    _load_program(bridge, [rule])
    entries = sorted(bridge.state.id_map.iter_all(bridge.business), key=lambda e: e.customer_id)
    member = next(e for e in entries if not e.customer_id.startswith("perkville:") and _has_email(bridge, e))
    fallback = next(e for e in entries if e.customer_id.startswith("perkville:"))
    for customer, tid in ((member.customer_id, "pos:member:1"), (fallback.customer_id, "pos:fallback:1")):
        bridge.service.ingest(SPACE, EventInput(user_id=customer, event=VISIT, transaction_id=tid))

    # A field Perkville (here the sandbox) does not know names nobody: only the member's award fails.
    odd = make_client(bridge.box, external_member_field="member_ref")
    config = WritebackConfig(business=bridge.business, space=SPACE, event_perks={VISIT: perk["perk_id"]},
                             id_strategy="external_member")
    try:
        first = Writeback(state=bridge.state, outbox=bridge.service, client=odd, config=config).run()
    finally:
        odd.close()
    assert (first.written_back, first.dead_lettered) == (1, 1)
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert (letter.record_id, letter.reason) == ("pos:member:1", "perkville_400")
    (row,) = _rows_with_source(bridge, "perkamo:pos:fallback:1")
    assert row.user_id == int(fallback.perkville_user_id)

    # With the field the sandbox knows, the retried award reaches the member the record links to.
    retry = _writeback(bridge, {VISIT: perk["perk_id"]}, id_strategy="external_member").retry_dead_letters()
    assert retry.written_back == 1
    (row,) = _rows_with_source(bridge, "perkamo:pos:member:1")
    assert row.user_id == int(member.perkville_user_id)


def _has_email(bridge: Bridge, entry: Any) -> bool:
    return any(
        r["external_member_id"] == entry.customer_id and r["email"]
        for r in bridge.box.ledger.external_members.values()
    )


def test_a_4xx_dead_letters_the_item_and_the_run_goes_on(bridge: Bridge) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    customer = f"perkville:{user}"
    bridge.service.ingest(SPACE, EventInput(user_id=customer, event="bad.perk", transaction_id="bad:1"))
    bridge.service.ingest(SPACE, EventInput(user_id=customer, event=VISIT, transaction_id="good:1"))
    summary = _writeback(bridge, {VISIT: perk["perk_id"], "bad.perk": 999_999}).run()
    assert summary.status == "succeeded"
    assert (summary.written_back, summary.dead_lettered) == (1, 1)
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.record_id == "bad:1" and letter.reason == "perkville_400"
    assert letter.raw["event"] == "bad.perk"
    assert _rows_with_source(bridge, "perkamo:good:1")


def test_a_retriable_failure_leaves_the_item_unconfirmed_until_perkville_answers(
    bridge: Bridge,
) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(
        SPACE, EventInput(user_id=f"perkville:{user}", event=VISIT, transaction_id="pos:flaky")
    )
    cursor_before = bridge.state.cursors.get(bridge.business, f"writeback:{SPACE}")
    bridge.box.set_faults(Faults(rate_5xx=1.0))
    flaky = make_client(bridge.box, max_retries=1)
    config = WritebackConfig(business=bridge.business, space=SPACE, event_perks={VISIT: perk["perk_id"]})
    try:
        with pytest.raises(SourceUnavailableError, match=r"write-back run \d+ failed: .*run the same command again later"):
            Writeback(state=bridge.state, outbox=bridge.service, client=flaky, config=config).run()
    finally:
        flaky.close()
        bridge.box.set_faults(Faults())
    assert not _rows_with_source(bridge, "perkamo:pos:flaky")
    cursor_after_failure = int(bridge.state.cursors.get(bridge.business, f"writeback:{SPACE}") or 0)
    assert cursor_after_failure >= int(cursor_before or 0)  # imported events before it are done
    (failed,) = [r for r in bridge.state.runs.recent(bridge.business) if r.direction == "writeback"]
    assert failed.status == "failed" and failed.error

    retry = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert retry.written_back == 1
    assert len(_rows_with_source(bridge, "perkamo:pos:flaky")) == 1


def test_identify_traits_become_external_member_upserts_where_enabled(bridge: Bridge) -> None:
    _prepared(bridge)
    user = _member(bridge)
    customer = f"perkville:{user}"
    bridge.service.identify(
        SPACE, customer, {"membership_status": "active", "membership_type": "Gold", "favourite": "yoga"}
    )
    bridge.service.identify(SPACE, "app:only-traits", {"favourite": "run"})
    disabled = _writeback(bridge, {}).run()
    assert disabled.skip_reasons.get("external_members_disabled", 0) >= 2
    with bridge.engine.begin() as conn:
        bridge.state.cursors.delete(conn, bridge.business, f"writeback:{SPACE}")
    enabled = _writeback(bridge, {}, external_members=True).run()
    assert enabled.written_back >= 1
    assert enabled.skip_reasons.get("no_membership_traits", 0) >= 1
    records = [
        r for r in bridge.box.ledger.external_members.values()
        if r["system_id"] == "PERKAMO" and r["member_id"] == customer
    ]
    assert len(records) == 1
    assert (records[0]["membership_status"], records[0]["membership_type"]) == ("ACTIVE", "Gold")


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"favourite": "yoga"}, None),
        (
            {"membership_status": "inactive", "membership_cancel_date": "2026-01-31", "email": "a@b.c"},
            {"business": "25", "system_id": "PERKAMO", "member_id": "c1",
             "membership_status": "INACTIVE", "cancel_dt": "2026-01-31", "email": "a@b.c"},
        ),
        (
            {"home_location_external_id": "LOC-9", "membership_join_date": "2025-05-01"},
            {"business": "25", "system_id": "PERKAMO", "member_id": "c1",
             "external_home_location_id": "LOC-9", "join_dt": "2025-05-01"},
        ),
    ],
    ids=["no-membership-fields", "inactive-with-email", "home-location-and-join"],
)
def test_to_external_member(traits: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert to_external_member("c1", traits, business="25") == expected


def test_dead_letters_retry_once_the_member_exists_in_perkville(bridge: Bridge) -> None:
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(SPACE, EventInput(user_id=f"perkville:{user}", event="late.perk",
                                            transaction_id="late:1"))
    first = _writeback(bridge, {VISIT: perk["perk_id"], "late.perk": 999_999}).run()
    assert first.dead_lettered == 1
    # The operator fixes the table (the perk id was wrong) and retries the dead letters.
    retry = _writeback(bridge, {VISIT: perk["perk_id"], "late.perk": perk["perk_id"]}).retry_dead_letters()
    assert retry.written_back == 1
    assert bridge.state.dead_letters.list(bridge.business) == []
    assert len(_rows_with_source(bridge, "perkamo:late:1")) == 1
    # A second retry finds nothing open; the cursor never moved back.
    assert _writeback(bridge, {VISIT: perk["perk_id"]}).retry_dead_letters().read == 0


def test_write_back_learns_the_duplicate_answer_the_probe_recorded(bridge: Bridge) -> None:
    # A duplicate answer no built-in rule knows, on a server whose trans_source_id filter does not
    # work: only the answer `perkbridge probe --write-test` recorded can tell the resend is done.
    from bridge.probe import WriteTest, probe

    bridge.box.set_behaviour(duplicate_answer="opaque")
    perk = _prepared(bridge)
    user = _member(bridge)
    email = bridge.box.ledger.users[user]["emails"][0]["email"]
    report = probe(bridge.client, bridge.business, write_test=WriteTest(str(perk["perk_id"]), email))
    assert report.findings["write_test"]["second"]["status"] == 400
    bridge.state.probes.record(bridge.business, report.to_json())
    bridge.state.probes.record(bridge.business, {"business": bridge.business})  # a later, read-only probe

    event = EventInput(user_id=f"perkville:{user}", event=VISIT, transaction_id="pos:opaque")
    bridge.service.ingest(SPACE, event)
    assert _writeback(bridge, {VISIT: perk["perk_id"]}).run().written_back == 1
    bridge.box.set_behaviour(ignore_filters=True)
    with bridge.engine.begin() as conn:
        bridge.state.cursors.delete(conn, bridge.business, f"writeback:{SPACE}")
    unlearned = make_client(bridge.box)
    try:
        with pytest.raises(RequestRejected):
            unlearned.award_points(perk=perk["perk_id"], user=user, trans_source_id="perkamo:pos:opaque")
    finally:
        unlearned.close()
    again = _writeback(bridge, {VISIT: perk["perk_id"]}).run()
    assert (again.written_back, again.duplicate, again.dead_lettered) == (0, 1, 0)
    assert len(_rows_with_source(bridge, "perkamo:pos:opaque")) == 1
