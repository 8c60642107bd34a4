"""End-to-end bridge runs against the Perkville sandbox over real HTTP, into the embedded core, on both DBs."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from sqlalchemy import update

from bridge.errors import LeaseHeldError, LeaseLostError
from bridge.pipeline import Pipeline, PipelineConfig, RunOptions
from bridge.progress import NullProgress
from bridge.reconcile import Reconciler
from bridge.state import RunCounts, lease_name
from bridge.state.schema import leases
from connectors.perkville.sandbox import Faults
from tests.bridge.conftest import MEMBERS, SPACE, TRANSACTIONS, Bridge, checksum, event_count


def _balances_match_truth(bridge: Bridge) -> None:
    truth = bridge.box.true_balances()
    got = bridge.service.wallet_balances(SPACE, "points")
    for user_id, balance in truth.items():
        assert got.get(f"perkville:{user_id}", Decimal(0)) == Decimal(balance), user_id


def _assert_balanced(counts: RunCounts) -> None:
    assert counts.read == counts.applied + counts.duplicate + counts.skipped + counts.dead_lettered


def test_history_backfill_reconciles_and_a_second_backfill_applies_nothing(bridge: Bridge) -> None:
    first = bridge.backfill("history")
    assert first.status == "succeeded"
    _assert_balanced(first.counts)
    assert first.kinds["transaction"]["read"] == TRANSACTIONS
    assert first.kinds["connection"]["read"] == MEMBERS
    assert first.counts.dead_lettered == 0
    assert first.counts.skipped > 0  # VOID_REF rows
    report = bridge.reconcile()
    assert report.ok and report.checked == MEMBERS and report.matched == MEMBERS
    _balances_match_truth(bridge)
    before = checksum(bridge.engine)

    second = bridge.backfill("history")
    assert second.counts.applied == 0
    assert second.counts.read == first.counts.read
    assert second.counts.duplicate + second.counts.skipped == second.counts.read
    assert checksum(bridge.engine) == before
    run = bridge.state.runs.get(second.run_id)
    assert run is not None and run.counts == second.counts and run.status == "succeeded"
    assert bridge.state.cursors.get(bridge.business, "backfill") is None
    assert bridge.state.cursors.get(bridge.business, "transactions") is not None


def test_balance_mode_reconciles_with_one_opening_event_per_member(bridge: Bridge) -> None:
    summary = bridge.backfill("balance")
    assert summary.status == "succeeded"
    _assert_balanced(summary.counts)
    assert summary.kinds["transaction"]["read"] == 0  # the cut-over is now: nothing to replay
    assert event_count(bridge.engine) == MEMBERS
    assert bridge.reconcile().ok
    _balances_match_truth(bridge)
    # Activity after the cut-over is replayed by sync, on top of the opening balances.
    member = next(iter(bridge.box.ledger.connections.values()))
    perk = next(p for p in bridge.box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    bridge.box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=2)
    sync = bridge.sync()
    assert sync.kinds["transaction"]["applied"] == 1
    assert bridge.reconcile().ok


def test_every_fault_on_completes_and_reconciles_exactly(bridge: Bridge) -> None:
    bridge.box.set_faults(Faults.all_on(rate=0.08, slow_seconds=0.01))
    summary = bridge.backfill("history")
    assert summary.status == "succeeded"
    assert summary.kinds["transaction"]["read"] == TRANSACTIONS
    assert bridge.box.stats()["faults"], "the faults never fired"
    report = bridge.reconcile()
    bridge.box.set_faults(Faults())
    assert report.ok, report.to_json()
    _balances_match_truth(bridge)


def test_malformed_rows_are_dead_lettered_counted_and_retried_after_a_fix(bridge: Bridge) -> None:
    ledger = bridge.box.ledger
    victims = [t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points][:3]
    originals = {t.id: t.classification for t in victims}
    for txn in victims:
        txn.classification = "BOGUS"
    summary = bridge.backfill("history")
    _assert_balanced(summary.counts)
    assert summary.counts.dead_lettered == 3
    letters = bridge.state.dead_letters.list(bridge.business)
    assert sorted(int(d.record_id) for d in letters) == sorted(originals)
    assert {d.reason for d in letters} == {"bad_classification"}
    assert all(d.run_id == summary.run_id and d.raw["classification"] == "BOGUS" for d in letters)
    assert not bridge.reconcile().ok

    for txn in victims:  # fixed at the source
        txn.classification = originals[txn.id]
    ledger.version += 1
    retry = bridge.pipeline().retry_dead_letters(reason="bad_classification")
    assert retry.counts.applied == 3 and retry.counts.dead_lettered == 0
    assert bridge.state.dead_letters.list(bridge.business) == []
    assert bridge.reconcile().ok
    again = bridge.pipeline().retry_dead_letters()
    assert again.counts.read == 0


def test_incremental_sync_picks_up_new_activity_and_reverses_a_late_void(bridge: Bridge) -> None:
    bridge.backfill("history")
    box = bridge.box
    quiet_before = box.stats()["requests"]
    quiet = bridge.sync()
    assert quiet.counts.applied == 0
    # One request per resource: businesses, locations, perks, users, external members,
    # connections, transactions and the late-void look-back; one signpost per synced resource;
    # one connections/?user_id= for the user the overlap reads again.
    assert box.stats()["requests"] - quiet_before <= 12

    member = next(iter(box.ledger.connections.values()))
    perk = next(p for p in box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=3)
    old = min(t.id for t in box.ledger.txns.values() if t.status == "ACTIVE" and t.points)
    box.void_transaction(old)
    assert not bridge.reconcile().ok

    summary = bridge.sync()
    _assert_balanced(summary.counts)
    assert summary.kinds["transaction"]["applied"] >= 2  # the new earn and the voided row
    report = bridge.reconcile()
    assert report.ok, report.to_json()
    _balances_match_truth(bridge)
    # The cursor is the newest last_mod_dt read, on the sandbox's clock.
    newest = max(t.last_mod for t in box.ledger.txns.values())
    assert bridge.state.cursors.get(bridge.business, "transactions") == newest.isoformat()


def test_two_concurrent_syncs_never_double_apply(bridge: Bridge) -> None:
    results: list[object] = []

    def one() -> None:
        try:
            results.append(bridge.pipeline().run(RunOptions(kind="sync", wait=True, wait_timeout=60)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, Exception) for r in results), results
    rows = list(bridge.box.ledger.txns.values())
    not_refs = sum(1 for t in rows if t.status != "VOID_REF")
    voids = sum(1 for t in rows if t.status == "VOID")
    applied = sum(r.kinds.get("transaction", {}).get("applied", 0) for r in results)  # type: ignore[attr-defined]
    assert applied == not_refs  # every row applied by exactly one of the two runs
    assert event_count(bridge.engine) == not_refs + voids
    assert bridge.reconcile().ok
    tx_events = event_count(bridge.engine)
    again = bridge.sync()
    assert again.counts.applied == 0
    assert event_count(bridge.engine) == tx_events


def test_a_second_runner_is_refused_with_a_clear_message(bridge: Bridge) -> None:
    name = lease_name(bridge.business, "import")
    from datetime import timedelta

    bridge.state.leases.acquire(name, "other-host:1:abc", timedelta(seconds=60))
    with pytest.raises(LeaseHeldError, match="already running"):
        bridge.sync()
    assert event_count(bridge.engine) == 0


class _StealLease(NullProgress):
    """Hands the lease to another owner after the first transactions page (a takeover)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.stolen = False

    def advance(self, name: str, n: int, **_: object) -> None:
        if name == "transactions" and not self.stolen:
            self.stolen = True
            with self.bridge.engine.begin() as conn:
                conn.execute(update(leases).values(owner="thief"))


def test_a_runner_whose_lease_was_taken_commits_nothing_more(bridge: Bridge) -> None:
    progress = _StealLease(bridge)
    pipeline = Pipeline(
        state=bridge.state,
        source=bridge.client,
        target=bridge.target,
        config=PipelineConfig(business=bridge.business),
        progress=progress,
    )
    with pytest.raises(LeaseLostError, match=r"run \d+ failed: lease .* was taken over"):
        pipeline.run(RunOptions(kind="backfill"))
    run = bridge.state.runs.recent(bridge.business)[0]
    assert run.status == "failed"
    # Exactly the first page of transactions (50 rows) made it in.
    assert run.details["kinds"]["transaction"]["read"] == 50
    assert run.counts.balanced


def test_windowed_backfill_leaves_the_cursors_alone(bridge: Bridge) -> None:
    from datetime import UTC, datetime

    summary = bridge.backfill(
        "history", since=datetime(2025, 6, 1, tzinfo=UTC), until=datetime(2025, 9, 1, tzinfo=UTC)
    )
    assert 0 < summary.kinds["transaction"]["read"] < TRANSACTIONS
    assert bridge.state.cursors.all(bridge.business) == []


def test_the_migration_rules_are_merged_into_a_space_with_its_own_program(bridge: Bridge) -> None:
    bridge.service.ensure_space(SPACE)
    bridge.service.load_program(
        SPACE,
        {
            "wallets": {"wallets": [{"key": "xp", "name": "XP", "precision": 0}]},
            "events": {"rules": [{"event": "purchase.completed", "key": "buy", "wallet": "xp", "amount": 5}]},
        },
    )
    summary = bridge.backfill("history")
    assert any("merged with the Space's own rules" in note for note in summary.notes)
    blueprint = __import__("json").dumps(bridge.service.program(SPACE))
    assert "purchase.completed" in blueprint and "perkville.points_earned" in blueprint
    assert bridge.reconcile().ok


def test_a_row_the_core_refuses_is_dead_lettered_and_stays_so_on_a_second_backfill(bridge: Bridge) -> None:
    ledger = bridge.box.ledger
    victim = next(t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points)
    victim.title = "Purchase\x00 (per $10)"  # NUL: neither database can store it
    summary = bridge.pipeline().run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    assert summary.counts.dead_lettered == 1
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.record_id == str(victim.id)
    assert letter.reason == "rejected_invalid_text"
    assert "context.perk_title" in letter.detail
    assert letter.raw["title"] == victim.title
    after_first = checksum(bridge.engine)

    again = bridge.pipeline().run(RunOptions(kind="backfill"))
    assert again.counts.applied == 0 and again.counts.dead_lettered == 1
    (letter_again,) = [d for d in bridge.state.dead_letters.list(bridge.business) if d.record_id == str(victim.id)]
    assert letter_again.reason == "rejected_invalid_text"
    assert checksum(bridge.engine) == after_first


def test_a_server_that_ignores_filters_order_and_limit_still_migrates_exactly(bridge: Bridge) -> None:
    bridge.box.set_behaviour(ignore_filters=True, ignore_order=True, cap_limit=20, next_links="none")
    first = bridge.backfill("history")
    assert first.counts.balanced and first.kinds["transaction"]["read"] == TRANSACTIONS
    assert bridge.reconcile().ok
    box = bridge.box
    member = next(iter(box.ledger.connections.values()))
    perk = next(p for p in box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=1)
    box.void_transaction(min(t.id for t in box.ledger.txns.values() if t.status == "ACTIVE" and t.points))
    summary = bridge.sync()
    assert summary.counts.balanced and summary.kinds["transaction"]["applied"] >= 2
    assert bridge.reconcile().ok
    _balances_match_truth(bridge)


@pytest.mark.parametrize("redeem_sign", ["negative", "positive"])
@pytest.mark.parametrize("timezone", ["UTC", "America/Chicago"], ids=["utc", "chicago"])
def test_both_redeem_signs_and_local_timezones_reconcile(
    db_url: str, timezone: str, redeem_sign: str
) -> None:
    from bridge.state import StateStore
    from connectors.perkville.sandbox import Sandbox
    from perkamo_core.db import create_db_engine
    from perkamo_core.service import CoreService
    from tests.bridge.conftest import make_client

    box = Sandbox(seed=23, members=12, transactions=200, redeem_sign=redeem_sign, timezone=timezone)
    box.start()
    engine = create_db_engine(db_url)
    client = make_client(box, timezone=timezone)
    try:
        state = StateStore(engine)
        state.migrate()
        service = CoreService(engine)
        service.migrate()
        bridge = Bridge(box, engine, state, service, client, str(box.business_ids[0]))
        summary = bridge.pipeline(timezone=timezone).run(RunOptions())
        assert summary.counts.dead_lettered == 0 and summary.counts.balanced
        assert bridge.reconcile().ok
        _balances_match_truth(bridge)
    finally:
        client.close()
        engine.dispose()
        box.stop()


def test_external_member_ids_come_from_the_external_member_api_and_never_change(bridge: Bridge) -> None:
    summary = bridge.pipeline(id_strategy="external_member").run(RunOptions())
    assert summary.counts.dead_lettered == 0
    entries = list(bridge.state.id_map.iter_all(bridge.business))
    by_member = [e for e in entries if e.customer_id.startswith("M-")]
    assert by_member, "no customer got its external member id"
    assert all(e.strategy == "external_member" for e in entries)
    report = Reconciler(
        state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business,
        id_strategy="external_member",
    ).compare()
    assert report.ok, report.to_json()
    traits = bridge.service.customer(SPACE, by_member[0].customer_id)["traits"]
    assert "membership_type" in json.dumps(traits) or any("membership" in k for k in traits)
    # A later run under another strategy keeps every assigned id.
    again = bridge.pipeline(id_strategy="perkville_user").run(RunOptions())
    assert again.counts.applied == 0
    assert {e.customer_id for e in bridge.state.id_map.iter_all(bridge.business)} == {e.customer_id for e in entries}
    # New activity of such a member lands on the customer it was given, not on a default id.
    member = by_member[0]
    perk = next(p for p in bridge.box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    bridge.box.add_transaction(perk=perk["perk_id"], user=int(member.perkville_user_id), quantity=1)
    assert bridge.pipeline().run(RunOptions(kind="sync")).kinds["transaction"]["applied"] == 1
    assert Reconciler(
        state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business
    ).compare().ok
