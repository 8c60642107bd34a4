"""The sandbox as a network service: latency, a Tastypie-style throttle, and the client against it."""

from __future__ import annotations

import threading

import httpx
import pytest
from typer.testing import CliRunner

from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from connectors.perkville.sandbox.network import Network

from .conftest import FakeTime


def test_the_throttle_admits_r_requests_in_any_second_and_says_when_to_come_back() -> None:
    fake = FakeTime(start=100.0)
    network = Network(rate_limit=3, clock=fake.clock)
    assert [network.admit() for _ in range(3)] == [None, None, None]
    fake.now += 0.4
    assert network.admit() == 1  # the window frees 0.6 s from now: whole seconds, rounded up
    fake.now += 0.6
    assert network.admit() is None  # the first request is a second old
    assert network.admit() is None and network.admit() is None
    assert network.admit() == 1
    assert (network.stats.accepted, network.stats.throttled) == (6, 2)


def test_no_budget_admits_everything() -> None:
    network = Network()
    assert all(network.admit() is None for _ in range(1000))


def test_bad_network_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="latency"):
        Network(latency=-1)
    with pytest.raises(ValueError, match="rate_limit"):
        Network(rate_limit=0)


def _token(box: Sandbox, http: httpx.Client) -> str:
    creds = box.credentials
    response = http.post(
        box.token_url,
        data={"grant_type": "password", "username": creds["username"], "password": creds["password"]},
        auth=(creds["client_id"], creds["client_secret"]),
    )
    return str(response.json()["access_token"])


def test_a_throttled_request_gets_429_with_an_empty_body_and_retry_after() -> None:
    fake = FakeTime(start=0.0)
    with Sandbox(seed=1, members=3, transactions=5) as box:
        box.server.network = Network(rate_limit=1, clock=fake.clock)
        with httpx.Client(timeout=30) as http:
            headers = {"Authorization": f"Bearer {_token(box, http)}"}
            first = http.get(box.api_url + "perks/", headers=headers)
            second = http.get(box.api_url + "perks/", headers=headers)
            fake.now += 1.0
            third = http.get(box.api_url + "perks/", headers=headers)
            stats = http.get(box.base_url + "/_sandbox/stats").json()
    assert first.status_code == 200
    assert second.status_code == 429 and second.content == b"" and second.headers["Retry-After"] == "1"
    assert third.status_code == 200
    assert (stats["accepted"], stats["throttled"]) == (2, 1)


def test_every_answer_waits_for_the_latency() -> None:
    """The sleep asked of the network is what is left of the latency after the work (a fake clock)."""
    fake = FakeTime(start=0.0)
    network = Network(latency=0.12, clock=fake.clock, sleep=fake.sleep)
    network.delay(arrived=0.0)
    fake.now = 1.05
    network.delay(arrived=1.0)
    fake.now = 3.0
    network.delay(arrived=2.0)
    assert fake.sleeps == [pytest.approx(0.12), pytest.approx(0.07)]


def test_the_client_reads_everything_from_a_throttled_sandbox_and_backs_off() -> None:
    """Budget 4 requests/s against a ceiling of 20: the first 429 halves the rate; nothing lost."""
    with Sandbox(seed=2, members=10, transactions=600) as box:
        box.set_network(rate_limit=4)
        client = PerkvilleClient(**box.client_kwargs(), requests_per_second=20.0, page_size=40, max_in_flight=4)
        with client:
            ids = [row["transaction_id"] for p in client.iter_transactions(box.business_ids[0]) for row in p.objects]
        throttled = box.stats()["throttled"]
    assert sorted(ids) == box.transaction_ids(box.business_ids[0])
    assert len(ids) == len(set(ids))
    assert client.budget.throttled == throttled
    if throttled:
        assert client.budget.rate is not None and client.budget.rate < 20.0


def test_a_list_that_changes_during_an_overlapped_read_loses_and_doubles_nothing() -> None:
    """Rows recorded mid-read (one back-dated into the middle) and a void: every row there from
    the start is read exactly once, whichever pages were already in flight."""
    with Sandbox(seed=3, members=10, transactions=400) as box:
        business = box.business_ids[0]
        before = box.transaction_ids(business)
        client = PerkvilleClient(**box.client_kwargs(), requests_per_second=None, page_size=25, max_in_flight=4)
        seen: list[int] = []
        changed = threading.Event()
        with client:
            for index, page in enumerate(client.iter_transactions(business, order_by=["transaction_dt", "transaction_id"])):
                seen.extend(row["transaction_id"] for row in page.objects)
                if index == 1 and not changed.is_set():
                    changed.set()
                    _change_history(box, business)
        assert changed.is_set()
    assert len(seen) == len(set(seen)), "a row was read twice"
    assert set(before) <= set(seen), f"rows lost: {sorted(set(before) - set(seen))[:10]}"


def _change_history(box: Sandbox, business: int) -> None:
    ledger = box.ledger
    perk = next(
        p["perk_id"]
        for p in ledger.perks.values()
        if p["business"] == business and p["classification"] == "EARN" and p["points"]
    )
    user = ledger.connections[ledger.businesses[business].connection_ids[0]]["user"]
    stamps = sorted(t.dt for t in ledger.txns.values() if t.business_id == business)
    box.add_transaction(business=business, perk=perk, user=user, transaction_dt=stamps[len(stamps) // 2])
    box.add_transaction(business=business, perk=perk, user=user)
    active = next(t.id for t in sorted(ledger.txns.values(), key=lambda t: t.id) if t.status == "ACTIVE")
    box.void_transaction(active)


def test_the_sandbox_command_takes_latency_and_a_rate_limit() -> None:
    from bridge.cli import app

    result = CliRunner().invoke(app, ["sandbox", "--help"])
    assert result.exit_code == 0
    assert "--latency-ms" in result.output and "--rate-limit" in result.output


def test_a_defect_of_the_sandbox_is_answered_500_not_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client then reports a server error, and the traceback is on the sandbox's stderr."""
    from connectors.perkville.sandbox import server

    def broken(*_args: object) -> list[object]:
        raise KeyError(4242)

    monkeypatch.setattr(server, "query", broken)
    with Sandbox(seed=1, members=3, transactions=5) as box, httpx.Client(timeout=30) as http:
        headers = {"Authorization": f"Bearer {_token(box, http)}"}
        answer = http.get(box.api_url + "perks/", headers=headers)
    assert answer.status_code == 500
    assert answer.json() == {"error_message": "sandbox error: KeyError: 4242"}
    assert "KeyError: 4242" in capsys.readouterr().err


def test_the_sandbox_answers_with_nagle_off_like_an_indexed_production_server() -> None:
    # http.server writes headers and body in two sends; with Nagle on, a small body waited about
    # 40 ms for the client's delayed ACK (47 -> 3 ms per small page once off: bench/README.md).
    import socket

    from connectors.perkville.sandbox.server import _Handler

    seen: list[int] = []

    class Recording(_Handler):
        def setup(self) -> None:
            super().setup()
            seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with Sandbox(seed=1, members=2, transactions=2) as box:
        box.server.RequestHandlerClass = Recording
        with PerkvilleClient(**box.client_kwargs()) as client:
            client.request("GET", "businesses/")
    assert seen and all(seen), seen
