"""End-to-end over real HTTP on loopback: the connector against the Perkville sandbox."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from connectors.perkville import AuthError, PaginationError, PerkvilleClient
from connectors.perkville.sandbox import REDEEM_SIGNS, Faults, Sandbox
from connectors.perkville.sandbox.state import CONNECTION_STATUSES, HISTORY_END, Ledger

pytestmark = pytest.mark.slow
BUSINESS = 25


@pytest.fixture(scope="module")
def big() -> Iterator[Sandbox]:
    sandbox = Sandbox(seed=7, members=250, transactions=10_000)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def small() -> Iterator[Sandbox]:
    sandbox = Sandbox(seed=3, members=40, transactions=400)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(params=REDEEM_SIGNS)
def signed(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """``small`` under each redemption sign convention."""
    with Sandbox(seed=3, members=40, transactions=400, redeem_sign=request.param) as sandbox:
        yield sandbox


def client_for(sandbox: Sandbox, **overrides: Any) -> PerkvilleClient:
    kwargs: dict[str, Any] = {**sandbox.client_kwargs(), "requests_per_second": None, "page_size": 250}
    kwargs.update(overrides)
    return PerkvilleClient(**kwargs)


def checksum(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def pull_ids(client: PerkvilleClient, **params: Any) -> list[int]:
    return [row["transaction_id"] for p in client.iter_transactions(BUSINESS, **params) for row in p.objects]


# ----------------------------------------------------------------- complete and exact pulls
def test_pulls_10000_transactions_completely_and_exactly(big: Sandbox) -> None:
    big.set_faults(Faults())
    with client_for(big) as client:
        ids = pull_ids(client)
    expected = big.transaction_ids(BUSINESS)
    assert len(expected) == 10_000
    assert len(ids) == len(set(ids)) == 10_000
    assert checksum(ids) == checksum(expected)


def test_pulls_10000_transactions_exactly_with_every_fault_on(
    big: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    big.set_faults(Faults.all_on(0.06, slow_seconds=0.01))
    try:
        with (
            caplog.at_level(logging.DEBUG),
            client_for(big, max_retries=12, backoff_base=0.001, backoff_max=0.01, timeout=5.0) as client,
        ):
            ids = pull_ids(client)
            retries = client.stats["retries"]
        faults = big.stats()["faults"]
    finally:
        big.set_faults(Faults())
    assert len(ids) == len(set(ids)) == 10_000
    assert checksum(ids) == checksum(big.transaction_ids(BUSINESS))
    assert {"429", "5xx", "drop", "truncate", "slow"} <= set(faults)
    assert retries >= sum(faults.get(kind, 0) for kind in ("429", "5xx", "drop"))
    for secret in (big.credentials["client_secret"], big.credentials["password"]):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "behaviour",
    [
        {"next_links": "relative"},
        {"next_links": "absolute"},
        {"next_links": "none"},
        {"cap_limit": 37},
        {"cap_limit": 37, "next_links": "none"},
    ],
    ids=["relative-next", "absolute-next", "offset-only", "capped-limit", "capped-offset-only"],
)
@pytest.mark.parametrize("in_flight", [1, 4], ids=["one-at-a-time", "overlapped"])
def test_paging_variants_pull_everything(small: Sandbox, behaviour: dict[str, Any], in_flight: int) -> None:
    small.set_behaviour(**behaviour)
    with client_for(small, page_size=100, max_in_flight=in_flight) as client:
        ids = pull_ids(client)
    assert sorted(ids) == small.transaction_ids(BUSINESS)


def test_repeated_next_link_stops_with_an_error(small: Sandbox) -> None:
    small.set_behaviour(repeat_next=True)
    with client_for(small, page_size=100, max_in_flight=1) as client, pytest.raises(PaginationError):
        pull_ids(client)


def test_overlapped_paging_reads_by_offset_and_so_survives_a_repeated_next_link(small: Sandbox) -> None:
    small.set_behaviour(repeat_next=True)
    with client_for(small, page_size=100, max_in_flight=4) as client:
        ids = pull_ids(client)
    assert sorted(ids) == small.transaction_ids(BUSINESS)


# ----------------------------------------------------------------- incremental reads
def test_windows_cover_the_history_in_order(small: Sandbox) -> None:
    start = HISTORY_END - timedelta(days=800)
    with client_for(small, page_size=50) as client:
        rows = [
            row
            for p in client.iter_windows(
                "transactions",
                field="transaction_dt",
                start=start,
                end=HISTORY_END + timedelta(days=1),
                window=timedelta(days=90),
                business=BUSINESS,
            )
            for row in p.objects
        ]
    assert sorted(r["transaction_id"] for r in rows) == small.transaction_ids(BUSINESS)
    keys = [(r["transaction_dt"], r["transaction_id"]) for r in rows]
    assert keys == sorted(keys)


def test_server_ignoring_filters_and_order_is_handled_on_the_client(
    small: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    small.set_behaviour(ignore_filters=True, ignore_order=True)
    since = HISTORY_END - timedelta(days=100)
    with (
        caplog.at_level(logging.WARNING, logger="connectors.perkville"),
        client_for(small, page_size=60) as client,
    ):
        pages = list(
            client.iter_transactions(
                BUSINESS, transaction_dt_gte=since, order_by=["transaction_dt", "transaction_id"]
            )
        )
    got = sorted(row["transaction_id"] for p in pages for row in p.objects)
    expected = sorted(t.id for t in small.ledger.businesses[BUSINESS].txns if t.dt >= since)
    assert got == expected and 0 < len(expected) < 400
    assert sum(p.dropped for p in pages) == 400 - len(expected)
    assert caplog.text.count("ignored the transaction_dt filter") == 1


def test_late_void_shows_up_in_an_incremental_read(small: Sandbox) -> None:
    victim = next(
        t
        for t in small.ledger.businesses[BUSINESS].txns
        if t.status == "ACTIVE" and t.classification == "EARN" and t.points > 0
    )
    before = datetime.now(UTC) - timedelta(seconds=5)
    reversal = small.void_transaction(victim.id)
    with client_for(small) as client:
        rows = [row for p in client.iter_transactions(BUSINESS, last_mod_dt_gte=before) for row in p.objects]
    by_id = {row["transaction_id"]: row for row in rows}
    assert by_id[victim.id]["transaction_status"] == "VOID"
    assert by_id[reversal["transaction_id"]]["transaction_status"] == "VOID_REF"
    assert by_id[reversal["transaction_id"]]["voided_transaction"] == f"/v2/transactions/{victim.id}/"
    assert len(rows) == 2


# ----------------------------------------------------------------- truth and data shape
def test_connection_balances_equal_the_ledger_truth(signed: Sandbox) -> None:
    with client_for(signed) as client:
        connections = [row for p in client.iter_connections(BUSINESS) for row in p.objects]
        rows = [row for p in client.iter_transactions(BUSINESS) for row in p.objects]
    truth = signed.true_balances(BUSINESS)
    reported = {int(c["user"].rstrip("/").rsplit("/", 1)[-1]): c["point_balance"] for c in connections}
    assert reported == truth
    # The same truth recomputed from what the API served, whatever the sign convention: the sign
    # comes from the classification, as the mapping reads it.
    recomputed = dict.fromkeys(truth, 0)
    earned = dict.fromkeys(truth, 0)
    for row in rows:
        if row["transaction_status"] == "ACTIVE":
            user_id = int(row["user"].split("/")[-2])
            sign = -1 if row["classification"] == "REDEEM" else 1
            recomputed[user_id] += sign * abs(row["points"]) * row["quantity"]
            if sign > 0:
                earned[user_id] += row["points"] * row["quantity"]
    assert recomputed == truth
    lifetime = {int(c["user"].rstrip("/").rsplit("/", 1)[-1]): c["lifetime_earned_points"] for c in connections}
    assert lifetime == earned
    assert {c["status"] for c in connections} == set(CONNECTION_STATUSES)
    statuses = {row["transaction_status"] for row in rows}
    assert statuses == {"ACTIVE", "VOID", "VOID_REF"}
    assert any(row["points"] == 0 for row in rows) and any(row["trans_source_id"] for row in rows)


def test_redemptions_are_negative_by_default_as_perkville_documents_them() -> None:
    assert Ledger(members=1, transactions=0).redeem_sign == "negative" == REDEEM_SIGNS[0]
    assert Sandbox(members=1, transactions=0).ledger.redeem_sign == "negative"


def test_the_sign_of_redemptions_and_of_void_refs_follows_the_convention(signed: Sandbox) -> None:
    negative = signed.ledger.redeem_sign == "negative"
    redemption = next(
        t for t in signed.ledger.txns.values()
        if t.classification == "REDEEM" and t.status == "ACTIVE" and t.quantity == 1
    )
    earn = next(
        t for t in signed.ledger.txns.values()
        if t.classification == "EARN" and t.status == "ACTIVE" and t.points
    )
    for victim in (redemption, earn):
        signed.void_transaction(victim.id)
    with client_for(signed) as client:
        rows = [row for p in client.iter_transactions(BUSINESS) for row in p.objects]
    by_id = {row["transaction_id"]: row for row in rows}
    shown = [row for row in rows if row["transaction_status"] != "VOID_REF"]
    redeems = [row for row in shown if row["classification"] == "REDEEM"]
    earns = [row for row in shown if row["classification"] == "EARN"]
    assert redeems and all((row["points"] < 0) == negative and row["points"] for row in redeems)
    assert all(row["points"] >= 0 for row in earns)
    refs = [row for row in rows if row["transaction_status"] == "VOID_REF"]
    assert refs
    for ref in refs:
        original = by_id[int(ref["voided_transaction"].split("/")[-2])]
        assert original["transaction_status"] == "VOID" and ref["points"] == -original["points"]
    # N2's example: a voided redemption of N points is -N and its VOID_REF +N (documented sign).
    voided = by_id[redemption.id]
    (ref,) = [row for row in refs if row["voided_transaction"] == f"/v2/transactions/{redemption.id}/"]
    assert (voided["points"], ref["points"]) == ((-redemption.points, redemption.points) if negative
                                                 else (redemption.points, -redemption.points))
    # Under the documented convention Perkville's ledger adds up: the plain sum of points x quantity
    # over every row (a VOID row and its VOID_REF cancel) is the balance.
    plain = dict.fromkeys(signed.true_balances(BUSINESS), 0)
    for row in rows:
        plain[int(row["user"].split("/")[-2])] += row["points"] * row["quantity"]
    assert (plain == signed.true_balances(BUSINESS)) == negative


def test_users_locations_perks_have_the_promised_variety(small: Sandbox) -> None:
    with client_for(small) as client:
        users = [row for p in client.iter_users() for row in p.objects]
        locations = [row for p in client.iter_locations(BUSINESS) for row in p.objects]
        perks = [row for p in client.iter_perks(BUSINESS) for row in p.objects]
        members = [row for p in client.iter_external_members(BUSINESS) for row in p.objects]
    assert {len(u["emails"]) for u in users} >= {0, 1}
    assert max(len(u["emails"]) for u in users) <= 3
    assert any(not (u["first_name"] + u["last_name"]).isascii() for u in users)
    assert any(loc["external_location_id"] for loc in locations)
    assert {p["classification"] for p in perks} == {"EARN", "REDEEM"}
    assert any(p["redemption_limit_interval"] == "DAY" for p in perks)
    assert members and all(m["business"] == f"/v2/businesses/{BUSINESS}/" for m in members)
    # A neutral key and a URI; external_member_id is the external system's member id (G5).
    assert all(m["resource_uri"] == f"/v2/external-members/{m['id']}/" for m in members)
    assert all(m["external_member_id"] == m["member_id"] for m in members)
    assert [m["id"] for m in members] == sorted(m["id"] for m in members)


# ----------------------------------------------------------------- auth over HTTP
def test_revoking_one_token_leaves_others_valid(small: Sandbox) -> None:
    keep, drop = small.issue_token(), small.issue_token()
    small.revoke_tokens(drop)
    with httpx.Client(base_url=small.api_url) as http:
        assert http.get("locations/", headers={"Authorization": f"Bearer {keep}"}).status_code == 200
        assert http.get("locations/", headers={"Authorization": f"Bearer {drop}"}).status_code == 401


def test_revoked_token_triggers_one_reauth(small: Sandbox) -> None:
    with client_for(small, page_size=100) as client:
        pages = client.iter_transactions(BUSINESS)
        first = next(pages)
        small.revoke_tokens()
        rest = [row for p in pages for row in p.objects]
        assert client.stats["reauths"] == 1
    assert len(first.objects) + len(rest) == 400


def test_reauth_failure_raises_auth_error_without_secrets(
    small: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    old_password = small.credentials["password"]
    with caplog.at_level(logging.DEBUG), client_for(small, page_size=100, max_retries=0) as client:
        pages = client.iter_transactions(BUSINESS)
        next(pages)
        small.revoke_tokens()
        small.set_password("a-new-password-123")
        with pytest.raises(AuthError) as info:
            list(pages)
    assert "username and password" in str(info.value)
    for secret in (old_password, small.credentials["client_secret"]):
        assert secret not in str(info.value) and secret not in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_secret", "wrong-secret-xyz"),
        ("password", "wrong-password-xyz"),
        ("username", "nobody@x.test"),
    ],
    ids=["bad-secret", "bad-password", "bad-username"],
)
def test_token_endpoint_rejects_bad_credentials(small: Sandbox, field: str, value: str) -> None:
    with client_for(small, **{field: value}) as client, pytest.raises(AuthError):
        client.authenticate()


def test_given_access_token_works(small: Sandbox) -> None:
    token = small.issue_token()
    with PerkvilleClient(
        small.api_url, small.token_url, access_token=token, requests_per_second=None
    ) as client:
        assert sum(len(p.objects) for p in client.iter_locations(BUSINESS)) == 3


# ----------------------------------------------------------------- writes over HTTP
def test_award_points_is_idempotent_and_updates_the_truth(small: Sandbox) -> None:
    user_id = next(iter(small.true_balances(BUSINESS)))
    perk = small.ledger.businesses[BUSINESS].perk_ids[1]  # 10 points per unit
    before = small.true_balances(BUSINESS)[user_id]
    with client_for(small) as client:
        first = client.award_points(perk=perk, user=user_id, quantity=2, trans_source_id="perkamo:abc")
        again = client.award_points(perk=perk, user=user_id, quantity=2, trans_source_id="perkamo:abc")
    # Tastypie's default answer: 201, a Location header and no body.
    (row,) = [t for t in small.ledger.businesses[BUSINESS].txns if t.trans_source_id == "perkamo:abc"]
    assert first.created and first.transaction is None
    assert first.resource_uri == f"/v2/transactions/{row.id}/" and first.transaction_id == str(row.id)
    assert again.duplicate and not again.created
    assert small.true_balances(BUSINESS)[user_id] == before + 20


def test_award_points_survives_truncated_responses(small: Sandbox) -> None:
    user_id = next(iter(small.true_balances(BUSINESS)))
    perk = small.ledger.businesses[BUSINESS].perk_ids[1]
    before = small.true_balances(BUSINESS)[user_id]
    small.set_behaviour(return_data=True)  # an empty body cannot be cut short
    small.set_faults(rate_truncate=1.0)
    with client_for(small, max_retries=1, backoff_base=0.001) as client:
        result = client.award_points(perk=perk, user=user_id, trans_source_id="perkamo:t1")
    small.set_faults(Faults())
    # The first response was cut after the write, the retry met the duplicate: awarded exactly once.
    assert result.duplicate
    assert small.true_balances(BUSINESS)[user_id] == before + 10


def test_once_per_day_limit(small: Sandbox) -> None:
    user_id = next(iter(small.true_balances(BUSINESS)))
    checkin = small.ledger.businesses[BUSINESS].perk_ids[0]
    with client_for(small) as client:
        first = client.award_points(
            perk=checkin, user=user_id, trans_source_id="c1", limit_to_once_per_calendar_day=True
        )
        second = client.award_points(
            perk=checkin, user=user_id, trans_source_id="c2", limit_to_once_per_calendar_day=True
        )
    assert first.created and second.limited


def test_external_member_upsert_and_connection_status(small: Sandbox) -> None:
    small.set_behaviour(return_data=True)
    connection_id = small.ledger.businesses[BUSINESS].connection_ids[0]
    with client_for(small) as client:
        created = client.upsert_external_member(
            {"business": BUSINESS, "system_id": "POS", "member_id": "X-1", "membership_status": "ACTIVE"}
        )
        updated = client.upsert_external_member(
            {"business": BUSINESS, "system_id": "POS", "member_id": "X-1", "membership_status": "INACTIVE"}
        )
        assert created is not None
        patched = client.upsert_external_member(
            {"membership_type": "Annual"}, resource_uri=created["resource_uri"]
        )
        status = client.update_connection_status(connection_id, "INACTIVE")
    assert created and updated and patched
    # The record's own key is a neutral id; external_member_id is the external system's member id.
    assert created["id"] == updated["id"] == patched["id"]
    assert created["resource_uri"] == f"/v2/external-members/{created['id']}/"
    assert patched["external_member_id"] == "X-1"
    assert patched["membership_status"] == "INACTIVE" and patched["membership_type"] == "Annual"
    assert status["status"] == "INACTIVE"


def test_missing_external_member_endpoint_over_http(small: Sandbox) -> None:
    small.set_behaviour(external_members=False)
    with client_for(small) as client:
        assert list(client.iter_external_members(BUSINESS)) == []
        assert client.upsert_external_member({"member_id": "M"}) is None


# ----------------------------------------------------------------- control over HTTP
def test_control_routes(small: Sandbox) -> None:
    base = small.base_url
    with httpx.Client(base_url=base) as http:
        assert http.post("/_sandbox/faults", json={"rate_5xx": 0.5}).json()["rate_5xx"] == 0.5
        assert http.post("/_sandbox/faults", json={"reset": True}).json()["rate_5xx"] == 0.0
        assert http.post("/_sandbox/faults", json={"bogus": 1}).status_code == 400
        perk = small.ledger.businesses[BUSINESS].perk_ids[2]
        user_id = next(iter(small.true_balances(BUSINESS)))
        added = http.post(
            "/_sandbox/transactions", json={"business": BUSINESS, "perk": perk, "user": user_id}
        )
        assert added.status_code == 201
        voided = http.post(f"/_sandbox/transactions/{added.json()['transaction_id']}/void", json={})
        assert voided.json()["transaction_status"] == "VOID_REF"
        balances = http.get("/_sandbox/balances", params={"business": BUSINESS}).json()
        assert {int(k): v for k, v in balances.items()} == small.true_balances(BUSINESS)
        assert http.post("/_sandbox/behaviour", json={"cap_limit": 10}).json()["cap_limit"] == 10
        assert http.post("/_sandbox/revoke").json() == {"revoked": True}
        assert http.get("/v2/transactions/").status_code == 401


def test_sandbox_is_deterministic() -> None:
    one, two = Sandbox(seed=11, transactions=300, members=30), Sandbox(seed=11, transactions=300, members=30)
    assert one.transaction_ids() == two.transaction_ids()
    assert one.true_balances() == two.true_balances()
    assert one.credentials == two.credentials
    assert json.dumps(one.ledger.users, default=str) == json.dumps(two.ledger.users, default=str)
