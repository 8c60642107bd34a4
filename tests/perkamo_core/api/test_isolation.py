"""No request fails because of another: a real server, one client flooding bad dates, others valid."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from sqlalchemy import Engine

from perkamo_core.api import create_app
from tests.perkamo_core.api.server import live_server
from tests.perkamo_core.api.support import SPACE, make_core

BAD_DATES = ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00")
FLOOD = 120
CLIENTS = 4
EVENTS_PER_CLIENT = 40


def test_a_client_flooding_out_of_range_dates_fails_only_its_own_requests(db_engine: Engine) -> None:
    service, keys = make_core(db_engine)
    headers = {"x-perkamo-api-key": keys.full}
    bad: list[tuple[int, str]] = []
    good: list[tuple[int, bool]] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS + 1)

    with live_server(create_app(service)) as base_url:

        def flooder() -> None:
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                start.wait()
                for i in range(FLOOD):
                    response = client.post("/v1/events", json={
                        "user_id": "flooder", "event": "page.viewed", "transaction_id": f"bad-{i}",
                        "occurred_at": BAD_DATES[i % 2],
                    })
                    with lock:
                        bad.append((response.status_code, response.json().get("code", "")))

        def sender(n: int) -> Callable[[], None]:
            def run() -> None:
                with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                    start.wait()
                    for i in range(EVENTS_PER_CLIENT):
                        response = client.post("/v1/events", json={
                            "user_id": f"client-{n}", "event": "page.viewed", "transaction_id": f"ok-{n}-{i}",
                        })
                        with lock:
                            good.append((response.status_code, bool(response.json().get("applied"))))
            return run

        threads = [threading.Thread(target=flooder)] + [threading.Thread(target=sender(n)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)

    assert len(good) == CLIENTS * EVENTS_PER_CLIENT and set(good) == {(200, True)}
    assert len(bad) == FLOOD and set(bad) == {(400, "occurred_at_out_of_range")}
    balances = service.wallet_balances(SPACE)
    assert balances == {f"client-{n}": EVENTS_PER_CLIENT for n in range(CLIENTS)}
