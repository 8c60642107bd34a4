"""Table-driven tests of the lenient record parsers and datetime reading."""

from __future__ import annotations

from typing import Any

import pytest

from mapping import (
    MappingConfigError,
    parse_business,
    parse_connection,
    parse_external_member,
    parse_location,
    parse_perk,
    parse_transaction,
    parse_user,
)
from mapping._coerce import Invalid, resolve_timezone, to_datetime
from tests.mapping.cases import assert_issues, params, plain

PARSERS = {
    "business": parse_business,
    "location": parse_location,
    "perk": parse_perk,
    "user": parse_user,
    "connection": parse_connection,
    "transaction": parse_transaction,
    "external_member": parse_external_member,
}


@pytest.mark.parametrize("case", params("records"))
def test_parse(case: dict[str, Any]) -> None:
    parsed = PARSERS[case["kind"]](case["raw"], timezone=case.get("timezone", "UTC"))
    assert_issues(parsed.issues, case.get("issues", []))
    if case["expect"] is None:
        assert parsed.record is None and not parsed.ok
        assert parsed.issues and parsed.issues[0].raw == case["raw"]
        return
    record = parsed.record
    assert record is not None
    for field, value in case["expect"].items():
        assert plain(getattr(record, field)) == value, field
    for field, value in case.get("extra", {}).items():
        assert record.extra[field] == value
    assert record.raw == case["raw"]


@pytest.mark.parametrize("case", params("datetimes"))
def test_datetime(case: dict[str, Any]) -> None:
    zone = resolve_timezone(case["timezone"])
    if case["expect"] is None:
        with pytest.raises(Invalid):
            to_datetime(case["value"], zone)
        return
    moment = to_datetime(case["value"], zone)
    assert moment.isoformat() == case["expect"]


@pytest.mark.parametrize("zone", [pytest.param("Mars/Olympus", id="unknown"), pytest.param("", id="empty")])
def test_unknown_timezone_is_config_error(zone: str) -> None:
    with pytest.raises(MappingConfigError):
        parse_user({"user_id": 1}, timezone=zone)
