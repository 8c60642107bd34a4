"""Sync against a Perkville whose clock or zone is not the bridge's: nothing is lost, nothing doubled.

The sandbox runs its own clock hours behind or ahead of this machine's, or shows its naive times in
a zone other than ``PERKVILLE_TIMEZONE``.  Backfill, then new activity, edits and voids at the
source, then sync: every member reconciles exactly, in history and balance mode, on both databases.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from bridge.pipeline import Pipeline, PipelineConfig, RunOptions, RunSummary
from bridge.progress import NullProgress
from bridge.source_clock import to_stamp
from bridge.state.schema import cursors
from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import SPACE, Bridge, open_bridge, run

HOURS = 3600

CLOCKS = [
    pytest.param(-5 * HOURS, "UTC", "UTC", id="source-5h-behind"),
    pytest.param(5 * HOURS, "UTC", "UTC", id="source-5h-ahead"),
    # Los Angeles' naive times read as UTC: the source looks 8 hours behind.
    pytest.param(0, "America/Los_Angeles", "UTC", id="zone-la-read-as-utc"),
    # Tokyo's naive times read as Chicago's: the source looks 15 hours ahead.
    pytest.param(0, "Asia/Tokyo", "America/Chicago", id="zone-tokyo-read-as-chicago"),
]


def _earn_perks(box: Sandbox) -> list[int]:
    return sorted(p["perk_id"] for p in box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])


def _connections(box: Sandbox) -> list[int]:
    return sorted(box.ledger.businesses[box.business_ids[0]].connection_ids)


def _activity(box: Sandbox, count: int, start: int = 0) -> list[int]:
    """``count`` earns spread over the members; returns their transaction ids."""
    perks, members = _earn_perks(box), _connections(box)
    return [
        box.add_transaction(
            perk=perks[(start + n) % len(perks)], connection=members[(start + n) % len(members)],
            quantity=1 + n % 3,
        )["transaction_id"]
        for n in range(count)
    ]


def _redeem_once(box: Sandbox) -> None:
    """One redemption by the member with the most points (as a member spending them would)."""
    ledger = box.ledger
    richest = max(_connections(box), key=lambda c: (ledger.aggregates[c].balance, c))
    cheapest = min(
        (p for p in ledger.perks.values() if p["classification"] == "REDEEM"), key=lambda p: p["points"]
    )
    assert ledger.aggregates[richest].balance >= cheapest["points"]
    box.add_transaction(perk=cheapest["perk_id"], connection=richest)


def _as_bridge_reads(moment: datetime, source_zone: str, bridge_zone: str) -> str:
    """A sandbox time as the bridge keeps it: the naive text the sandbox shows, read in the
    bridge's zone (ISO-8601 UTC, the cursors' form)."""
    text = moment.astimezone(ZoneInfo(source_zone)).strftime("%Y-%m-%d %H:%M:%S")
    stamp = to_stamp(text, bridge_zone)
    assert stamp is not None
    return stamp.isoformat()


def _newest_at_source(box: Sandbox) -> dict[str, datetime]:
    ledger = box.ledger
    business = ledger.businesses[box.business_ids[0]]
    connections = [ledger.connections[c] for c in business.connection_ids]
    users = {c["user"] for c in connections}
    return {
        "users": max(ledger.users[u]["last_mod_dt"] for u in users),
        "connections": max(c["last_mod_dt"] for c in connections),
        "transactions": max(t.last_mod for t in business.txns),
    }


def _assert_exact(bridge: Bridge) -> None:
    report = bridge.reconcile()
    assert report.ok, report.to_json()
    truth = bridge.box.true_balances()
    assert report.checked == report.matched == len(truth)
    got = bridge.service.wallet_balances(SPACE, "points")
    assert {u: got.get(f"perkville:{u}", Decimal(0)) for u in truth} == {
        u: Decimal(b) for u, b in truth.items()
    }


@pytest.mark.parametrize("mode", ["history", "balance"])
@pytest.mark.parametrize(("offset", "source_zone", "bridge_zone"), CLOCKS)
def test_sync_after_a_backfill_reconciles_exactly_whatever_the_sources_clock(
    db_url: str, mode: str, offset: int, source_zone: str, bridge_zone: str
) -> None:
    box = Sandbox(seed=31, members=12, transactions=200, timezone=source_zone, clock_offset=offset)
    box.start()
    try:
        with open_bridge(box, db_url, timezone=bridge_zone) as bridge:
            def run_once(kind: str) -> RunSummary:
                summary = bridge.pipeline(timezone=bridge_zone).run(RunOptions(kind=kind, mode=mode))  # type: ignore[arg-type]
                assert summary.status == "succeeded" and summary.counts.balanced
                assert summary.counts.dead_lettered == 0
                return summary

            # Activity just before the backfill, stamped around the source's "now": a balance
            # cut-over on this machine's clock would replay it on top of the opening balances
            # (source ahead) or drop what comes next (source behind).
            early = _activity(box, 6)
            run_once("backfill")
            _assert_exact(bridge)

            new = _activity(box, 40, start=3)
            _redeem_once(box)
            box.void_transaction(new[0])  # a new row, voided
            box.void_transaction(early[1])  # a row from before the backfill (the cut-over)
            old = min(t.id for t in box.ledger.txns.values() if t.status == "ACTIVE" and t.points)
            box.void_transaction(old)  # a row from the generated history
            members = _connections(box)
            box.ledger.set_connection_status(members[2], "INACTIVE")
            edited_user = box.ledger.connections[members[5]]["user"]
            box.update_user(edited_user, first_name="Renamed")

            sync = run_once("sync")
            assert sync.kinds["transaction"]["applied"] >= 43  # 41 new rows and 2 voided ones
            _assert_exact(bridge)
            inactive = bridge.service.customer(SPACE, f"perkville:{box.ledger.connections[members[2]]['user']}")
            assert inactive["traits"]["perkville_connection_status"] == "INACTIVE"
            renamed = bridge.service.customer(SPACE, f"perkville:{edited_user}")
            assert renamed["traits"]["first_name"] == "Renamed"

            # Every cursor is the newest change read, in the source's clock as the bridge reads it.
            expected = {
                r: _as_bridge_reads(moment, source_zone, bridge_zone)
                for r, moment in _newest_at_source(box).items()
            }
            stored = {c.resource: c.value for c in bridge.state.cursors.all(bridge.business)}
            assert {r: stored[r] for r in expected} == expected
            record = bridge.state.runs.get(sync.run_id)
            assert record is not None
            assert record.details["cursors"] == expected == record.details["signposts"]

            quiet = run_once("sync")
            assert quiet.counts.applied == 0
            _assert_exact(bridge)
    finally:
        box.stop()


class _StopAfterFirstPage(NullProgress):
    """Asks the run to stop once the first page of transactions is delivered (its cursor moved)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def advance(self, name: str, n: int, **_: object) -> None:
        if name == "transactions":
            self.pipeline.stop.set()


def test_status_shows_lag_in_the_sources_clock_while_rows_are_unread(
    bridge: Bridge, cli_env: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811 - the fixture
) -> None:
    box = bridge.box
    box.set_clock(-6 * HOURS)  # on this machine's clock the new rows would look six hours old
    bridge.backfill("history")
    code, body, err = run(capsys, cli_env, "status", "--json")
    assert code == 0, err
    lag = {c["resource"]: c["lag_seconds"] for c in body["cursors"]}
    assert lag == {"users": 0.0, "connections": 0.0, "transactions": 0.0}

    for n in range(120):  # more than two pages of 50, a second apart on the source's clock
        box.set_clock(-6 * HOURS + n)
        _activity(box, 1, start=n)
    pipeline = Pipeline(
        state=bridge.state, source=bridge.client, target=bridge.target,
        config=PipelineConfig(business=bridge.business),
    )
    pipeline.progress = _StopAfterFirstPage(pipeline)
    stopped = pipeline.run(RunOptions(kind="sync"))
    assert stopped.status == "stopped" and stopped.kinds["transaction"]["read"] == 50

    code, body, err = run(capsys, cli_env, "status", "--json")
    assert code == 0, err
    cursors: dict[str, Any] = {c["resource"]: c for c in body["cursors"]}
    newest = max(t.last_mod for t in box.ledger.txns.values())
    tx = cursors["transactions"]
    assert tx["source_newest"] == newest.isoformat()
    assert tx["value"] < tx["source_newest"]
    behind = (newest - datetime.fromisoformat(tx["value"])).total_seconds()
    assert tx["lag_seconds"] == behind > 0

    pipeline.stop.clear()
    pipeline.progress = NullProgress()
    pipeline.run(RunOptions(kind="sync"))
    code, body, err = run(capsys, cli_env, "status", "--json")
    assert {c["resource"]: c["lag_seconds"] for c in body["cursors"]}["transactions"] == 0.0
    assert bridge.reconcile().ok


def test_cursors_an_older_version_kept_on_this_machines_clock_are_read_past_once(bridge: Bridge) -> None:
    box = bridge.box
    box.set_clock(-5 * HOURS)
    bridge.backfill("history")
    # What an earlier version left: every sync cursor at its own wall-clock start, hours past
    # anything the source (five hours behind) stamps next.
    wall = datetime.now(UTC).replace(microsecond=0).isoformat()
    with bridge.engine.begin() as conn:
        conn.execute(update(cursors).values(value=wall, source_newest=None))
    _activity(box, 10)

    summary = bridge.sync()
    assert any("reads everything once" in note for note in summary.notes), summary.notes
    _assert_exact(bridge)
    stored = {c.resource: c for c in bridge.state.cursors.all(bridge.business)}
    newest = _newest_at_source(box)
    for resource in ("users", "connections", "transactions"):
        assert stored[resource].value == newest[resource].isoformat() == stored[resource].source_newest

    again = bridge.sync()
    assert not any("reads everything once" in note for note in again.notes)
    assert again.counts.applied == 0


def test_a_backfill_checkpoint_from_an_older_version_resumes_and_leaves_sync_to_read_everything(
    bridge: Bridge,
) -> None:
    box = bridge.box
    box.set_clock(5 * HOURS)
    pipeline = Pipeline(
        state=bridge.state, source=bridge.client, target=bridge.target,
        config=PipelineConfig(business=bridge.business),
    )
    pipeline.progress = _StopAfterFirstPage(pipeline)
    assert pipeline.run(RunOptions(kind="backfill")).status == "stopped"
    # An earlier version's checkpoint: a pinned upper bound on this machine's clock, no signposts.
    raw = bridge.state.cursors.get(bridge.business, "backfill")
    assert raw is not None
    saved = json.loads(raw)
    saved.pop("signposts")
    saved["until"] = datetime.now(UTC).replace(microsecond=0).isoformat()
    with bridge.engine.begin() as conn:
        bridge.state.cursors.set(conn, bridge.business, "backfill", json.dumps(saved), None)
    _activity(box, 10)  # dated past that bound by the source's clock, five hours ahead

    resumed = bridge.backfill("history")
    assert any("reads everything once" in note for note in resumed.notes), resumed.notes
    assert {c.resource for c in bridge.state.cursors.all(bridge.business)} == set()
    _assert_exact(bridge)
    _activity(box, 5, start=10)
    bridge.sync()
    _assert_exact(bridge)


def test_the_balance_cut_over_splits_its_last_second_by_row_id(db_url: str) -> None:
    """Everything happens in one second of the source's clock: the rows (and a void) from before
    the backfill are in the opening balances, the ones recorded after it in that same second are
    replayed, and a later void of an earlier row is reversed, once."""
    frozen = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
    box = Sandbox(seed=31, members=12, transactions=200, now=lambda: frozen)
    box.start()
    try:
        with open_bridge(box, db_url) as bridge:
            before = _activity(box, 4)
            box.void_transaction(before[0])  # voided before the backfill: the balance is net of it
            summary = bridge.backfill("balance")
            assert summary.kinds.get("transaction", {}).get("applied", 0) == 0
            _assert_exact(bridge)
            cutover = bridge.state.cursors.get(bridge.business, "cutover")
            last = max(box.transaction_ids())
            assert cutover == f"2026-12-05T12:00:01+00:00|{last}"

            after = _activity(box, 4, start=4)  # the same second, higher ids
            box.void_transaction(before[1])  # a row carried by the opening balance, voided now
            box.void_transaction(after[0])
            sync = bridge.sync()
            # Replayed: the four new rows (one of them now VOID) and the reversal of before[1].
            assert sync.kinds["transaction"]["applied"] == 5
            _assert_exact(bridge)
            assert bridge.sync().counts.applied == 0
    finally:
        box.stop()
