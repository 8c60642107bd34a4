"""CoreService Spaces, server keys, identify and redeem."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, select

from perkamo_core import storage as st
from perkamo_core.errors import (
    AuthenticationError,
    InsufficientBalanceError,
    NotFoundError,
)
from perkamo_core.models import SERVER_SCOPES
from perkamo_core.service import REDEMPTION_EVENT, CoreService
from tests.perkamo_core.test_service_ingest import SPACE, count, make_service, purchase


@pytest.fixture
def service(db_engine: Engine) -> CoreService:
    return make_service(db_engine)


def test_ensure_space_is_idempotent_and_update_changes_settings(service: CoreService) -> None:
    first = service.ensure_space("shop-live", environment="live", timezone="Europe/Prague")
    again = service.ensure_space("shop-live")
    assert again == first
    assert (first.environment, first.timezone, first.require_signatures) == ("live", "Europe/Prague", False)
    updated = service.update_space("shop-live", timezone="UTC", require_signatures=True)
    assert (updated.timezone, updated.require_signatures) == ("UTC", True)
    with pytest.raises(NotFoundError):
        service.get_space("missing")


@pytest.mark.parametrize(
    ("environment", "prefix"), [pytest.param("test", "sk_test_", id="test"),
                                pytest.param("live", "sk_live_", id="live")]
)
def test_keys_are_prefixed_hashed_and_authenticate(
    service: CoreService, db_engine: Engine, environment: str, prefix: str
) -> None:
    service.ensure_space("s1", environment=environment)
    created = service.create_api_key("s1")
    assert created.key.startswith(prefix)
    assert created.scopes == SERVER_SCOPES
    assert created.key not in repr(created)
    with db_engine.connect() as conn:
        stored = conn.execute(select(st.api_keys)).all()
    assert all(created.key not in str(tuple(row)) for row in stored)

    info = service.authenticate(created.key)
    assert (info.space, info.key_id, info.environment) == ("s1", created.key_id, environment)
    assert info.scopes == frozenset(SERVER_SCOPES)


def test_key_scopes_revocation_and_unknown_keys(service: CoreService) -> None:
    created = service.create_api_key(SPACE, ["events:write"])
    assert service.authenticate(created.key).scopes == frozenset({"events:write"})
    service.revoke_api_key(created.key_id)
    with pytest.raises(AuthenticationError) as raised:
        service.authenticate(created.key)
    assert created.key not in str(raised.value)
    for bad in ("", "pk_test_123", "sk_test_" + "0" * 48, created.key[:-1]):
        with pytest.raises(AuthenticationError):
            service.authenticate(bad)
    with pytest.raises(NotFoundError):
        service.revoke_api_key("key_missing")


def test_identify_creates_then_merges_traits(service: CoreService) -> None:
    assert service.identify(SPACE, "a", {"plan": "basic", "country": "CZ"})["traits"] == {
        "plan": "basic", "country": "CZ"}
    merged = service.identify(SPACE, "a", {"plan": "premium", "crm_id": 7})
    assert merged["traits"] == {"plan": "premium", "country": "CZ", "crm_id": 7}
    assert service.customer(SPACE, "a")["traits"] == merged["traits"]
    service.identify(SPACE, "a")
    assert service.customer(SPACE, "a")["traits"] == merged["traits"]


def test_identify_keeps_state_and_events_keep_traits(service: CoreService) -> None:
    service.identify(SPACE, "a", {"plan": "basic"})
    service.ingest(SPACE, purchase("a", "t1"))
    service.identify_bulk(SPACE, [("a", {"vip": True}), ("b", {"plan": "x"})])
    profile = service.customer(SPACE, "a")
    assert profile["traits"] == {"plan": "basic", "vip": True}
    assert profile["wallets"] == {"points": 50}
    assert service.customer(SPACE, "b")["traits"] == {"plan": "x"}


def test_redeem_subtracts_cost_returns_effect_and_is_idempotent(
    service: CoreService, db_engine: Engine
) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    result = service.redeem(SPACE, "a", "free_shipping", "r1")
    assert result["applied"] is True and result["duplicate"] is False
    assert result["effect"] == {"type": "free_shipping"}
    assert result["delta"] == [{"wallet": "points", "amount": -40}]
    assert result["wallet_state"] == {"points": 10}
    ledger_rows = count(db_engine, st.ledger)

    again = service.redeem(SPACE, "a", "free_shipping", "r1")
    assert again == {**result, "applied": False, "duplicate": True}
    assert count(db_engine, st.ledger) == ledger_rows
    assert service.wallet_balances(SPACE) == {"a": Decimal(10)}
    assert service.customer(SPACE, "a")["level"]["current"] == 50  # lifetime basis keeps the level
    assert service.usage(SPACE)["meters"]["redemptions"] == 1
    written_back = [i for i in service.iter_outbox(SPACE) if i.event == REDEMPTION_EVENT]
    assert [(i.kind, i.user_id, i.transaction_id, i.context) for i in written_back] == [
        ("event", "a", "r1", {"reward_key": "free_shipping", "wallet": "points", "cost": 40})]


def test_redeem_with_insufficient_balance_changes_nothing(
    service: CoreService, db_engine: Engine
) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    service.redeem(SPACE, "a", "free_shipping", "r1")
    before = (count(db_engine, st.ledger), count(db_engine, st.redemptions))
    with pytest.raises(InsufficientBalanceError) as raised:
        service.redeem(SPACE, "a", "free_shipping", "r2")
    assert raised.value.code == "insufficient_balance"
    assert raised.value.status == 400
    assert (count(db_engine, st.ledger), count(db_engine, st.redemptions)) == before
    assert service.wallet_balances(SPACE) == {"a": Decimal(10)}
    # The failed id is not burnt: once the balance suffices, the same id redeems.
    service.ingest(SPACE, purchase("a", "t2"))
    assert service.redeem(SPACE, "a", "free_shipping", "r2")["applied"] is True


@pytest.mark.parametrize(
    ("user", "reward", "field"),
    [pytest.param("ghost", "free_shipping", "user_id", id="unknown-customer"),
     pytest.param("a", "spa_day", "reward_key", id="unknown-reward")],
)
def test_redeem_unknown_customer_or_reward(service: CoreService, user: str, reward: str,
                                           field: str) -> None:
    service.ingest(SPACE, purchase("a", "t1"))
    with pytest.raises(NotFoundError) as raised:
        service.redeem(SPACE, user, reward, "r1")
    assert raised.value.field == field
