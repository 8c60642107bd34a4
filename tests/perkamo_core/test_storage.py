"""perkamo_core storage: migrations upgrade in place, constraints and indexes hold on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from perkamo_core import storage as st
from perkamo_core.migrations import applied_versions, migrate
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SPACE, make_service, purchase


def test_migrations_are_recorded_and_idempotent(db_engine: Engine) -> None:
    assert st.migrate_core(db_engine) == [m.version for m in st.MIGRATIONS]
    assert st.migrate_core(db_engine) == []
    with db_engine.connect() as conn:
        assert applied_versions(conn, st.COMPONENT) == {m.version for m in st.MIGRATIONS}
    tables = set(inspect(db_engine).get_table_names())
    assert {t.name for t in st.metadata.sorted_tables} <= tables


def test_an_older_database_upgrades_in_place_keeping_its_data(db_engine: Engine) -> None:
    assert migrate(db_engine, st.COMPONENT, st.MIGRATIONS[:1]) == [1]
    with db_engine.begin() as conn:
        conn.execute(st.spaces.insert().values(
            slug=SPACE, environment="test", timezone="UTC", require_signatures=False,
            created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert "core_outbox" not in inspect(db_engine).get_table_names()

    service = CoreService(db_engine)
    service.migrate()

    assert service.get_space(SPACE).created_at == datetime(2026, 1, 1, tzinfo=UTC)
    service.ingest(SPACE, purchase("a", "t1"))
    assert [i.transaction_id for i in service.iter_outbox(SPACE)] == ["t1"]


def test_transaction_id_is_unique_per_space(db_engine: Engine) -> None:
    service = make_service(db_engine)
    service.ensure_space("other")
    service.load_program("other", {"events": {"rules": [
        {"event": "purchase.completed", "wallet": "points", "amount": 1}]}})
    service.ingest(SPACE, purchase("a", "same"))
    assert service.ingest("other", purchase("a", "same"))["applied"] is True  # another Space
    with pytest.raises(IntegrityError):
        with db_engine.begin() as conn:
            row = conn.execute(select(st.events).limit(1)).one()._asdict()
            row["id"] = row["id"] + 1000
            conn.execute(st.events.insert().values(**row))


def test_read_model_index_covers_latest_events_of_a_customer(db_engine: Engine) -> None:
    st.migrate_core(db_engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(db_engine).get_indexes("core_events")}
    assert indexes["ix_core_events_customer_seq"] == ["space_id", "customer_id", "id"]


def test_decimal_and_datetime_columns_round_trip_exactly(db_engine: Engine) -> None:
    service = make_service(db_engine)
    service.ingest(SPACE, purchase("a", "t1"))
    with db_engine.begin() as conn:
        conn.execute(st.ledger.update().values(amount=Decimal("12345678901234567890.123456789")))
        value = conn.execute(select(st.ledger.c.amount)).scalar_one()
        when = conn.execute(select(st.events.c.occurred_at)).scalar_one()
    assert value == Decimal("12345678901234567890.123456789")
    assert when == datetime(2026, 6, 1, 10, tzinfo=UTC)


_JSON_SCALARS = (
    st_.none() | st_.booleans() | st_.integers() | st_.text()
    | st_.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st_.floats(allow_nan=False, allow_infinity=False)
)
_JSON_VALUES = st_.recursive(
    _JSON_SCALARS,
    lambda inner: st_.lists(inner, max_size=4) | st_.dictionaries(st_.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(_JSON_VALUES)
def test_dump_json_matches_the_standard_library_encoder(value: object) -> None:
    # orjson writes what it can; the rest (big ints, lone surrogates) falls back to the stdlib.
    expected = json.loads(st._ENCODER.encode(value), parse_float=Decimal)
    assert st.load_json(st.dump_json(value)) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": Decimal("1.50"), "b": Decimal(7)}, '{"a":1.5,"b":7}'),
        ({"big": 2**80}, '{"big":1208925819614629174706176}'),
        ({1: "int key"}, '{"1":"int key"}'),
        ({"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}, '{"when":"2026-01-02T03:04:05+00:00"}'),
        ({"tags": frozenset({"x"})}, '{"tags":["x"]}'),
        ("caf\u00e9", '"caf\u00e9"'),
    ],
    ids=["decimals", "int-beyond-64-bits", "non-string-key", "aware-datetime", "set", "non-ascii"],
)
def test_dump_json_cases(value: object, text: str) -> None:
    assert st.dump_json(value) == text


def test_migration_3_moves_the_ledger_index_from_customer_to_entry(db_engine: Engine) -> None:
    assert migrate(db_engine, st.COMPONENT, st.MIGRATIONS[:2]) == [1, 2]
    with db_engine.begin() as conn:  # what migration 1 created before the ledger index moved
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_core_ledger_event")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_core_ledger_redemption")
        conn.exec_driver_sql("CREATE INDEX ix_core_ledger_customer ON core_ledger (customer_id, wallet)")
    service = make_service(db_engine)  # applies migration 3
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(db_engine).get_indexes("core_ledger")}
    assert indexes == {"ix_core_ledger_event": ["event_id"],
                       "ix_core_ledger_redemption": ["redemption_id"]}
    service.ingest(SPACE, purchase("a", "t1"))
    service.redeem(SPACE, "a", "free_shipping", "r1")
    assert service.ledger_sums(SPACE, "a") == {"points": Decimal(10)}
    assert service.ledger_sums(SPACE, "nobody") == {}


def test_migration_4_turns_core_balances_into_a_view_over_the_state_documents(
    db_engine: Engine,
) -> None:
    assert migrate(db_engine, st.COMPONENT, st.MIGRATIONS[:3]) == [1, 2, 3]
    with db_engine.begin() as conn:  # the table migration 1 created before balances moved
        conn.exec_driver_sql(
            "CREATE TABLE core_balances (customer_id INTEGER NOT NULL, wallet VARCHAR(64) NOT NULL, "
            "space_id INTEGER NOT NULL, balance VARCHAR(64) NOT NULL, lifetime VARCHAR(64) NOT NULL, "
            "PRIMARY KEY (customer_id, wallet))")
    service = make_service(db_engine)
    assert "core_balances" not in inspect(db_engine).get_table_names()
    assert "core_balances" in inspect(db_engine).get_view_names()
    service.ingest_bulk(SPACE, [purchase("a", "t1"), purchase("a", "t2"), purchase("b", "t3")])
    service.identify(SPACE, "c", {})
    service.redeem(SPACE, "a", "free_shipping", "r1")
    assert service.wallet_balances(SPACE) == {"a": Decimal(60), "b": Decimal(50), "c": Decimal(0)}
    assert service.wallet_balances(SPACE, user_ids=["b", "c", "ghost"]) == {
        "b": Decimal(50), "c": Decimal(0)}
    assert service.wallet_balances(SPACE, wallet="other") == dict.fromkeys("abc", Decimal(0))
    for user in "abc":
        assert service.ledger_sums(SPACE, user).get("points", Decimal(0)) == \
            service.wallet_balances(SPACE)[user]
    with db_engine.connect() as conn:
        view = {
            (r.wallet, r.customer_id): (r.balance, r.lifetime)
            for r in conn.execute(select(st.balances))
        }
        ids = dict(conn.execute(select(st.customers.c.user_id, st.customers.c.id)).all())
    assert view == {("points", ids["a"]): (Decimal(60), Decimal(100)),
                    ("points", ids["b"]): (Decimal(50), Decimal(50))}


def test_migration_5_adds_the_payload_fingerprint_and_older_rows_obey_the_conflict_rule(
    db_engine: Engine,
) -> None:
    from perkamo_core.errors import TransactionIdConflictError

    service = make_service(db_engine)
    service.ingest_bulk(SPACE, [purchase("a", "t1"), purchase("b", "t2")])
    with db_engine.begin() as conn:  # the database as it was before migration 5, with its rows
        conn.exec_driver_sql("ALTER TABLE core_events DROP COLUMN fingerprint")
        conn.exec_driver_sql(
            "DELETE FROM schema_migrations WHERE component = 'perkamo_core' AND version = 5")
    assert st.migrate_core(db_engine) == [5]
    with db_engine.connect() as conn:
        assert list(conn.execute(select(st.events.c.fingerprint))) == [(None,), (None,)]
    assert service.ingest(SPACE, purchase("a", "t1"))["duplicate"] is True
    with pytest.raises(TransactionIdConflictError):
        service.ingest(SPACE, purchase("a", "t2"))
    service.ingest(SPACE, purchase("c", "t3"))
    with db_engine.connect() as conn:
        stored = dict(conn.execute(select(st.events.c.transaction_id, st.events.c.fingerprint)).all())
    assert stored["t1"] is None and stored["t3"] is not None and len(stored["t3"]) == 64
