"""Writes: awarding points idempotently, external member upserts, connection status."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import httpx
import pytest
import respx

from connectors.perkville import ConfigurationError, RequestRejected

from .conftest import API, FakeTime, make_client, page, token_route

TXNS = API + "transactions/"
EXT = API + "external-members/"


def test_award_points_posts_the_documented_fields(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    route = router.post(TXNS).mock(return_value=httpx.Response(201, json={"transaction_id": 9, "points": 10}))
    client = make_client(router, fake_time)
    result = client.award_points(
        perk=7788,
        user=3106882,
        location=311,
        quantity=2,
        trans_source_id="perkamo:evt-1",
        limit_to_once_per_calendar_day=True,
        transaction_dt=datetime(2024, 5, 2, 18, 14, 9, tzinfo=UTC),
    )
    assert (
        result.created and not result.duplicate and result.transaction == {"transaction_id": 9, "points": 10}
    )
    body = json.loads(route.calls.last.request.content)
    assert body == {
        "perk": "/v2/perks/7788/",
        "user": "/v2/users/3106882/",
        "location": "/v2/locations/311/",
        "quantity": 2,
        "trans_source_id": "perkamo:evt-1",
        "limit_to_once_per_calendar_day": True,
        "transaction_dt": "2024-05-02T18:14:09",
    }


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(
            400,
            json={
                "error_type": "validation_error",
                "errors": {
                    "trans_source_id": [{"code": "pv_duplicate_trans_source_id", "message": "exists"}]
                },
            },
        ),
        httpx.Response(409, json={"detail": "conflict"}),
        httpx.Response(
            400,
            json={
                "errors": {
                    "__all__": [
                        {
                            "code": "pv_validation",
                            "message": "Transaction with this trans_source_id already exists.",
                        }
                    ]
                }
            },
        ),
    ],
    ids=["field-error", "409", "all-error-message"],
)
def test_duplicate_trans_source_id_is_an_idempotent_success(
    router: respx.MockRouter, fake_time: FakeTime, response: httpx.Response
) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=response)
    client = make_client(router, fake_time)
    result = client.award_points(perk=1, email="dana@example.com", trans_source_id="perkamo:evt-1")
    assert result.duplicate and not result.created


def test_retried_award_after_a_dropped_response_ends_as_duplicate(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    route = router.post(TXNS).mock(
        side_effect=[
            httpx.RemoteProtocolError("server disconnected"),
            httpx.Response(
                400, json={"errors": {"trans_source_id": [{"code": "pv_duplicate_trans_source_id"}]}}
            ),
        ]
    )
    client = make_client(router, fake_time)
    assert client.award_points(perk=1, user=2, trans_source_id="perkamo:evt-2").duplicate
    assert route.call_count == 2


def test_once_per_day_refusal_is_reported(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.post(TXNS).mock(
        return_value=httpx.Response(
            400, json={"errors": {"limit_to_once_per_calendar_day": [{"code": "pv_once_per_calendar_day"}]}}
        )
    )
    client = make_client(router, fake_time)
    result = client.award_points(perk=1, user=2, trans_source_id="t", limit_to_once_per_calendar_day=True)
    assert result.limited and not result.created and not result.duplicate


def test_other_rejections_raise(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.post(TXNS).mock(
        return_value=httpx.Response(400, json={"errors": {"perk": [{"code": "pv_perk_not_active"}]}})
    )
    client = make_client(router, fake_time)
    with pytest.raises(RequestRejected) as info:
        client.award_points(perk=1, user=2, trans_source_id="t")
    assert info.value.error_code == "pv_perk_not_active" and info.value.status == 400


@pytest.mark.parametrize(
    "kwargs",
    [{"perk": 1, "user": 2, "trans_source_id": ""}, {"perk": 1, "trans_source_id": "x"}],
    ids=["no-trans-source-id", "no-customer"],
)
def test_award_points_argument_checks(
    router: respx.MockRouter, fake_time: FakeTime, kwargs: dict[str, object]
) -> None:
    # No routes: the strict router fails the test if anything is sent.
    client = make_client(router, fake_time)
    with pytest.raises(ConfigurationError):
        client.award_points(**kwargs)  # type: ignore[arg-type]


def test_upsert_external_member_post_and_patch(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    post = router.post(EXT).mock(return_value=httpx.Response(201, json={"external_member_id": 5}))
    patch = router.patch(EXT + "5/").mock(return_value=httpx.Response(200, json={"external_member_id": 5}))
    client = make_client(router, fake_time)
    member = {
        "business": "/v2/businesses/25/",
        "system_id": "POS",
        "member_id": "M-1",
        "membership_status": "ACTIVE",
    }
    assert client.upsert_external_member(member) == {"external_member_id": 5}
    assert client.upsert_external_member({"membership_status": "INACTIVE"}, external_member_id=5) == {
        "external_member_id": 5
    }
    assert json.loads(post.calls.last.request.content) == member
    assert json.loads(patch.calls.last.request.content) == {"membership_status": "INACTIVE"}


def test_missing_external_member_api_disables_the_feature_with_one_warning(
    router: respx.MockRouter, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    token_route(router)
    listing = router.get(EXT).mock(return_value=httpx.Response(404, json={"error": "not_found"}))
    client = make_client(router, fake_time)
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"):
        assert list(client.iter_external_members(business=25)) == []
        assert list(client.iter_external_members(business=25)) == []
        assert client.upsert_external_member({"member_id": "M-1"}) is None
    assert listing.call_count == 1
    assert client.external_members_enabled is False
    assert caplog.text.count("External Member API is not available") == 1


def test_external_member_listing_yields_pages(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(EXT).mock(return_value=httpx.Response(200, json=page([{"external_member_id": 1}], next=None)))
    client = make_client(router, fake_time)
    assert [p.objects for p in client.iter_external_members(25)] == [[{"external_member_id": 1}]]


@pytest.mark.parametrize("status", ["ACTIVE", "inactive"], ids=["join", "leave-lowercase"])
def test_update_connection_status(router: respx.MockRouter, fake_time: FakeTime, status: str) -> None:
    token_route(router)
    route = router.patch(API + "connections/987654/").mock(
        return_value=httpx.Response(202, json={"status": status.upper()})
    )
    client = make_client(router, fake_time)
    assert client.update_connection_status("/v2/connections/987654/", status) == {"status": status.upper()}
    assert json.loads(route.calls.last.request.content) == {"status": status.upper()}


def test_update_connection_status_accepts_only_documented_values(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    client = make_client(router, fake_time)
    with pytest.raises(ConfigurationError, match="ACTIVE or INACTIVE"):
        client.update_connection_status(1, "PENDING")
