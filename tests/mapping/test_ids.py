"""Table-driven tests of the transaction-id and customer-id rules (ARCHITECTURE §4)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from mapping import (
    IdMapEntry,
    MappingConfigError,
    MappingIssue,
    find_id_collisions,
    parse_transaction_id,
    to_adjustment_transaction_id,
    to_customer_id,
    to_opening_transaction_id,
    to_transaction_id,
    to_void_transaction_id,
)
from tests.mapping.cases import expand, params


def _make(case: dict[str, Any]) -> str:
    key = expand(case["key"])
    kind = case["kind"]
    if kind == "row":
        source = case.get("source")
        return to_transaction_id(case["business"], key, expand(source) if source is not None else None)
    if kind == "void":
        return to_void_transaction_id(case["business"], key)
    if kind == "opening":
        return to_opening_transaction_id(case["business"], key)
    return to_adjustment_transaction_id(case["business"], key, case["n"])


@pytest.mark.parametrize("case", params("transaction_ids"))
def test_transaction_id(case: dict[str, Any]) -> None:
    made = _make(case)
    expect = case["expect"]
    assert len(made) <= 256
    if isinstance(expect, str):
        assert made == expect
        return
    if "length" in expect:
        assert len(made) == expect["length"]
    parts = parse_transaction_id(made)
    assert parts is not None
    assert (parts.namespace == "h") is expect["hashed"]


def test_hash_covers_the_whole_unhashed_id() -> None:
    """The digest is of the full un-hashed id, so business and namespace are inside it."""
    key = "x" * 300
    digest = hashlib.sha256(f"perkville:25:txn:{key}".encode()).hexdigest()
    assert to_transaction_id(25, key) == f"perkville:25:h:{digest}"
    assert to_void_transaction_id(25, key) != to_transaction_id(25, key)
    assert to_transaction_id(26, key) != to_transaction_id(25, key)


@pytest.mark.parametrize(
    "made, parts",
    [
        pytest.param("perkville:25:txn:1", ("25", "txn", "1", None), id="txn"),
        pytest.param("perkville:25:src:a:b:c", ("25", "src", "a:b:c", None), id="src-with-colons"),
        pytest.param("perkville:25:adjust:u:1:12", ("25", "adjust", "u:1", 12), id="adjust-last-field-is-n"),
        pytest.param("perkville:25:adjust:u:01", None, id="adjust-n-not-canonical"),
        pytest.param("perkville:25:bogus:1", None, id="unknown-namespace"),
        pytest.param("tx_1", None, id="not-perkville"),
        pytest.param("perkville:25:h:abc", None, id="h-with-bad-digest"),
    ],
)
def test_parse_transaction_id(made: str, parts: tuple[Any, ...] | None) -> None:
    assert parse_transaction_id(made) == parts


@pytest.mark.parametrize(
    "business", [pytest.param("", id="empty"), pytest.param("x" * 65, id="too-long"), pytest.param(True, id="bool")]
)
def test_bad_business_is_config_error(business: Any) -> None:
    with pytest.raises(MappingConfigError):
        to_transaction_id(business, "1")


def test_bad_adjustment_number_is_config_error() -> None:
    with pytest.raises(MappingConfigError):
        to_adjustment_transaction_id(25, "1", -1)


@pytest.mark.parametrize("case", params("customer_ids"))
def test_customer_id(case: dict[str, Any]) -> None:
    result = to_customer_id(
        expand(case["user"]),
        strategy=case.get("strategy", "perkville_user"),
        member_id=expand(case.get("member_id")),
        email=case.get("email"),
    )
    expect = case["expect"]
    if "error" in expect:
        assert isinstance(result, MappingIssue) and result.field == expect["error"]
        return
    assert not isinstance(result, MappingIssue)
    assert result.customer_id == expect["customer_id"]
    assert result.entry.customer_id == result.customer_id
    assert result.entry.perkville_user_id == expand(case["user"])
    assert result.entry.strategy == case.get("strategy", "perkville_user")
    assert result.entry.source == expect["source"]
    if "note" in expect:
        assert result.entry.note is not None and expect["note"] in result.entry.note
    assert [i.field for i in result.issues] == expect["warnings"]
    assert all(i.severity == "warning" for i in result.issues)


def test_unknown_strategy_is_config_error() -> None:
    with pytest.raises(MappingConfigError):
        to_customer_id("1", strategy="phone")  # type: ignore[arg-type]


def test_id_collisions_are_reported() -> None:
    entries = [
        IdMapEntry(customer_id="a@b.c", perkville_user_id="1", strategy="email", source="email", source_value="a@b.c"),
        IdMapEntry(customer_id="a@b.c", perkville_user_id="1", strategy="email", source="email", source_value="a@b.c"),
        IdMapEntry(customer_id="a@b.c", perkville_user_id="2", strategy="email", source="email", source_value="a@b.c"),
    ]
    issues = find_id_collisions(entries)
    assert [i.record_id for i in issues] == ["2"]
    assert "perkville user 1" in issues[0].reason
