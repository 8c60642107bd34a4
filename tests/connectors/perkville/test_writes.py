"""Writes: awarding points idempotently, external member upserts, connection status."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from connectors.perkville import (
    ConfigurationError,
    PerkvilleClient,
    RecordedAnswer,
    RequestRejected,
    RetryBudgetExhausted,
)
from connectors.perkville.sandbox import Sandbox
from connectors.perkville.sandbox.answers import DJANGO_UNIQUE_MESSAGE, TASTYPIE_CANNED_ERROR

from .conftest import API, FakeTime, make_client, page, token_route

TXNS = API + "transactions/"
EXT = API + "external-members/"
BUSINESS = 25


def _read_back_route(
    router: respx.MockRouter, rows: list[dict[str, Any]], tsid: str | None = None
) -> respx.Route:
    """``GET transactions/?trans_source_id=…`` answering ``rows`` (whatever was asked)."""
    params = {"trans_source_id": tsid} if tsid is not None else None
    return router.get(TXNS, params=params).mock(return_value=httpx.Response(200, json=page(rows, next=None)))


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
    _read_back_route(router, [])
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
    read_back = _read_back_route(router, [])
    router.post(TXNS).mock(
        return_value=httpx.Response(400, json={"errors": {"perk": [{"code": "pv_perk_not_active"}]}})
    )
    client = make_client(router, fake_time)
    with pytest.raises(RequestRejected) as info:
        client.award_points(perk=1, user=2, trans_source_id="t")
    assert info.value.error_code == "pv_perk_not_active" and info.value.status == 400
    assert read_back.call_count == 1  # the row was looked for before giving up


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
    record = {"id": 5, "external_member_id": "M-1", "resource_uri": "/v2/external-members/5/"}
    post = router.post(EXT).mock(return_value=httpx.Response(201, json=record))
    patch = router.patch(EXT + "5/").mock(return_value=httpx.Response(200, json=record))
    client = make_client(router, fake_time)
    member = {
        "business": "/v2/businesses/25/",
        "system_id": "POS",
        "member_id": "M-1",
        "membership_status": "ACTIVE",
    }
    assert client.upsert_external_member(member) == record
    assert client.upsert_external_member(
        {"membership_status": "INACTIVE"}, resource_uri="/v2/external-members/5/"
    ) == (record)
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


# ----------------------------------------------------------------- duplicate shapes and the read-back
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400, json={"errors": {"__all__": [{"code": "pv_txn_duplicate"}]}}),
        httpx.Response(422, json={"errors": {"__all__": [{"code": "PV_TXN_DUPLICATE_TRANS_SOURCE_ID"}]}}),
        httpx.Response(400, json={"transactions": {"__all__": [DJANGO_UNIQUE_MESSAGE]}}),
        httpx.Response(400, json={"error": DJANGO_UNIQUE_MESSAGE}),
        httpx.Response(409),
    ],
    ids=["code-only", "code-only-422", "django-wording", "django-error-string", "409-empty"],
)
def test_more_duplicate_shapes_count_without_a_read_back(
    router: respx.MockRouter, fake_time: FakeTime, response: httpx.Response
) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=response)
    client = make_client(router, fake_time)  # strict router: a read-back GET would fail the test
    result = client.award_points(perk=1, user=2, trans_source_id="perkamo:evt-9")
    assert result.duplicate and not result.created and not result.read_back


def test_an_unrecognised_refusal_whose_row_is_there_counts_once(
    router: respx.MockRouter, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=httpx.Response(400, json={"error": "Bad request"}))
    row = {
        "transaction_id": 77,
        "trans_source_id": "perkamo:evt-3",
        "business": "/v2/businesses/25/",
        "resource_uri": "/v2/transactions/77/",
    }
    read_back = _read_back_route(router, [row], tsid="perkamo:evt-3")
    client = make_client(router, fake_time)
    with caplog.at_level(logging.INFO, logger="connectors.perkville"):
        result = client.award_points(perk=1, user=2, business=BUSINESS, trans_source_id="perkamo:evt-3")
    assert result.duplicate and result.read_back and result.resource_uri == "/v2/transactions/77/"
    request = read_back.calls.last.request
    assert dict(request.url.params) == {"trans_source_id": "perkamo:evt-3", "business": "25", "limit": "20"}
    assert "read back" in caplog.text and "tok-1" not in caplog.text


def test_a_500_after_every_retry_then_a_read_back_counts_once(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    post = router.post(TXNS).mock(
        return_value=httpx.Response(500, json={"error_message": TASTYPIE_CANNED_ERROR})
    )
    row = {"transaction_id": 78, "trans_source_id": "perkamo:evt-4", "business": "/v2/businesses/25/"}
    _read_back_route(router, [row], tsid="perkamo:evt-4")
    client = make_client(router, fake_time, max_retries=2)
    result = client.award_points(perk=1, user=2, business=BUSINESS, trans_source_id="perkamo:evt-4")
    assert result.duplicate and result.read_back and result.transaction == row
    assert post.call_count == 3


@pytest.mark.parametrize(
    "rows",
    [
        [
            {"transaction_id": 1, "trans_source_id": "someone-else"},
            {"transaction_id": 2, "trans_source_id": None},
        ],
        [{"transaction_id": 3, "trans_source_id": "perkamo:evt-5", "business": "/v2/businesses/99/"}],
        [],
    ],
    ids=["filter-ignored", "other-business", "no-row"],
)
def test_a_read_back_counts_only_our_own_row(
    router: respx.MockRouter, fake_time: FakeTime, rows: list[dict[str, Any]]
) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=httpx.Response(503))
    _read_back_route(router, rows)
    client = make_client(router, fake_time, max_retries=1)
    with pytest.raises(RetryBudgetExhausted):
        client.award_points(perk=1, user=2, business=BUSINESS, trans_source_id="perkamo:evt-5")


def test_a_failed_read_back_leaves_the_refusal_as_it_was(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=httpx.Response(400, json={"errors": {"perk": [{"code": "pv_x"}]}}))
    read_back = router.get(TXNS).mock(return_value=httpx.Response(502))
    client = make_client(router, fake_time, max_retries=6)
    with pytest.raises(RequestRejected):
        client.award_points(perk=1, user=2, trans_source_id="perkamo:evt-6")
    assert read_back.call_count == 3  # the read-back has its own small budget (2 retries)


@pytest.mark.parametrize(
    ("rows", "duplicate"),
    [([], False), ([{"transaction_id": 1, "trans_source_id": "other"}], True)],
    ids=["read-back-absent-raises", "read-back-unknown-trusts-the-answer"],
)
def test_a_code_that_only_names_trans_source_id_needs_the_read_back(
    router: respx.MockRouter, fake_time: FakeTime, rows: list[dict[str, Any]], duplicate: bool
) -> None:
    token_route(router)
    router.post(TXNS).mock(
        return_value=httpx.Response(400, json={"errors": {"__all__": [{"code": "pv_txn_trans_source_id"}]}})
    )
    _read_back_route(router, rows)
    client = make_client(router, fake_time)
    if duplicate:
        assert client.award_points(perk=1, user=2, trans_source_id="perkamo:evt-7").duplicate
    else:
        with pytest.raises(RequestRejected):
            client.award_points(perk=1, user=2, trans_source_id="perkamo:evt-7")


def test_a_once_per_day_refusal_of_a_write_that_happened_is_a_duplicate(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    # A retried POST whose first attempt was recorded meets the once-a-day rule: the row is there.
    token_route(router)
    router.post(TXNS).mock(
        return_value=httpx.Response(400, json={"errors": {"limit_to_once_per_calendar_day": [{"code": "x"}]}})
    )
    _read_back_route(router, [{"transaction_id": 5, "trans_source_id": "c1"}])
    client = make_client(router, fake_time)
    result = client.award_points(perk=1, user=2, trans_source_id="c1", limit_to_once_per_calendar_day=True)
    assert result.duplicate and not result.limited


@pytest.mark.parametrize(
    ("rows", "duplicate"),
    [([{"transaction_id": 1, "trans_source_id": "other"}], True), ([], False)],
    ids=["read-back-cannot-tell", "read-back-finds-no-row"],
)
def test_a_recorded_duplicate_answer_is_recognised_unless_the_read_back_disproves_it(
    router: respx.MockRouter, fake_time: FakeTime, rows: list[dict[str, Any]], duplicate: bool
) -> None:
    # What `perkbridge probe --write-test` would record: an answer no built-in rule knows.
    recorded = RecordedAnswer(
        status=400, body={"detail": "perkbridge-probe:1 is taken"}, trans_source_id="perkbridge-probe:1"
    )
    token_route(router)
    router.post(TXNS).mock(return_value=httpx.Response(400, json={"detail": "perkamo:e-8 is taken"}))
    _read_back_route(router, rows)
    client = make_client(router, fake_time, duplicate_answers=[recorded])
    if duplicate:
        assert client.award_points(perk=1, user=2, trans_source_id="perkamo:e-8").duplicate
    else:
        with pytest.raises(RequestRejected):
            client.award_points(perk=1, user=2, trans_source_id="perkamo:e-8")


def test_an_extra_predicate_is_consulted(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.post(TXNS).mock(return_value=httpx.Response(400, json={"detail": "taken"}))
    seen: list[tuple[int, Any]] = []

    def taken(status: int, body: Any) -> bool:
        seen.append((status, body))
        return body == {"detail": "taken"}

    client = make_client(router, fake_time, is_duplicate=taken)
    assert client.award_points(perk=1, user=2, trans_source_id="perkamo:e-9").duplicate
    assert seen == [(400, {"detail": "taken"})]


@pytest.mark.parametrize(
    ("recorded", "status", "body", "matches"),
    [
        (
            RecordedAnswer(400, {"errors": {"__all__": [{"code": "pv_a", "message": "x1"}]}}, "x1"),
            400,
            {"errors": {"__all__": [{"code": "pv_a", "message": "other words"}]}},
            True,
        ),
        (RecordedAnswer(400, {"detail": "x1 taken"}, "x1"), 422, {"detail": "y2 taken"}, False),
        (RecordedAnswer(400, {"detail": "x1 taken"}, "x1"), 400, {"detail": "y2 gone"}, False),
        (RecordedAnswer(500, {"error_message": "Sorry"}), 500, {"error_message": "Sorry"}, False),
        (RecordedAnswer(409, None), 409, None, True),
    ],
    ids=["same-code", "other-status", "other-body", "never-a-5xx", "empty-body"],
)
def test_recorded_answer_matching(recorded: RecordedAnswer, status: int, body: Any, matches: bool) -> None:
    assert recorded.matches(status, body, "y2") is matches


# ----------------------------------------------------------------- the customer by external_member_id
@pytest.mark.parametrize(
    "field", ["external_member_id", "member__external_id"], ids=["default", "configured"]
)
def test_award_by_external_member_id_uses_the_configured_field(
    router: respx.MockRouter, fake_time: FakeTime, field: str
) -> None:
    token_route(router)
    route = router.post(TXNS).mock(
        return_value=httpx.Response(201, headers={"Location": "/v2/transactions/9/"})
    )
    client = make_client(router, fake_time, external_member_field=field)
    result = client.award_points(perk=1, external_member_id="ACC-17", trans_source_id="perkamo:e-10")
    assert result.created and result.transaction is None and result.resource_uri == "/v2/transactions/9/"
    assert result.transaction_id == "9"
    body = json.loads(route.calls.last.request.content)
    assert body[field] == "ACC-17" and "user" not in body and "user__emails__email" not in body


@pytest.mark.parametrize(
    "field", ["", "user", "bad name", "x;y"], ids=["empty", "taken", "space", "punctuation"]
)
def test_external_member_field_must_be_a_new_field_name(
    router: respx.MockRouter, fake_time: FakeTime, field: str
) -> None:
    with pytest.raises(ConfigurationError, match="external_member_field"):
        make_client(router, fake_time, external_member_field=field)


# ----------------------------------------------------------------- empty answers and resource URIs
def test_empty_answers_resolve(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.post(EXT).mock(return_value=httpx.Response(201, headers={"Location": "/v2/external-members/12/"}))
    patch = router.patch(EXT + "12/").mock(return_value=httpx.Response(202))
    router.patch(API + "connections/4/").mock(return_value=httpx.Response(202))
    client = make_client(router, fake_time)
    created = client.upsert_external_member({"system_id": "POS", "member_id": "M-1"})
    assert created == {"resource_uri": "/v2/external-members/12/"}
    assert (
        client.upsert_external_member({"membership_status": "INACTIVE"}, resource_uri=created["resource_uri"])
        == {}
    )
    assert patch.call_count == 1
    assert client.update_connection_status(4, "ACTIVE") == {}


@pytest.mark.parametrize(
    "uri",
    ["12", "external-members/12/", "https://evil.example/v2/external-members/12/"],
    ids=["bare-id", "relative", "other-host"],
)
def test_patch_needs_the_records_own_uri(router: respx.MockRouter, fake_time: FakeTime, uri: str) -> None:
    client = make_client(router, fake_time)  # nothing may be sent
    with pytest.raises(ConfigurationError, match="resource_uri"):
        client.upsert_external_member({"membership_status": "ACTIVE"}, resource_uri=uri)


# ----------------------------------------------------------------- against the sandbox, over loopback
@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(seed=5, members=30, transactions=300)
    sandbox.start()
    yield sandbox
    sandbox.stop()


def _client(sandbox: Sandbox, **overrides: Any) -> PerkvilleClient:
    kwargs: dict[str, Any] = {
        **sandbox.client_kwargs(),
        "requests_per_second": None,
        "backoff_base": 0.001,
        "backoff_max": 0.002,
    }
    kwargs.update(overrides)
    return PerkvilleClient(**kwargs)


def _purchase(sandbox: Sandbox) -> tuple[int, int]:
    """The 10-point purchase perk and a member of the business."""
    return sandbox.ledger.businesses[BUSINESS].perk_ids[1], next(iter(sandbox.true_balances(BUSINESS)))


def _rows(sandbox: Sandbox, tsid: str) -> int:
    return sum(1 for t in sandbox.ledger.businesses[BUSINESS].txns if t.trans_source_id == tsid)


@pytest.mark.parametrize(
    ("answer", "read_back"),
    [("field", False), ("conflict", False), ("code", False), ("django", False), ("server_error", True)],
)
def test_each_duplicate_answer_of_the_sandbox_counts_once(box: Sandbox, answer: str, read_back: bool) -> None:
    box.set_behaviour(duplicate_answer=answer)
    perk, user = _purchase(box)
    tsid = f"perkamo:dup-{answer}"
    before = box.true_balances(BUSINESS)[user]
    try:
        with _client(box, max_retries=1) as client:
            first = client.award_points(perk=perk, user=user, business=BUSINESS, trans_source_id=tsid)
            again = client.award_points(perk=perk, user=user, business=BUSINESS, trans_source_id=tsid)
    finally:
        box.set_behaviour(duplicate_answer="field")
    assert first.created and not first.duplicate
    assert again.duplicate and not again.created and again.read_back is read_back
    assert _rows(box, tsid) == 1
    assert box.true_balances(BUSINESS)[user] == before + 10


def test_a_silent_duplicate_answer_changes_nothing(box: Sandbox) -> None:
    box.set_behaviour(duplicate_answer="silent")
    perk, user = _purchase(box)
    try:
        with _client(box) as client:
            first = client.award_points(perk=perk, user=user, trans_source_id="perkamo:silent")
            again = client.award_points(perk=perk, user=user, trans_source_id="perkamo:silent")
    finally:
        box.set_behaviour(duplicate_answer="field")
    assert first.resource_uri == again.resource_uri is not None
    assert _rows(box, "perkamo:silent") == 1


def test_a_server_that_ignores_the_filter_cannot_confirm_a_write(box: Sandbox) -> None:
    perk, user = _purchase(box)
    with _client(box) as client:
        client.award_points(perk=perk, user=user, business=BUSINESS, trans_source_id="perkamo:ignored")
    box.set_behaviour(duplicate_answer="server_error", ignore_filters=True)
    try:
        with _client(box, max_retries=1) as client, pytest.raises(RetryBudgetExhausted):
            client.award_points(perk=perk, user=user, business=BUSINESS, trans_source_id="perkamo:ignored")
    finally:
        box.set_behaviour(duplicate_answer="field", ignore_filters=False)
    assert _rows(box, "perkamo:ignored") == 1


def test_duplicate_answer_is_switchable_over_http(box: Sandbox) -> None:
    with httpx.Client(base_url=box.base_url) as http:
        assert http.post("/_sandbox/behaviour", json={"duplicate_answer": "django"}).json()[
            "duplicate_answer"
        ] == ("django")
        refused = http.post("/_sandbox/behaviour", json={"duplicate_answer": "maybe"})
        assert refused.status_code == 400 and "duplicate_answer" in refused.text
        assert http.post("/_sandbox/behaviour", json={"duplicate_answer": "field"}).status_code == 200
    assert box.server.behaviour.duplicate_answer == "field"
    with pytest.raises(ValueError, match="duplicate_answer"):
        box.set_behaviour(duplicate_answer="nope")


def test_an_award_by_external_member_id_reaches_the_linked_member(box: Sandbox) -> None:
    ledger = box.ledger
    record = next(
        r
        for r in sorted(ledger.external_members.values(), key=lambda r: r["id"])
        if r["business"] == BUSINESS and r["email"]
    )
    user = ledger.email_index[record["email"].lower()]
    perk = ledger.businesses[BUSINESS].perk_ids[1]
    with _client(box) as client:
        result = client.award_points(
            perk=perk, external_member_id=record["external_member_id"], trans_source_id="perkamo:by-member"
        )
        with pytest.raises(RequestRejected):
            client.award_points(
                perk=perk, external_member_id="NO-SUCH-MEMBER", trans_source_id="perkamo:nobody"
            )
    (row,) = [t for t in ledger.businesses[BUSINESS].txns if t.trans_source_id == "perkamo:by-member"]
    assert result.created and row.user_id == user


def test_empty_201_and_202_resolve_against_the_sandbox(box: Sandbox) -> None:
    connection_id = box.ledger.businesses[BUSINESS].connection_ids[1]
    with _client(box) as client:
        created = client.upsert_external_member(
            {"system_id": "POS", "member_id": "E-1", "membership_status": "ACTIVE"}  # no business (G16)
        )
        assert created is not None and set(created) == {"resource_uri"}
        patched = client.upsert_external_member(
            {"membership_type": "Annual"}, resource_uri=created["resource_uri"]
        )
        status = client.update_connection_status(connection_id, "ACTIVE")
    assert patched == {} and status == {}
    (record,) = [r for r in box.ledger.external_members.values() if r["member_id"] == "E-1"]
    assert created["resource_uri"] == f"/v2/external-members/{record['id']}/"
    assert (record["membership_type"], record["external_member_id"], record["business"]) == (
        "Annual",
        "E-1",
        BUSINESS,
    )
    assert box.ledger.connections[connection_id]["status"] == "ACTIVE"
