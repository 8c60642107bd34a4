"""The refusals Perkville documents (N4): too few points, a perk's redemption limit reached.

The sandbox answers them with the documented codes; the client raises them as a plain
``RequestRejected`` (no retry), and ``documented_refusal`` names them for the write-back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.perkville import PerkvilleClient, RequestRejected
from connectors.perkville.errors import DOCUMENTED_REFUSALS, documented_refusal
from connectors.perkville.sandbox import Sandbox, SandboxError

BUSINESS = 25
ROOT = Path(__file__).resolve().parents[3]
CODE = re.compile(r"\bpv_[a-z_]+\b")
AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(seed=1, members=4, transactions=0) as sandbox:
        yield sandbox


def _perks(box: Sandbox) -> tuple[int, dict[str, Any]]:
    """The purchase perk (10 points per unit) and the cheapest REDEEM perk's record."""
    ids = box.ledger.businesses[BUSINESS].perk_ids
    return ids[1], box.ledger.perks[ids[4]]


def _rich_user(box: Sandbox, index: int = 0) -> int:
    earn, _ = _perks(box)
    user = sorted(box.true_balances(BUSINESS))[index]
    box.add_transaction(perk=earn, user=user, points=10_000, transaction_dt=AT - timedelta(days=400))
    return user


def _limit(perk: dict[str, Any], count: int, interval: Any, every: int | None = 1) -> None:
    perk.update(redemption_limit_count=count, redemption_limit_interval=interval,
                redemption_limit_interval_count=every)


def _redeem(box: Sandbox, perk: dict[str, Any], user: int, at: datetime, quantity: int = 1) -> dict[str, Any]:
    return box.add_transaction(perk=perk["perk_id"], user=user, transaction_dt=at, quantity=quantity)


def _refused_code(box: Sandbox, perk: dict[str, Any], user: int, at: datetime, quantity: int = 1) -> str:
    with pytest.raises(SandboxError) as raised:
        _redeem(box, perk, user, at, quantity)
    return raised.value.code


def test_too_few_points_answers_the_documented_code_and_the_client_does_not_retry(box: Sandbox) -> None:
    _, reward = _perks(box)
    user = sorted(box.true_balances(BUSINESS))[0]
    assert box.true_balances(BUSINESS)[user] < reward["points"]
    with PerkvilleClient(**box.client_kwargs(), requests_per_second=None) as client:
        client.authenticate()
        before = box.stats()["requests"]
        with pytest.raises(RequestRejected) as raised:
            client.award_points(perk=reward["perk_id"], user=user, trans_source_id="perkamo:poor")
    assert box.stats()["requests"] - before == 2  # one POST, not retried, and its read-back GET
    assert (raised.value.status, raised.value.error_code) == (400, "pv_txn_insufficient_points")
    assert documented_refusal(raised.value.body) == "pv_txn_insufficient_points"
    assert "pv_txn_insufficient_points" in str(raised.value)


def test_a_redemption_past_the_limit_answers_the_documented_code_over_http(box: Sandbox) -> None:
    _, reward = _perks(box)
    user = _rich_user(box)
    _limit(reward, 1, "DAY")
    with PerkvilleClient(**box.client_kwargs(), requests_per_second=None) as client:
        first = client.award_points(perk=reward["perk_id"], user=user, trans_source_id="perkamo:r1")
        client.authenticate()
        before = box.stats()["requests"]
        with pytest.raises(RequestRejected) as raised:
            client.award_points(perk=reward["perk_id"], user=user, trans_source_id="perkamo:r2")
    assert first.created
    assert box.stats()["requests"] - before == 2  # refused once, not retried; then read back once
    assert (raised.value.status, raised.value.error_code) == (400, "pv_perk_redemption_limit_reached")
    assert documented_refusal(raised.value.body) == "pv_perk_redemption_limit_reached"
    assert not raised.value.body["errors"].get("trans_source_id")  # never mistaken for a duplicate


@pytest.mark.parametrize(
    ("interval", "every", "inside", "outside"),
    [
        ("DAY", 1, timedelta(hours=23), timedelta(days=1)),
        ("WEEK", 2, timedelta(days=13), timedelta(days=14)),
        ("MONTH", 1, timedelta(days=29), timedelta(days=30)),
        ("YEAR", 1, timedelta(days=364), timedelta(days=365)),
    ],
)
def test_the_limit_counts_redemptions_within_the_interval(
    box: Sandbox, interval: str, every: int, inside: timedelta, outside: timedelta
) -> None:
    _, reward = _perks(box)
    user = _rich_user(box)
    _limit(reward, 2, interval, every)
    _redeem(box, reward, user, AT)
    _redeem(box, reward, user, AT + timedelta(minutes=1))
    assert _refused_code(box, reward, user, AT + inside) == "pv_perk_redemption_limit_reached"
    _redeem(box, reward, user, AT + outside)  # the first one has just left the window
    assert _refused_code(box, reward, user, AT + outside) == "pv_perk_redemption_limit_reached"


def test_a_voided_redemption_frees_its_place_and_other_customers_are_not_counted(box: Sandbox) -> None:
    _, reward = _perks(box)
    user, other = _rich_user(box, 0), _rich_user(box, 1)
    _limit(reward, 1, "WEEK")
    row = _redeem(box, reward, user, AT)
    _redeem(box, reward, other, AT)
    assert _refused_code(box, reward, user, AT + timedelta(hours=1)) == "pv_perk_redemption_limit_reached"
    box.void_transaction(row["transaction_id"], at=AT + timedelta(hours=2))
    _redeem(box, reward, user, AT + timedelta(hours=3))


@pytest.mark.parametrize("interval", [None, "LIFETIME", 3], ids=["none", "lifetime", "integer"])
def test_a_limit_without_a_known_interval_counts_the_whole_history(box: Sandbox, interval: Any) -> None:
    _, reward = _perks(box)
    user = _rich_user(box)
    _limit(reward, 1, interval, None)
    _redeem(box, reward, user, AT - timedelta(days=300))
    assert _refused_code(box, reward, user, AT) == "pv_perk_redemption_limit_reached"


def test_the_limit_counts_quantities_and_unlimited_perks_are_unaffected(box: Sandbox) -> None:
    earn, reward = _perks(box)
    user = _rich_user(box)
    _limit(reward, 2, "DAY")
    assert _refused_code(box, reward, user, AT, quantity=3) == "pv_perk_redemption_limit_reached"
    _redeem(box, reward, user, AT, quantity=2)
    _limit(reward, 0, None)  # no limit
    for minute in range(3):
        _redeem(box, reward, user, AT + timedelta(minutes=minute))
    _limit(box.ledger.perks[earn], 1, "DAY")  # limits are a REDEEM perk's: earning is not limited
    for minute in range(2):
        box.add_transaction(perk=earn, user=user, transaction_dt=AT + timedelta(minutes=minute))


def test_the_limit_is_checked_before_the_balance(box: Sandbox) -> None:
    _, reward = _perks(box)
    user = _rich_user(box)
    _limit(reward, 1, "DAY")
    _redeem(box, reward, user, AT, quantity=1)
    with box.ledger.lock:
        box.ledger.aggregates[box.ledger.conn_by_user[(BUSINESS, user)]].balance = 0
    assert _refused_code(box, reward, user, AT + timedelta(hours=1)) == "pv_perk_redemption_limit_reached"
    assert _refused_code(box, reward, user, AT + timedelta(days=2)) == "pv_txn_insufficient_points"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"errors": {"points": [{"code": "pv_txn_insufficient_points"}]}}, "pv_txn_insufficient_points"),
        ({"errors": {"__all__": [{"code": "pv_perk_redemption_limit_reached", "message": "x"}]}},
         "pv_perk_redemption_limit_reached"),
        ({"errors": {"perk": "pv_perk_redemption_limit_reached"}}, "pv_perk_redemption_limit_reached"),
        ({"error": "pv_txn_insufficient_points"}, "pv_txn_insufficient_points"),
        ({"code": "pv_perk_redemption_limit_reached"}, "pv_perk_redemption_limit_reached"),
        ({"errors": {"a": [{"code": "pv_invented"}], "b": [{"code": "pv_txn_insufficient_points"}]}},
         "pv_txn_insufficient_points"),
        ({"errors": {"trans_source_id": [{"code": "pv_duplicate_trans_source_id"}]}}, None),
        ({"errors": {"points": [{"code": "pv_insufficient_points"}]}}, None),  # the sandbox's old invention
        ({"error_message": "insufficient points"}, None),
        (None, None),
        ("pv_txn_insufficient_points", None),
        ([{"code": "pv_txn_insufficient_points"}], None),
    ],
)
def test_documented_refusal_reads_the_documented_codes_only(body: Any, expected: str | None) -> None:
    assert documented_refusal(body) == expected
    assert expected is None or expected in DOCUMENTED_REFUSALS


def test_every_code_the_sandbox_answers_is_documented_or_listed_as_invented() -> None:
    sandbox_codes = {
        code for path in (ROOT / "connectors/perkville/sandbox").glob("*.py")
        for code in CODE.findall(path.read_text("utf-8"))
    }
    docs = (ROOT / "docs/perkville.md").read_text("utf-8")
    invented_section = docs[docs.index("Every other code is **invented by the sandbox**"):]
    invented_section = invented_section[: invented_section.index("**Behaviours**")]
    invented = set(CODE.findall(invented_section)) - {"pv_connection_membership_not_active"}
    assert set(DOCUMENTED_REFUSALS) <= sandbox_codes
    assert sandbox_codes - set(DOCUMENTED_REFUSALS) == invented
    # Nothing outside the sandbox keys logic on an invented code.
    for package in ("connectors", "bridge", "mapping"):
        for path in (ROOT / package).rglob("*.py"):
            if "sandbox" in path.parts:
                continue
            assert not set(CODE.findall(path.read_text("utf-8"))) & invented, path
