"""``perkbridge sandbox`` in a subprocess: prints its URLs and credentials, serves, obeys control routes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from connectors.perkville import PerkvilleClient

pytestmark = pytest.mark.slow
PERKBRIDGE = Path(sys.executable).with_name("perkbridge")


def test_cli_sandbox_serves_a_business_over_http() -> None:
    command = [
        str(PERKBRIDGE),
        "sandbox",
        "--port",
        "0",
        "--json",
        "--seed",
        "5",
        "--members",
        "30",
        "--transactions",
        "500",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["api_url"].startswith("http://127.0.0.1:") and info["business_ids"] == [25]
        kwargs = {
            key: info[key]
            for key in ("api_url", "token_url", "client_id", "client_secret", "username", "password")
        }
        with PerkvilleClient(**kwargs, requests_per_second=None, page_size=200) as client:
            ids = [row["transaction_id"] for p in client.iter_transactions(25) for row in p.objects]
            connections = [row for p in client.iter_connections(25) for row in p.objects]
        assert len(ids) == len(set(ids)) == 500
        balances = httpx.get(info["control_url"] + "balances", params={"business": 25}).json()
        assert {c["user"].split("/")[-2]: c["point_balance"] for c in connections} == balances
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_sandbox_rejects_bad_options() -> None:
    result = subprocess.run(
        [str(PERKBRIDGE), "sandbox", "--redeem-sign", "sideways", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--redeem-sign" in result.stderr
