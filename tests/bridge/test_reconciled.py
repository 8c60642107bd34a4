"""The stored reconcile results (``bridge_reconciled``) on both databases: the page upsert, the
repair's update, pruning, and the dashboard's reads (order, pages, search, filters, totals)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, inspect

from bridge.state import ReconciledMember, StateStore

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(db_engine: Engine) -> StateStore:
    state = StateStore(db_engine, clock=Clock())
    state.migrate()
    return state


def member(uid: str, perkville: str, perkamo: str, *, run_id: int = 1, business: str = "25",
           at: datetime = T0, tier: str | None = None) -> ReconciledMember:
    balance_status = "match" if Decimal(perkville) == Decimal(perkamo) else "mismatch"
    return ReconciledMember(
        business, uid, f"perkville:{uid}", Decimal(perkville), Decimal(perkamo), balance_status, run_id, at,
        tier_status=tier, perkville_level=None if tier is None else "Gold",
        mapped_level=None if tier is None else 3, perkamo_level=None if tier is None else 2,
    )


def seed(store: StateStore) -> None:
    store.reconciled.record([
        member("1", "10", "10"),
        member("2", "10", "7"),        # +3
        member("3", "5", "25.5"),      # −20.5: the largest difference
        member("4", "8", "8", tier="demoted"),
        member("5", "0", "0"),
        member("15", "1", "1"),
    ])
    store.reconciled.record([member("9", "1", "1", business="26")])  # another business


def test_migration_6_creates_the_table_and_its_indexes(store: StateStore) -> None:
    inspector = inspect(store.engine)
    assert "bridge_reconciled" in inspector.get_table_names()
    names = {ix["name"] for ix in inspector.get_indexes("bridge_reconciled")}
    assert {"ix_bridge_reconciled_order", "ix_bridge_reconciled_customer", "ix_bridge_reconciled_status"} <= names
    assert store.migrate() == []


def test_flagged_members_come_first_largest_difference_first(store: StateStore) -> None:
    seed(store)
    page = store.reconciled.page("25")
    assert [m.perkville_user_id for m in page] == ["3", "2", "4", "5", "15", "1"]
    top = page[0]
    assert top.difference == Decimal("-20.5") and top.perkamo_balance == Decimal("25.5")
    assert top.status == "mismatch" and top.flagged and top.customer_id == "perkville:3"
    assert top.checked_at == T0 and top.run_id == 1
    assert page[2].tier_status == "demoted" and page[2].flagged and page[2].status == "match"
    assert [m.perkville_user_id for m in store.reconciled.page("25", limit=2, offset=2)] == ["4", "5"]
    assert store.reconciled.page("25", limit=2, offset=6) == []
    assert store.reconciled.count("25") == 6 and store.reconciled.count("26") == 1


def test_a_record_upserts_the_latest_result(store: StateStore) -> None:
    seed(store)
    later = T0 + timedelta(hours=1)
    store.reconciled.record([member("3", "5", "5", run_id=2, at=later)])
    got = store.reconciled.get("25", "3")
    assert got is not None and got.status == "match" and not got.flagged and got.run_id == 2
    assert got.checked_at == later
    assert store.reconciled.count("25") == 6
    assert [m.perkville_user_id for m in store.reconciled.page("25", limit=2)] == ["2", "4"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("1", ["15", "1"]),
        ("PERKVILLE:2", []),                  # ids are compared as they are spelled                 # a prefix of the Perkville user id
        ("15", ["15"]),
        ("perkville:2", ["2"]),              # the customer id
        ("perkville:", ["3", "2", "4", "5", "15", "1"]),
        ("  3 ", ["3"]),                     # trimmed
        ("%", []),                           # LIKE's wildcards are plain characters
        ("_", []),
        ("9", []),                           # another business's member
    ],
    ids=["user-prefix", "case", "user-exact", "customer-id", "customer-prefix", "trimmed", "percent", "underscore",
         "other-business"],
)
def test_search_by_member(store: StateStore, query: str, expected: list[str]) -> None:
    seed(store)
    assert [m.perkville_user_id for m in store.reconciled.page("25", search=query)] == expected
    assert store.reconciled.count("25", search=query) == len(expected)


def test_search_by_email_reads_the_staged_users(store: StateStore) -> None:
    seed(store)
    with store.engine.begin() as conn:
        store.users.put(conn, "25", {
            "2": {"user_id": 2, "emails": [{"email": "Ana.Silva@Example.com"}]},
            "5": {"user_id": 5, "emails": [{"email": "bo@example.com"}]},
        })
    assert [m.perkville_user_id for m in store.reconciled.page("25", search="ana.silva@")] == ["2"]
    assert [m.perkville_user_id for m in store.reconciled.page("25", search="ANA.SILVA@EXAMPLE.COM")] == ["2"]
    assert store.reconciled.page("25", search="silva@") == []  # a prefix, not a substring
    assert store.reconciled.count("25", search="bo@") == 1


@pytest.mark.parametrize(
    ("only", "expected"),
    [("flagged", ["3", "2", "4"]), ("mismatch", ["3", "2"]), ("match", ["4", "5", "15", "1"]),
     ("demoted", ["4"]), ("pending", [])],
    ids=["flagged", "mismatch", "match", "demoted", "pending"],
)
def test_filter_by_status(store: StateStore, only: str, expected: list[str]) -> None:
    seed(store)
    assert [m.perkville_user_id for m in store.reconciled.page("25", only=only)] == expected


def test_an_unknown_filter_is_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="unknown filter 'bogus'"):
        store.reconciled.page("25", only="bogus")


def test_totals_and_the_repair_update(store: StateStore) -> None:
    assert store.reconciled.totals("25").checked == 0 and store.reconciled.totals("25").last_run_id is None
    seed(store)
    store.runs.start("25", direction="import", kind="sync")
    run_id = store.runs.start("25", direction="reconcile", kind="reconcile", started_at=T0)
    store.runs.start("25", direction="import", kind="sync")
    store.runs.start("26", direction="reconcile", kind="reconcile")
    totals = store.reconciled.totals("25")
    assert (totals.checked, totals.matched, totals.mismatched, totals.demoted, totals.flagged) == (6, 4, 2, 1, 3)
    assert totals.last_run_id == run_id and totals.last_run_at == T0

    store.reconciled.settle(
        "25", {"2": (Decimal(10), Decimal(10), "repaired"), "3": (Decimal(5), Decimal("25.5"), "pending")},
        run_id=2,
    )
    repaired, pending = store.reconciled.get("25", "2"), store.reconciled.get("25", "3")
    assert repaired is not None and repaired.status == "repaired" and repaired.difference == 0
    assert not repaired.flagged and repaired.run_id == 2
    assert pending is not None and pending.status == "pending" and pending.flagged
    totals = store.reconciled.totals("25")
    assert (totals.matched, totals.mismatched, totals.repaired, totals.pending, totals.flagged) == (4, 0, 1, 1, 2)
    assert [m.perkville_user_id for m in store.reconciled.page("25", limit=3)] == ["3", "4", "5"]


def test_prune_drops_the_members_a_later_reconcile_no_longer_saw(store: StateStore) -> None:
    seed(store)
    later = T0 + timedelta(days=1)
    store.reconciled.record([member("1", "10", "10", run_id=2, at=later)])
    assert store.reconciled.prune("25", before=later) == 5
    assert [m.perkville_user_id for m in store.reconciled.page("25")] == ["1"]
    assert store.reconciled.count("26") == 1


def test_the_export_streams_every_matching_member_in_page_order(store: StateStore) -> None:
    seed(store)
    rows = [m.csv_row(tiers=False) for m in store.reconciled.iter_members("25", batch=2)]
    assert rows[0] == ["perkville:3", "3", "5", "25.5", "-20.5", "mismatch"]
    assert [r[1] for r in rows] == ["3", "2", "4", "5", "15", "1"]
    assert [m.csv_row(tiers=True) for m in store.reconciled.iter_members("25", only="demoted")] == [
        ["perkville:4", "4", "8", "8", "0", "match", "Gold", "3", "2", "demoted"]
    ]
    assert store.reconciled.has_tiers("25") and not store.reconciled.has_tiers("26")
