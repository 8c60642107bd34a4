"""Tastypie's discovery endpoints: the sandbox serves them, the connector reads them tolerantly."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from connectors.perkville.schema import ApiSchema, discover, parse_resource_schema, split_filter

RESOURCES = ("locations", "users", "connections", "transactions", "external-members")


@pytest.fixture
def box() -> Any:
    with Sandbox(seed=5, members=12, transactions=120) as sandbox:
        yield sandbox


def _client(box: Sandbox) -> PerkvilleClient:
    return PerkvilleClient(**box.client_kwargs(), requests_per_second=None, backoff_base=0.01, max_retries=2)


class _Counting:
    """A client wrapper that records the paths asked for."""

    def __init__(self, client: PerkvilleClient) -> None:
        self.client = client
        self.paths: list[str] = []

    def request(self, method: str, path: str, *, params: Any = None) -> Any:
        self.paths.append(path)
        return self.client.request(method, path, params=params)


def test_fullschema_is_read_in_one_request(box: Sandbox) -> None:
    client = _Counting(_client(box))
    schema = discover(client, RESOURCES)
    assert schema.how == "fullschema" and client.paths == [""]
    transactions = schema.of("transactions")
    assert transactions is not None
    assert transactions.allows_filter("last_mod_dt__gte") and transactions.allows_filter("trans_source_id")
    assert not transactions.allows_filter("points__gte")
    assert transactions.allows_ordering("-transaction_dt") and transactions.max_limit == 1000
    assert ApiSchema.from_json(schema.to_json()) == schema  # what the state database keeps


def test_per_resource_schema_when_the_top_level_is_not_served(box: Sandbox) -> None:
    client = _client(box)
    original = client.request

    def no_top_level(method: str, path: str, **kwargs: Any) -> Any:
        if path == "":
            from connectors.perkville.errors import NotFound

            raise NotFound("GET /v2/: not found", status=404, path="/v2/")
        return original(method, path, **kwargs)

    client.request = no_top_level  # type: ignore[method-assign]
    schema = discover(client, RESOURCES)
    assert schema.how == "per-resource"
    assert all(schema.of(r) is not None for r in RESOURCES)


def test_no_schema_endpoints_is_not_an_error(box: Sandbox) -> None:
    box.set_behaviour(schema_endpoints=False)
    schema = discover(_client(box), RESOURCES)
    assert schema.how == "none" and schema.allows_filter("transactions", "last_mod_dt__gte") is None


def test_hidden_last_mod_dt_leaves_the_schema_and_the_rows(box: Sandbox) -> None:
    box.set_behaviour(hidden_transaction_fields=["last_mod_dt"], unknown_filters="ignore")
    schema = discover(_client(box), RESOURCES)
    assert schema.allows_filter("transactions", "last_mod_dt__gte") is False
    headers = {"Authorization": f"Bearer {box.issue_token()}"}
    page = httpx.get(
        box.api_url + "transactions/", params={"last_mod_dt__gte": "2099-01-01T00:00:00", "limit": 0},
        headers=headers,
    ).json()
    assert len(page["objects"]) == 120  # Tastypie ignores a filter on a field it does not know
    assert all("last_mod_dt" not in row for row in page["objects"])


def test_unknown_filters_are_rejected_by_default_and_ignored_when_asked(box: Sandbox) -> None:
    headers = {"Authorization": f"Bearer {box.issue_token()}"}
    url = box.api_url + "transactions/"
    assert httpx.get(url, params={"no_such_field": "1"}, headers=headers).status_code == 400
    box.set_behaviour(unknown_filters="ignore")
    answer = httpx.get(url, params={"no_such_field": "1", "limit": 0}, headers=headers)
    assert answer.status_code == 200 and answer.json()["meta"]["total_count"] == 120


def test_a_limited_staff_account_sees_its_locations_customers_only(box: Sandbox) -> None:
    business = box.ledger.businesses[box.business_ids[0]]
    home = business.location_ids[0]
    box.set_behaviour(staff_locations=[home])
    headers = {"Authorization": f"Bearer {box.issue_token()}"}

    def rows(resource: str) -> list[dict[str, Any]]:
        answer = httpx.get(box.api_url + f"{resource}/", params={"limit": 0}, headers=headers)
        return list(answer.json()["objects"])

    assert [row["location_id"] for row in rows("locations")] == [home]
    connections = rows("connections")
    assert connections and all(row["home_location"] == f"/v2/locations/{home}/" for row in connections)
    visible = {row["resource_uri"] for row in connections}
    assert all(row["connection"] in visible for row in rows("transactions"))
    assert len(connections) < len(business.connection_ids)


def test_schema_parsing_is_tolerant() -> None:
    parsed = parse_resource_schema(
        {"fields": {"a": {"type": "integer"}, "b": "odd"}, "filtering": {"a": 1, "b": ["exact"], "c": "ALL"}}
    )
    assert parsed is not None
    assert parsed.allows_filter("a__gte") and parsed.allows_filter("b") and not parsed.allows_filter("b__gte")
    assert parsed.allows_filter("c__in") and parsed.fields["b"] == "unknown"
    assert parse_resource_schema({"error": "nope"}) is None
    assert parse_resource_schema("<html>") is None
    assert split_filter("user__emails__email") == ("user__emails__email", "exact")
    assert split_filter("transaction_dt__lt") == ("transaction_dt", "lt")


def test_external_members_are_keyed_by_a_neutral_id(box: Sandbox) -> None:
    with _client(box) as client:
        fields = client.request("GET", "external-members/schema/")["fields"]
    assert fields["id"]["unique"] is True and fields["resource_uri"]["readonly"] is True
    assert fields["external_member_id"]["unique"] is False  # the external system's member id
