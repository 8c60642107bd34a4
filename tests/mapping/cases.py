"""Loads the JSON fixture tables under ``tests/mapping/fixtures`` as pytest params named by case id."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict[str, Any]:
    """The whole fixture file ``name`` (without ``.json``)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def params(name: str, section: str = "cases") -> list[Any]:
    """One ``pytest.param`` per case of ``section``, with the case's ``id``."""
    cases = load(name)[section]
    ids = [case["id"] for case in cases]
    assert len(ids) == len(set(ids)), f"duplicate case ids in {name}.json"
    return [pytest.param(case, id=case["id"]) for case in cases]


def expand(text: Any) -> Any:
    """``"prefixLEN:n"`` stands for the prefix plus n ``x`` characters (fixtures stay readable)."""
    if isinstance(text, str) and "LEN:" in text:
        prefix, _, count = text.partition("LEN:")
        return prefix + "x" * int(count)
    return text


def plain(value: Any) -> Any:
    """Record/context values in fixture terms: Decimal → str, date/datetime → ISO."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def assert_issues(actual: list[Any], expected: list[dict[str, Any]]) -> None:
    """Each expected issue (field, severity, reason substring) matches one actual issue, in order."""
    assert len(actual) == len(expected), [i.model_dump(exclude={"raw"}) for i in actual]
    for issue, want in zip(actual, expected):
        assert issue.field == want["field"], issue
        if "severity" in want:
            assert issue.severity == want["severity"], issue
        if "reason" in want:
            assert want["reason"] in issue.reason, issue
        assert issue.reason
