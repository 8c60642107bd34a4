"""``perkbridge probe``: ask a business's Perkville API what no public document says.

Read-only unless ``write_test`` names a perk. A handful of requests: the token, the schema
endpoints (one, or one per resource), the business's locations and connections (every page: the
reach check needs them all), one page of transactions and one of external members.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.probe.assumptions import Assumption, judge
from bridge.probe.reach import assess, referenced_locations
from connectors.perkville.client import PerkvilleClient
from connectors.perkville.duplicates import RecordedAnswer
from connectors.perkville.errors import PerkvilleHTTPError, RetryBudgetExhausted
from connectors.perkville.schema import discover

RESOURCES = ("businesses", "locations", "perks", "users", "connections", "transactions", "external-members")
PROBE_PREFIX = "perkbridge-probe:"


@dataclass(frozen=True)
class WriteTest:
    """Award ``perk`` twice with one ``trans_source_id`` (to ``customer``'s email, else the staff's own)."""

    perk: str
    customer: str | None = None


@dataclass(frozen=True)
class ProbeReport:
    findings: Mapping[str, Any]
    table: list[Assumption]

    def to_json(self) -> dict[str, Any]:
        return {**self.findings, "assumptions": [row.to_json() for row in self.table]}


def probe(
    client: PerkvilleClient,
    business: str,
    *,
    expected_locations: int | None = None,
    write_test: WriteTest | None = None,
    is_duplicate: Any = None,
) -> ProbeReport:
    """Probe ``business``; ``is_duplicate(status, body)`` judges the write test's second answer."""
    granted = client.authenticate()
    findings: dict[str, Any] = {
        "business": business,
        "scopes": sorted(granted) if granted is not None else None,
    }
    paths = {"external-members": client.external_members_path}
    findings["schema"] = discover(client, RESOURCES, paths).to_json()
    first = client.request("GET", "transactions/", params={"business": business, "limit": 1000})
    meta = first.get("meta") if isinstance(first, Mapping) else None
    rows = list(first.get("objects") or []) if isinstance(first, Mapping) else []
    findings["paging"] = {
        "limit": meta.get("limit") if isinstance(meta, Mapping) else None,
        "total_count": meta.get("total_count") if isinstance(meta, Mapping) else None,
        "next": "present" if isinstance(meta, Mapping) and "next" in meta else "absent",
    }
    findings["transactions_have"] = sorted({key for row in rows[:50] for key in row})
    listed = [
        row.get("location_id") or row.get("resource_uri")
        for page in client.iter_locations(business)
        for row in page.objects
    ]
    referenced: Counter[str] = referenced_locations(rows)
    connections = 0
    for page in client.iter_connections(business):
        connections += len(page.objects)
        referenced.update(referenced_locations(page.objects))
    reach = assess(listed, referenced, expected_locations=expected_locations)
    findings["reach"] = {**reach.to_json(), "connections": connections}
    for _page in client.iter_external_members(business):
        break  # one page tells whether the endpoint exists (404: the client disables it)
    findings["external_members"] = client.external_members_enabled
    if write_test is not None:
        findings["write_test"] = _write_test(client, business, write_test, is_duplicate)
    return ProbeReport(findings, judge(findings))


def _write_test(client: PerkvilleClient, business: str, test: WriteTest, is_duplicate: Any) -> dict[str, Any]:
    email = test.customer
    if email is None:
        me = client.request("GET", "users/me/")
        emails = me.get("emails") if isinstance(me, Mapping) else None
        email = (emails or [{}])[0].get("email") if isinstance(emails, list) else None
    source_id = f"{PROBE_PREFIX}{business}:{test.perk}:{int(time.time())}"
    body = {
        "business": business,
        "perk": test.perk,
        "user__emails__email": email,
        "quantity": 1,
        "trans_source_id": source_id,
    }
    answers = [_answer(client, body) for _ in range(2)]
    second = answers[1]
    recognised = bool(
        second["status"] != "2xx"
        and is_duplicate is not None
        and is_duplicate(second["status"], second["body"])
    )
    # How many rows carry the id now: 1 is idempotent whatever the second answer said, 2 is a
    # double award (None: the filter is not usable, or the read failed).
    try:
        found = client.request(
            "GET", "transactions/", params={"business": business, "trans_source_id": source_id}
        )
        objects = found.get("objects") if isinstance(found, Mapping) else None
        rows = (
            None if objects is None else sum(1 for row in objects if row.get("trans_source_id") == source_id)
        )
    except PerkvilleHTTPError:
        rows = None
    return {
        "trans_source_id": source_id,
        "perk": test.perk,
        "first": answers[0],
        "second": second,
        "rows_with_id": rows,
        "duplicate_recognised": recognised,
    }


def _answer(client: PerkvilleClient, body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return {"status": "2xx", "body": client.request("POST", "transactions/", body=body)}
    except PerkvilleHTTPError as exc:
        return {"status": exc.status, "body": exc.body}
    except RetryBudgetExhausted as exc:
        # E.g. Tastypie's canned 500 for a duplicate: no answer to record, rows_with_id decides.
        return {"status": "unanswered", "body": None, "last_error": exc.last_error}


def recorded_duplicate_answer(report: Mapping[str, Any]) -> RecordedAnswer | None:
    """The duplicate answer a probe's write test recorded, for write-back's client; None when the
    report has none usable.

    Only a refusal (a 4xx) of the second award, after a first one that succeeded and with the id
    on one row at most, is Perkville's answer to a repeated ``trans_source_id``; a 2xx second
    answer (idempotent or a double award), a 5xx or no answer teach nothing to match on.
    """
    test = report.get("write_test")
    if not isinstance(test, Mapping):
        return None
    first, second = test.get("first"), test.get("second")
    if not isinstance(first, Mapping) or not isinstance(second, Mapping) or first.get("status") != "2xx":
        return None
    status = second.get("status")
    rows = test.get("rows_with_id")
    if not isinstance(status, int) or not 400 <= status < 500 or (isinstance(rows, int) and rows > 1):
        return None
    source_id = test.get("trans_source_id")
    return RecordedAnswer(status, second.get("body"), source_id if isinstance(source_id, str) else None)
