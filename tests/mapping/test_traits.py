"""Table-driven tests of traits and identify calls from ``fixtures/traits.json``."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mapping import (
    PII_TRAITS,
    RESERVED_CONTEXT_KEYS,
    TRAIT_KEYS,
    MappingConfigError,
    parse_location,
    to_identify,
    to_traits,
)
from tests.mapping.cases import load, params


def _locations(raw: list[dict[str, Any]]) -> dict[str, Any]:
    records = [parse_location(item).record for item in raw]
    return {r.location_id: r for r in records if r is not None}


@pytest.mark.parametrize("case", params("traits"))
def test_identify(case: dict[str, Any]) -> None:
    data = copy.deepcopy(load("traits"))
    use = case["use"]
    connection = dict(data["connection"], **case.get("connection_set", {})) if "connection" in use else None
    deny = PII_TRAITS if case.get("deny") == "PII" else case.get("deny")
    result = to_identify(
        data["user"] if "user" in use else None,
        connection=connection,
        external_member=data["external_member"] if "external_member" in use else None,
        locations=_locations(data["locations"]) if "locations" in use else None,
        strategy=case.get("strategy", "perkville_user"),
        allow=case.get("allow"),
        deny=deny,
    )
    expect = case["expect"]
    if "error" in expect:
        assert result.call is None and not result.ok
        assert result.issues[-1].field == expect["error"] and result.issues[-1].severity == "error"
        return
    assert result.call is not None and result.entry is not None
    assert result.call.user_id == expect["user_id"]
    assert result.call.traits == expect["traits"]
    assert list(result.call.traits) == [k for k in TRAIT_KEYS if k in result.call.traits]
    assert result.call.perkville_user_id == "3106882"
    assert result.entry.customer_id == result.call.user_id
    if "entry_source" in expect:
        assert result.entry.source == expect["entry_source"]
    assert [i.field for i in result.issues] == expect.get("warnings", [])


def test_no_trait_key_is_reserved() -> None:
    assert not {k.lower() for k in TRAIT_KEYS} & RESERVED_CONTEXT_KEYS
    assert "perkville_level" in TRAIT_KEYS and "level" not in TRAIT_KEYS


@pytest.mark.parametrize(
    "allow, deny",
    [
        pytest.param(["level"], None, id="reserved-name-in-allow"),
        pytest.param(None, ["emial"], id="typo-in-deny"),
        pytest.param("email", None, id="string-not-list"),
    ],
)
def test_bad_allow_deny_is_config_error(allow: Any, deny: Any) -> None:
    with pytest.raises(MappingConfigError):
        to_traits(None, allow=allow, deny=deny)


def test_nothing_to_identify_is_an_issue() -> None:
    result = to_identify(None)
    assert result.call is None and result.issues[0].field == "user_id"
