"""Unit tests of the bridge state store on both databases: cursors, run log, dead letters, id map, leases."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from bridge.errors import LeaseHeldError, LeaseLostError
from bridge.state import IdMapEntry, RunCounts, StateStore, lease_name


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_engine: Engine, clock: FakeClock) -> StateStore:
    state = StateStore(db_engine, clock=clock)
    state.migrate()
    return state


def test_migrate_is_idempotent(store: StateStore) -> None:
    assert store.migrate() == []


def test_cursor_set_get_overwrite_delete(store: StateStore) -> None:
    assert store.cursors.get("25", "transactions") is None
    with store.engine.begin() as conn:
        store.cursors.set(conn, "25", "transactions", "2024-01-01T00:00:00+00:00|7", 1)
    with store.engine.begin() as conn:
        store.cursors.set(conn, "25", "transactions", "2024-02-01T00:00:00+00:00|9", 2)
        store.cursors.set(conn, "26", "transactions", "x", 3)
    assert store.cursors.get("25", "transactions") == "2024-02-01T00:00:00+00:00|9"
    assert [c.business for c in store.cursors.all()] == ["25", "26"]
    assert store.cursors.all("25")[0].run_id == 2
    with store.engine.begin() as conn:
        store.cursors.delete(conn, "25", "transactions")
    assert store.cursors.get("25", "transactions") is None


def test_a_cursor_keeps_the_sources_newest_change_apart_from_its_value(store: StateStore) -> None:
    with store.engine.begin() as conn:
        store.cursors.set(conn, "25", "transactions", "2026-12-05T01:00:00+00:00", 1,
                          source_newest="2026-12-05T02:00:00+00:00")
        store.cursors.observe(conn, "25", "users", "2026-12-05T02:00:00+00:00")  # no row: nothing
    with store.engine.begin() as conn:
        store.cursors.set(conn, "25", "transactions", "2026-12-05T01:30:00+00:00", 2)  # value only
    entry = store.cursors.entry("25", "transactions")
    assert entry is not None and entry.value == "2026-12-05T01:30:00+00:00"
    assert entry.source_newest == "2026-12-05T02:00:00+00:00"
    with store.engine.begin() as conn:
        store.cursors.observe(conn, "25", "transactions", "2026-12-05T03:00:00+00:00")
    assert [c.source_newest for c in store.cursors.all("25")] == ["2026-12-05T03:00:00+00:00"]
    assert store.cursors.entry("25", "users") is None


def test_migration_2_adds_source_newest_to_an_older_database(store: StateStore) -> None:
    """A database from before migration 2: its cursors survive, with no source_newest (NULL)."""
    from sqlalchemy import delete

    from perkamo_core.migrations import schema_migrations

    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE bridge_cursors DROP COLUMN source_newest")
        conn.execute(delete(schema_migrations).where(
            schema_migrations.c.component == "bridge", schema_migrations.c.version == 2))
        conn.exec_driver_sql(
            "INSERT INTO bridge_cursors (business, resource, value, run_id, updated_at) "
            "VALUES ('25', 'transactions', '2026-12-05T02:09:21+00:00', 1, '2026-12-05 02:09:21')"
        )
    assert store.migrate() == [2]
    entry = store.cursors.entry("25", "transactions")
    assert entry is not None and entry.value == "2026-12-05T02:09:21+00:00" and entry.source_newest is None
    assert store.migrate() == []


def test_migration_8_indexes_dead_letters_by_run_on_a_database_at_migration_7(db_engine: Engine) -> None:
    """A database at migration 7 (dead letters without the run index) gets it, its letters kept;
    a new database has it from migration 1, and migration 8 leaves it be."""
    from sqlalchemy import inspect

    from bridge.state import MIGRATIONS
    from perkamo_core.migrations import migrate

    def indexes() -> dict[str, list[str | None]]:
        with db_engine.connect() as conn:
            return {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("bridge_dead_letters")
                    if ix["name"] is not None}

    assert migrate(db_engine, "bridge", MIGRATIONS[:7]) == [1, 2, 3, 4, 5, 6, 7]
    with db_engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_bridge_dead_letters_run")  # as migration 7's databases are
    assert "ix_bridge_dead_letters_run" not in indexes()
    state = StateStore(db_engine)
    with db_engine.begin() as conn:
        state.dead_letters.put(conn, business="25", kind="transaction", record_id="77", raw={"id": 77},
                               reason="bad_points", detail=None, run_id=3)
    assert state.migrate() == [8]
    assert indexes()["ix_bridge_dead_letters_run"] == ["run_id", "id"]
    with db_engine.begin() as conn:
        state.dead_letters.put(conn, business="25", kind="transaction", record_id="78", raw={"id": 78},
                               reason="bad_points", detail=None, run_id=4)
    letters, total = state.dead_letters.of_run(3)
    assert total == 1 and [d.record_id for d in letters] == ["77"]
    assert [d.record_id for d in state.dead_letters.list("25", status=None, run_id=4)] == ["78"]
    assert state.dead_letters.list("25", status=None, run_id=5) == []
    assert state.migrate() == []


def test_a_new_database_has_the_dead_letters_run_index(store: StateStore) -> None:
    from sqlalchemy import inspect

    with store.engine.connect() as conn:
        names = {ix["name"] for ix in inspect(conn).get_indexes("bridge_dead_letters")}
    assert {"ix_bridge_dead_letters_run", "ix_bridge_dead_letters_status"} <= names


def test_cursor_write_rolls_back_with_its_transaction(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.engine.begin() as conn:
        store.cursors.set(conn, "25", "transactions", "v", 1)
        raise RuntimeError("crash mid-page")
    assert store.cursors.get("25", "transactions") is None


def test_run_log_counts_status_and_duration(store: StateStore, clock: FakeClock) -> None:
    run_id = store.runs.start("25", direction="import", kind="backfill", mode="history")
    page = RunCounts()
    page.count("applied", 3)
    page.count("duplicate")
    page.count("dead_lettered")
    with store.engine.begin() as conn:
        store.runs.add(conn, run_id, page, details={"transactions": page.as_dict()})
        store.runs.add(conn, run_id, page)
    clock.advance(2.5)
    store.runs.finish(run_id, "succeeded")
    run = store.runs.get(run_id)
    assert run is not None
    assert run.status == "succeeded"
    assert run.duration_ms == 2500
    assert run.counts.as_dict() == {
        "read": 10,
        "applied": 6,
        "duplicate": 2,
        "skipped": 0,
        "dead_lettered": 2,
    }
    assert run.counts.balanced
    assert run.details == {"transactions": page.as_dict()}
    assert store.runs.recent("25")[0].id == run_id
    assert store.runs.last_success("25", "backfill") == run


def test_the_learned_request_rate_is_the_latest_runs_of_that_business(store: StateStore) -> None:
    assert store.runs.learned_rate("25") is None
    older = store.runs.start("25", direction="import", kind="backfill")
    store.runs.finish(older, "succeeded", details={"request_rate": 6.5})
    newer = store.runs.start("25", direction="import", kind="sync")
    store.runs.finish(newer, "failed", details={"request_rate": 3.25})
    without = store.runs.start("25", direction="import", kind="sync")
    store.runs.finish(without, "succeeded", details={"kinds": {}})  # an unpaced source says nothing
    other = store.runs.start("26", direction="import", kind="sync")
    store.runs.finish(other, "succeeded", details={"request_rate": 9.0})
    assert store.runs.learned_rate("25") == 3.25
    assert store.runs.learned_rate("26") == 9.0


def test_stale_runs_become_interrupted(store: StateStore) -> None:
    first = store.runs.start("25", direction="import", kind="backfill")
    second = store.runs.start("25", direction="import", kind="backfill")
    other = store.runs.start("26", direction="import", kind="backfill")
    assert store.runs.interrupt_stale("25", "import", keep=second) == 1
    statuses = {r.id: r.status for r in store.runs.recent()}
    assert statuses == {first: "interrupted", second: "running", other: "running"}


def test_an_interrupted_run_ends_when_the_takeover_noticed_it(store: StateStore, clock: FakeClock) -> None:
    started = clock.now
    dead = store.runs.start("25", direction="import", kind="backfill")
    finished = store.runs.start("25", direction="import", kind="sync")
    store.runs.finish(finished, "succeeded")
    clock.advance(90.25)  # the runner died; its lease expired; the next holder starts now
    assert store.runs.interrupt_stale("25", "import") == 1
    run = store.runs.get(dead)
    assert run is not None and run.status == "interrupted"
    assert run.started_at == started and run.finished_at == clock.now and run.duration_ms == 90250
    assert run.error == "the runner stopped before the run finished"
    body = run.to_json()
    assert body["finished_at"] == clock.now and body["duration_ms"] == 90250
    ended = store.runs.get(finished)
    assert ended is not None and ended.finished_at == started and ended.duration_ms == 0  # left as it was
    clock.advance(5)
    assert store.runs.interrupt_stale("25", "import") == 0  # nothing running: nothing changes
    again = store.runs.get(dead)
    assert again is not None and again.finished_at == run.finished_at


def test_run_error_is_stored_without_secrets(store: StateStore) -> None:
    run_id = store.runs.start("25", direction="import", kind="sync")
    store.runs.finish(
        run_id,
        "failed",
        error="auth failed for password=hunter2 at https://x.test/token/?client_secret=abc "
        "with Bearer abc.def and sk_live_0123456789 and s3cr3t-value",
        secrets=["s3cr3t-value"],
    )
    run = store.runs.get(run_id)
    assert run is not None and run.error is not None
    for leaked in ("hunter2", "client_secret=abc", "abc.def", "0123456789", "s3cr3t-value"):
        assert leaked not in run.error


@given(st.lists(st.sampled_from(["applied", "duplicate", "skipped", "dead_lettered"]), max_size=50))
def test_run_counts_always_balance(outcomes: list[str]) -> None:
    total = RunCounts()
    for outcome in outcomes:
        page = RunCounts()
        page.count(outcome)
        total.add(page)
    assert total.balanced
    assert total.read == len(outcomes)


def test_dead_letters_repeat_resolve_discard(store: StateStore) -> None:
    with store.engine.begin() as conn:
        for reason in ("unknown_classification", "unknown_classification"):
            store.dead_letters.put(
                conn,
                business="25",
                kind="transaction",
                record_id="77",
                raw={"transaction_id": 77, "classification": "??"},
                reason=reason,
                detail="classification '??' is not EARN or REDEEM",
                run_id=1,
            )
        store.dead_letters.put(
            conn,
            business="25",
            kind="transaction",
            record_id="78",
            raw={"transaction_id": 78},
            reason="bad_points",
            detail=None,
            run_id=1,
        )
    letters = store.dead_letters.list("25")
    assert [(d.record_id, d.attempts) for d in letters] == [("77", 2), ("78", 1)]
    assert [d.record_id for d in store.dead_letters.list("25", limit=1, offset=1)] == ["78"]
    assert store.dead_letters.list("25", limit=1, offset=2) == []
    assert letters[0].raw == {"transaction_id": 77, "classification": "??"}
    assert store.dead_letters.counts("25") == {
        "open": {"unknown_classification": 1, "bad_points": 1}
    }
    assert store.dead_letters.discard("25", reason="bad_points") == 1
    with store.engine.begin() as conn:
        assert store.dead_letters.resolve(conn, "25", "transaction", ["77", "999"]) == 1
    assert store.dead_letters.open_count("25") == 0
    assert store.dead_letters.counts("25") == {
        "resolved": {"unknown_classification": 1},
        "discarded": {"bad_points": 1},
    }


def test_id_map_roundtrip_csv_and_adjustment_numbers(store: StateStore) -> None:
    entries = [
        IdMapEntry("25", "100", "perkville:100", "perkville_user", "c1", "ACTIVE", Decimal(40)),
        IdMapEntry("25", "101", "perkville:101", "perkville_user", "c2", "INACTIVE", Decimal(0)),
    ]
    with store.engine.begin() as conn:
        store.id_map.put(conn, entries)
        assert store.id_map.next_adjustment(conn, "25", "100") == 1
        assert store.id_map.next_adjustment(conn, "25", "100") == 2
    got = store.id_map.get_many("25", ["100", "101", "102"])
    assert set(got) == {"100", "101"}
    assert got["100"].perkville_balance == Decimal(40)
    assert got["100"].adjustments == 2
    out = io.StringIO()
    assert store.id_map.export_csv("25", out) == 2
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("business,perkville_user_id,customer_id")
    assert lines[1].startswith("25,100,perkville:100,perkville_user,c1,ACTIVE,40")


def test_lease_is_exclusive_until_expiry(store: StateStore, clock: FakeClock) -> None:
    name = lease_name("25", "import")
    ttl = timedelta(seconds=60)
    first = store.leases.try_acquire(name, "a", ttl)
    assert first is not None and first.owner == "a"
    assert store.leases.try_acquire(name, "b", ttl) is None
    with pytest.raises(LeaseHeldError, match="already running"):
        store.leases.acquire(name, "b", ttl)
    assert store.leases.try_acquire(name, "a", ttl) is not None  # re-entrant for its owner
    clock.advance(61)
    taken = store.leases.try_acquire(name, "b", ttl)
    assert taken is not None and taken.owner == "b"
    with pytest.raises(LeaseLostError), store.engine.begin() as conn:
        store.leases.fence(conn, name, "a", ttl)
    assert not store.leases.renew(name, "a", ttl)
    store.leases.release(name, "a")  # not ours: no effect
    assert store.leases.holder(name).owner == "b"  # type: ignore[union-attr]
    store.leases.release(name, "b")
    assert store.leases.holder(name) is None


def test_lease_wait_times_out_with_clear_message(store: StateStore) -> None:
    ttl = timedelta(seconds=60)
    store.leases.acquire("import:25", "a", ttl)
    with pytest.raises(LeaseHeldError, match="held by a"):
        store.leases.acquire("import:25", "b", ttl, wait=True, timeout=0.3, poll_seconds=0.1)


def test_concurrent_acquirers_get_one_winner(db_engine: Engine) -> None:
    store = StateStore(db_engine)
    store.migrate()
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def contend(owner: str) -> None:
        barrier.wait()
        if store.leases.try_acquire("import:25", owner, timedelta(seconds=30)) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.leases.holder("import:25").owner == winners[0]  # type: ignore[union-attr]


def test_a_lease_of_a_dead_local_process_is_taken_over(store: StateStore) -> None:
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = f"{socket.gethostname()}:{child.pid}:deadbeef"
    ttl = timedelta(seconds=60)
    assert store.leases.try_acquire("import:25", dead, ttl) is not None
    assert store.leases.try_acquire("import:25", "elsewhere:1:x", ttl) is not None  # not expired, but dead
    # The new holder lives on another host: never presumed dead, so it keeps the lease.
    assert store.leases.try_acquire("import:25", f"other-host:{child.pid}:y", ttl) is None


@pytest.mark.parametrize(
    ("active", "expected_rules"),
    [
        ({}, ["m1", "m2"]),
        ({"events": {"rules": [{"key": "own", "event": "x.y"}]}}, ["own", "m1", "m2"]),
        ({"events": {"rules": [{"key": "m1", "event": "perkville.a"}]}}, ["m1", "m2"]),
    ],
    ids=["empty-space", "keeps-own-rules", "no-duplicate-keys"],
)
def test_merge_program(active: dict, expected_rules: list[str]) -> None:  # type: ignore[type-arg]
    from bridge.targets import merge_program

    migration = {
        "events": {"rules": [{"key": "m1", "event": "perkville.a"}, {"key": "m2", "event": "perkville.b"}]},
        "wallets": {"wallets": [{"key": "points"}]},
    }
    merged = merge_program(active, migration)
    assert [r["key"] for r in merged["events"]["rules"]] == expected_rules
    assert [w["key"] for w in merged["wallets"]["wallets"]] == ["points"]


def test_migration_5_adds_tier_level_to_an_older_id_map(store: StateStore) -> None:
    """An id map from before migration 5: its members survive with no tier migrated (NULL), and
    the column then keeps the highest level a tier event was sent for."""
    from sqlalchemy import delete

    from perkamo_core.migrations import schema_migrations

    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE bridge_id_map DROP COLUMN tier_level")
        conn.execute(delete(schema_migrations).where(
            schema_migrations.c.component == "bridge", schema_migrations.c.version == 5))
        conn.exec_driver_sql(
            "INSERT INTO bridge_id_map (business, perkville_user_id, customer_id, strategy, adjustments, "
            "created_at, updated_at) VALUES ('25', '7', 'perkville:7', 'perkville_user', 0, "
            "'2026-12-05 02:09:21', '2026-12-05 02:09:21')"
        )
    assert store.migrate() == [5]
    assert store.id_map.get_many("25", ["7"])["7"].tier_level is None
    with store.engine.begin() as conn:
        store.id_map.put(conn, [IdMapEntry("25", "7", "perkville:7", "perkville_user", tier_level=3)])
    assert store.id_map.get_many("25", ["7"])["7"].tier_level == 3
    assert store.migrate() == []
