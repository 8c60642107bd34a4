"""The seeds' curl examples (quickstart 000, API reference 002) work verbatim against ``perkbridge serve``.

The real CLI runs in subprocesses: ``perkbridge keys create`` prints a key, ``perkbridge serve``
listens on loopback, and curl sends the seeds' exact bodies (which carry ``tenant``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.perkamo_core.api.support import SEED_PROGRAM

pytestmark = pytest.mark.slow

# Quickstart (seed 000): the event call and the profile read, exactly as printed there.
QUICKSTART_EVENT = """curl -X POST "https://api.perkamo.com/v1/events" \\
-H "content-type: application/json" \\
-H "x-perkamo-api-key: $PERKAMO_SECRET_KEY" \\
--data '{
"tenant": "commerce-test",
"user_id": "customer_123",
"event": "purchase.completed",
"transaction_id": "order_1092",
"context": {
"order_id": "order_1092",
"amount": 12900,
"currency": "CZK"
}
}'"""
QUICKSTART_PROFILE = """curl "https://api.perkamo.com/v1/profile/customer_123" \\
-H "x-perkamo-api-key: $PERKAMO_SECRET_KEY\""""

# API reference (seed 002): the documented bodies, sent with the same curl form.
REFERENCE_BODIES = {
    "/v1/identify": """{
"tenant": "commerce-test",
"user_id": "customer_123",
"traits": {
"plan": "premium",
"country": "CZ"
}
}""",
    "/v1/events": """{
"tenant": "commerce-test",
"user_id": "customer_123",
"event": "purchase.completed",
"transaction_id": "order_1092",
"context": {
"amount": 12900,
"currency": "CZK"
},
"occurred_at": "2026-06-01T10:00:00.000Z"
}""",
    "/v1/events:batch": """{
"events": [
{
"tenant": "commerce-test",
"user_id": "customer_123",
"event": "page.viewed",
"transaction_id": "pageview_01",
"context": { "path": "/pricing" }
}
]
}""",
    "/v1/rewards/redeem": """{
"tenant": "commerce-test",
"user_id": "customer_123",
"reward_key": "free_shipping",
"transaction_id": "redeem_free_shipping_order_1092"
}""",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _cli_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKBRIDGE_", "PERKAMO_"))}
    env["PERKBRIDGE_DATABASE_URL"] = db_url
    return env


def _create_key(env: dict[str, str]) -> str:
    created = _cli("keys", "create", "--space", "commerce-test", "--json", env=env)
    assert created.returncode == 0, created.stderr
    key = str(json.loads(created.stdout)["key"])
    assert key.startswith("sk_test_")
    return key


@contextmanager
def _serve(env: dict[str, str], log_path: Path, *options: str) -> Iterator[str]:
    """``perkbridge serve`` on a free loopback port until the block ends; yields its base URL."""
    port = _free_port()
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge", *options, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("perkbridge serve did not start: " + log_path.read_text())
            time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``perkbridge keys create`` then ``perkbridge serve``; yields (base URL, key)."""
    env = _cli_env(db_url)
    key = _create_key(env)
    with _serve(env, tmp_path / "serve.log") as base_url:
        yield base_url, key


def _curl(command: str, base_url: str, key: str) -> tuple[int, dict[str, object], str]:
    """Run a seed curl command against ``base_url``; returns status, JSON body and headers text."""
    local = command.replace("https://api.perkamo.com", base_url)
    script = local + ' -sS -D /dev/stderr -o /dev/stdout -w "\\n%{http_code}"'
    done = subprocess.run(
        ["bash", "-c", script], env={**os.environ, "PERKAMO_SECRET_KEY": key}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body), done.stderr


def _reference_curl(path: str) -> str:
    return (
        f'curl -X POST "https://api.perkamo.com{path}" \\\n'
        '-H "content-type: application/json" \\\n'
        '-H "x-perkamo-api-key: $PERKAMO_SECRET_KEY" \\\n'
        f"--data '{REFERENCE_BODIES[path]}'"
    )


def test_seed_curl_examples_against_perkbridge_serve(served: tuple[str, str]) -> None:
    base_url, key = served
    for module, body in SEED_PROGRAM.items():
        answer = httpx.post(
            f"{base_url}/v1/admin/config/{module}",
            json={"version": "2026-06-01", "active": True, "body": body},
            headers={"x-perkamo-api-key": key},
        )
        assert answer.status_code == 200, answer.text

    status, event, headers = _curl(QUICKSTART_EVENT, base_url, key)
    assert status == 200, event
    assert "x-perkamo-request-id: req_" in headers.lower()
    assert event["applied"] is True and event["delta"] == [{"wallet": "points", "amount": 50}]

    status, profile, _ = _curl(QUICKSTART_PROFILE, base_url, key)
    assert status == 200, profile
    assert profile["tenant"] == "commerce-test" and profile["wallets"] == {"points": 50}

    status, identified, _ = _curl(_reference_curl("/v1/identify"), base_url, key)
    assert status == 200, identified
    # The reference's event reuses the quickstart's transaction_id with another context (no
    # order_id): not a replay but a reused id, 409; the quickstart's own body replays.
    status, reused, _ = _curl(_reference_curl("/v1/events"), base_url, key)
    assert status == 409 and reused["code"] == "transaction_id_conflict", reused
    status, replay, _ = _curl(QUICKSTART_EVENT, base_url, key)
    assert status == 200 and replay["duplicate"] is True
    status, batch, _ = _curl(_reference_curl("/v1/events:batch"), base_url, key)
    assert status == 200 and [item["applied"] for item in batch["results"]] == [True]  # type: ignore[index, union-attr]
    status, redeemed, _ = _curl(_reference_curl("/v1/rewards/redeem"), base_url, key)
    assert status == 200, redeemed

    status, profile, _ = _curl(QUICKSTART_PROFILE, base_url, key)
    assert profile["traits"] == {"plan": "premium", "country": "CZ"}
    assert profile["wallets"] == {"points": 11}  # 50 + 1 for the page view - 40 for free shipping
    status, customer, _ = _curl(QUICKSTART_PROFILE.replace("/v1/profile/", "/v1/customer/"), base_url, key)
    assert customer == profile


def test_serve_honours_the_serve_settings(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "perkbridge.toml"
    config.write_text("[serve]\nrate_limit_per_minute = 3\nrequire_signatures = true\n")
    env = _cli_env(db_url)
    key = _create_key(env)
    with _serve(env, tmp_path / "serve.log", "--config", str(config)) as base_url:
        headers = {"x-perkamo-api-key": key}
        unsigned = httpx.post(f"{base_url}/v1/identify", json={"user_id": "u1"}, headers=headers)
        assert unsigned.status_code == 401 and unsigned.json()["code"] == "signature_required"
        assert unsigned.headers["ratelimit-limit"] == "3"
        assert httpx.get(f"{base_url}/v1/usage", headers=headers).status_code == 200
        assert httpx.get(f"{base_url}/v1/usage", headers=headers).status_code == 200
        refused = httpx.get(f"{base_url}/v1/usage", headers=headers)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-remaining"] == "0"
