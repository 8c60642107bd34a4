"""Tiers carried over from the sandbox (levels by lifetime points) over loopback: nobody is demoted."""

from __future__ import annotations

import io
import tomllib
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bridge.dryrun import run_dry
from bridge.pipeline import Pipeline, PipelineConfig, RunOptions, RunSummary
from bridge.reconcile import Reconciler, ReconcileReport
from bridge.targets import EmbeddedTarget
from bridge.tiers import perkamo_levels
from connectors.perkville.sandbox import Sandbox
from mapping.tiers import tier_level
from perkamo_core.storage import events, spaces
from tests.bridge.conftest import MEMBERS, SPACE, TRANSACTIONS, Bridge, checksum, open_bridge, run

TIERS = {"Bronze": 2, "Silver": 3, "Gold": 4}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The conftest's sandbox with connection levels by lifetime points (four names with None)."""
    box = Sandbox(seed=11, members=MEMBERS, transactions=TRANSACTIONS, tiered_levels=True)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def _target(bridge: Bridge, tiers: dict[str, int]) -> EmbeddedTarget:
    return EmbeddedTarget(bridge.service, bridge.engine, SPACE, tiers=tiers)


def _config(bridge: Bridge, tiers: dict[str, int]) -> PipelineConfig:
    return PipelineConfig(business=bridge.business, tiers=tuple(tiers.items()))


def _run(bridge: Bridge, kind: str = "backfill", tiers: dict[str, int] = TIERS) -> RunSummary:
    pipeline = Pipeline(
        state=bridge.state, source=bridge.client, target=_target(bridge, tiers), config=_config(bridge, tiers)
    )
    return pipeline.run(RunOptions(kind=kind))  # type: ignore[arg-type]


def _reconciler(bridge: Bridge, tiers: dict[str, int] = TIERS) -> Reconciler:
    return Reconciler(
        state=bridge.state, source=bridge.client, target=_target(bridge, tiers), business=bridge.business,
        tiers=tiers,
    )


def _connections(box: Sandbox) -> list[dict[str, Any]]:
    business = box.ledger.businesses[box.business_ids[0]]
    return [box.ledger.connections[cid] for cid in business.connection_ids]


def _set_level(box: Sandbox, user: int, level: str | None) -> None:
    """Perkville changes a member's level (its connection's last_mod_dt moves, as any edit's)."""
    ledger = box.ledger
    with ledger.lock:
        record = next(c for c in _connections(box) if c["user"] == user)
        record["level"] = level
        record["last_mod_dt"] = ledger.now()
        ledger.version += 1


def _tier_ids(bridge: Bridge) -> Counter[str]:
    with bridge.engine.connect() as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == SPACE)).scalar()
        rows = conn.execute(
            select(events.c.transaction_id).where(
                events.c.space_id == space_id, events.c.event == "perkville.tier_migrated"
            )
        ).scalars()
        return Counter(str(r) for r in rows)


def _levels(bridge: Bridge) -> dict[int, int | None]:
    ids = [f"perkville:{c['user']}" for c in _connections(bridge.box)]
    found = perkamo_levels(_target(bridge, TIERS), ids)
    return {c["user"]: found[f"perkville:{c['user']}"] for c in _connections(bridge.box)}


def _assert_nobody_below_the_map(bridge: Bridge) -> None:
    levels = _levels(bridge)
    for connection in _connections(bridge.box):
        mapped = tier_level(connection["level"], TIERS) or 1
        assert (levels[connection["user"]] or 1) >= mapped, connection


def _user_with(box: Sandbox, level: str) -> int:
    return next(c["user"] for c in _connections(box) if c["level"] == level)


def test_backfill_lifts_every_member_to_its_mapped_level_and_points_match_a_run_without_tiers(
    bridge: Bridge, tmp_path: Path
) -> None:
    names = Counter(c["level"] for c in _connections(bridge.box))
    assert {"Bronze", "Silver", "Gold"} <= set(names)  # at least three level names
    first = _run(bridge)
    assert first.status == "succeeded" and first.counts.dead_lettered == 0
    assert first.unknown_levels == {}
    _assert_nobody_below_the_map(bridge)
    levels = _levels(bridge)
    for connection in _connections(bridge.box):
        assert levels[connection["user"]] == (tier_level(connection["level"], TIERS) or 1)
    # One event per member whose level maps above level 1, with the documented id.
    expected = {f"perkville:{bridge.business}:tier:{c['user']}" for c in _connections(bridge.box) if c["level"]}
    assert _tier_ids(bridge) == Counter(expected)
    report = _reconciler(bridge).compare()
    assert report.ok and report.tiers_checked == MEMBERS and report.demoted == []
    assert report.to_json()["tiers"] == {"checked": MEMBERS, "demoted": []}

    # `points` is exactly what a run without tier mapping gives.
    with open_bridge(bridge.box, f"sqlite:///{tmp_path / 'plain.db'}") as plain:
        assert plain.backfill().status == "succeeded"
        assert plain.service.wallet_balances(SPACE, "points") == bridge.service.wallet_balances(SPACE, "points")
        assert _tier_ids(plain) == Counter()

    # Read again, nothing moves.
    before = checksum(bridge.engine)
    second = _run(bridge)
    assert second.counts.applied == 0
    assert checksum(bridge.engine) == before


def test_a_higher_level_lifts_again_with_a_new_id_and_a_lower_one_never_demotes(bridge: Bridge) -> None:
    assert _run(bridge).status == "succeeded"
    points = bridge.service.wallet_balances(SPACE, "points")
    rising, falling = _user_with(bridge.box, "Bronze"), _user_with(bridge.box, "Gold")
    _set_level(bridge.box, rising, "Gold")
    _set_level(bridge.box, falling, "Bronze")

    sync = _run(bridge, "sync")
    assert sync.status == "succeeded"
    ids = _tier_ids(bridge)
    b = bridge.business
    assert ids[f"perkville:{b}:tier:{rising}"] == 1 and ids[f"perkville:{b}:tier:{rising}:4"] == 1
    assert [i for i in ids if i.startswith(f"perkville:{b}:tier:{falling}")] == [f"perkville:{b}:tier:{falling}"]
    levels = _levels(bridge)
    assert levels[rising] == 4 and levels[falling] == 4  # Gold stays Gold in Perkamo
    assert bridge.state.id_map.get_many(b, [str(falling)])[str(falling)].tier_level == 4
    _assert_nobody_below_the_map(bridge)
    assert bridge.service.wallet_balances(SPACE, "points") == points
    report = _reconciler(bridge).compare()
    assert report.ok and report.demoted == []

    # Back up to Gold: already there, nothing is sent; a second pass applies nothing.
    _set_level(bridge.box, falling, "Gold")
    assert _run(bridge, "sync").status == "succeeded"
    assert _tier_ids(bridge) == ids
    assert _levels(bridge)[falling] == 4


def test_the_dry_run_predicts_every_members_tier_with_no_demotion(bridge: Bridge) -> None:
    report = run_dry(
        source=bridge.client, config=_config(bridge, TIERS), options=RunOptions(kind="backfill")
    )
    assert report.tiers is not None and len(report.tiers) == MEMBERS
    assert report.demotions == 0
    by_user = {row.perkville_user_id: row for row in report.tiers}
    for connection in _connections(bridge.box):
        row = by_user[str(connection["user"])]
        assert row.perkville_level == connection["level"]
        assert row.perkamo_level == (tier_level(connection["level"], TIERS) or 1)
    body = report.to_json()
    assert body["tiers"]["demotions"] == 0 and len(body["tiers"]["members"]) == MEMBERS
    assert _tier_ids(bridge) == Counter()  # nothing was written


def test_unknown_level_names_are_reported_and_the_fixed_map_is_applied(bridge: Bridge) -> None:
    partial = {"Bronze": 2, "Silver": 3}
    golds = [c["user"] for c in _connections(bridge.box) if c["level"] == "Gold"]
    first = _run(bridge, tiers=partial)
    assert first.unknown_levels == {"Gold": len(golds)}
    assert first.to_json()["unknown_levels"] == {"Gold": len(golds)}
    assert any("'Gold'" in note and "[tiers]" in note for note in first.notes)
    assert all(_levels(bridge)[user] == 1 for user in golds)

    fixed = _run(bridge, tiers=TIERS)
    assert fixed.unknown_levels == {}
    assert any("loaded the migration program" in note for note in fixed.notes)
    levels = _levels(bridge)
    assert all(levels[user] == 4 for user in golds)
    assert {f"perkville:{bridge.business}:tier:{user}" for user in golds} <= set(_tier_ids(bridge))
    _assert_nobody_below_the_map(bridge)


def test_reconcile_fails_on_a_demoted_member_and_names_it_in_the_csv(bridge: Bridge) -> None:
    assert _run(bridge).status == "succeeded"
    user = _user_with(bridge.box, "Bronze")
    _set_level(bridge.box, user, "Gold")  # not synced yet: Perkamo holds the member at Bronze
    out = io.StringIO()
    report: ReconcileReport = _reconciler(bridge).compare(csv_out=out, run_id=7)
    assert not report.ok
    assert [(row.perkville_user_id, row.mapped_level, row.perkamo_level) for row in report.demoted] == [
        (str(user), 4, 2)
    ]
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("perkville_level,mapped_level,perkamo_level,tier_status")
    assert [line for line in lines if line.endswith(",demoted")] == [
        next(line for line in lines if line.split(",")[1] == str(user))
    ]
    # The stored results (the dashboard's list and export): the demoted member first, same rows.
    stored = list(bridge.state.reconciled.iter_members(bridge.business))
    assert stored[0].perkville_user_id == str(user) and stored[0].tier_status == "demoted" and stored[0].flagged
    assert stored[0].status == "match" and stored[0].run_id == 7
    assert sorted(",".join(m.csv_row(tiers=True)) for m in stored) == sorted(lines[1:])
    assert _run(bridge, "sync").status == "succeeded"
    assert _reconciler(bridge).compare().ok


def test_cli_proposes_the_map_dry_runs_backfills_and_reconciles_tiers(
    capsys: pytest.CaptureFixture[str], cli_env: Path, tmp_path: Path
) -> None:
    proposal = tmp_path / "tiers.toml"
    code, modules, err = run(capsys, cli_env, "program", "from-perkville", "--tiers-out", str(proposal))
    assert code == 0, err
    assert tomllib.loads(proposal.read_text())["tiers"] == TIERS
    assert "proposed 'Gold' = 4" in err
    assert "leveling" not in modules  # [tiers] not set yet: nothing about levels in the program

    cli_env.write_text(cli_env.read_text() + "\n" + proposal.read_text())
    code, body, err = run(capsys, cli_env, "backfill", "--dry-run", "--json")
    assert code == 0, err
    assert body["tiers"]["demotions"] == 0 and len(body["tiers"]["members"]) == MEMBERS
    code, text, err = run(capsys, cli_env, "backfill", "--dry-run")
    assert code == 0, err
    assert f"predicted tiers of {MEMBERS} members" in text and "would-be demotions: 0" in text
    assert len([line for line in text.splitlines() if "  predicted " in line and "mapped" in line]) == MEMBERS
    code, body, err = run(capsys, cli_env, "program", "from-perkville")
    assert code == 0, err
    assert body["leveling"]["wallet"] == "tier_points"
    code, body, err = run(capsys, cli_env, "backfill", "--json")
    assert code == 0, err
    code, body, err = run(capsys, cli_env, "reconcile", "--json")
    assert code == 0, err
    assert body["tiers"] == {"checked": MEMBERS, "demoted": []}
    assert Decimal(body["perkville_total"]) == Decimal(body["perkamo_total"])


class _Program:
    """A remote Perkamo whose program is ``modules`` (only ``program()`` is asked)."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules

    def program(self) -> dict[str, Any]:
        return self.modules


def test_a_remote_target_warns_when_its_program_lacks_the_tier_rules(tmp_path: Path) -> None:
    from bridge.targets import RemoteTarget
    from bridge.tiers import with_tier_modules
    from config.programs import load_migration_program
    from perkamo_core.db import create_db_engine

    engine = create_db_engine(f"sqlite:///{tmp_path / 'remote.db'}")
    try:
        plain = _Program(load_migration_program())
        tiered = _Program(with_tier_modules(load_migration_program(), TIERS))
        assert RemoteTarget(plain, engine).ensure_program().startswith("the remote program has rules")
        assert "no tier rules" in RemoteTarget(plain, engine, tiers=TIERS).ensure_program()
        assert RemoteTarget(tiered, engine, tiers=TIERS).ensure_program().startswith("the remote program has")
    finally:
        engine.dispose()
