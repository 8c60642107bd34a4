"""The sandbox's own clock and zone: what it stamps, what its Date header says, how it reads filters."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Faults, Sandbox

BUSINESS = 25
REAL_NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
PERKBRIDGE = Path(sys.executable).with_name("perkbridge")


@pytest.fixture
def behind() -> Iterator[Sandbox]:
    """A sandbox in Los Angeles whose clock runs three hours behind ``REAL_NOW``."""
    box = Sandbox(
        seed=4, members=10, transactions=100, timezone="America/Los_Angeles",
        now=lambda: REAL_NOW, clock_offset=-3 * 3600,
    )
    box.start()
    yield box
    box.stop()


def _perk_and_user(box: Sandbox) -> tuple[int, int]:
    ledger = box.ledger
    perk = next(p for p in ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    return perk["perk_id"], next(iter(box.true_balances()))


def test_every_stamp_and_the_date_header_come_from_the_sandboxs_own_clock(behind: Sandbox) -> None:
    perk, user = _perk_and_user(behind)
    row = behind.add_transaction(perk=perk, user=user)
    # 09:00 UTC on the sandbox's clock, shown as naive Los Angeles time.
    assert row["transaction_dt"] == row["last_mod_dt"] == "2026-12-05 01:00:00"
    behind.set_clock(-2 * 3600)
    reversal = behind.void_transaction(row["transaction_id"])
    assert reversal["transaction_dt"] == "2026-12-05 02:00:00"
    with httpx.Client(base_url=behind.base_url) as http:
        voided = http.get(f"/v2/transactions/{row['transaction_id']}/",
                          headers={"Authorization": f"Bearer {behind.issue_token()}"})
        assert voided.json()["last_mod_dt"] == "2026-12-05 02:00:00"
        assert parsedate_to_datetime(voided.headers["Date"]) == REAL_NOW - timedelta(hours=2)


def test_a_backdated_or_future_transaction_dt_does_not_move_last_mod_dt(behind: Sandbox) -> None:
    perk, user = _perk_and_user(behind)
    future = behind.add_transaction(perk=perk, user=user, transaction_dt="2027-01-01 00:00:00")
    assert future["transaction_dt"] == "2027-01-01 00:00:00"
    assert future["last_mod_dt"] == "2026-12-05 01:00:00"


def test_the_clock_switch_over_http(behind: Sandbox) -> None:
    with httpx.Client(base_url=behind.base_url) as http:
        assert http.get("/_sandbox/clock").json() == {"offset_seconds": -10800.0, "now": "2026-12-05 01:00:00"}
        moved = http.post("/_sandbox/clock", json={"offset_seconds": 3600})
        assert moved.json() == {"offset_seconds": 3600.0, "now": "2026-12-05 05:00:00"}
        assert http.post("/_sandbox/clock", json={"offset_seconds": "soon"}).status_code == 400
        assert http.post("/_sandbox/clock", json={"offset_seconds": "nan"}).status_code == 400
    assert behind.ledger.now() == REAL_NOW + timedelta(hours=1)


@pytest.mark.parametrize("suffix", ["__gte", "__lt"], ids=["gte", "lt"])
def test_filters_are_read_in_the_sandboxs_zone(behind: Sandbox, suffix: str) -> None:
    """A filter value is naive text in the sandbox's own zone, as its rows show."""
    perk, user = _perk_and_user(behind)
    row = behind.add_transaction(perk=perk, user=user)
    shown = row["last_mod_dt"]
    with httpx.Client(base_url=behind.base_url) as http:
        got = http.get(
            "/v2/transactions/",
            params={"business": BUSINESS, f"last_mod_dt{suffix}": shown, "limit": 1000},
            headers={"Authorization": f"Bearer {behind.issue_token()}"},
        ).json()
    ids = {r["transaction_id"] for r in got["objects"]}
    assert (row["transaction_id"] in ids) is (suffix == "__gte")


def test_a_retry_after_date_from_a_server_hours_ahead_is_waited_for_on_its_clock() -> None:
    """A 429 whose ``Retry-After`` is an HTTP date on the server's (skewed) clock: the client
    waits what the server meant, not the skew."""
    box = Sandbox(seed=4, members=5, transactions=20, clock_offset=5 * 3600)
    box.start()
    waits: list[float] = []
    try:
        box.set_faults(Faults(rate_429=1.0, retry_after="http-date", retry_after_seconds=2))
        client = PerkvilleClient(
            **box.client_kwargs(), requests_per_second=None, max_retries=1, sleep=waits.append,
            max_retry_after=30.0,
        )
        with client, pytest.raises(Exception, match="retry budget"):
            client.request("GET", "perks/")
    finally:
        box.stop()
    assert waits and all(1.0 <= w <= 3.0 for w in waits), waits


@pytest.mark.slow
def test_cli_sandbox_takes_a_clock_offset_and_a_zone() -> None:
    command = [str(PERKBRIDGE), "sandbox", "--port", "0", "--json", "--members", "5",
               "--transactions", "20", "--clock-offset", "-7200", "--timezone", "Asia/Tokyo"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        info: dict[str, Any] = json.loads(process.stdout.readline())
        clock = httpx.get(info["control_url"] + "clock").json()
        assert clock["offset_seconds"] == -7200.0
        shown = datetime.fromisoformat(clock["now"]).replace(tzinfo=None)
        expected = (datetime.now(UTC) + timedelta(hours=9 - 2)).replace(tzinfo=None)
        assert abs((shown - expected).total_seconds()) < 600  # Tokyo time, two hours behind
    finally:
        process.terminate()
        process.wait(timeout=10)
