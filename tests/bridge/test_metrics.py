"""``GET /metrics`` on two real ``perkbridge serve`` processes over one state database, scraped
during and after a backfill from the sandbox, checked against the run log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.pipeline import Pipeline, RunOptions
from bridge.progress import NullProgress
from bridge.reconcile import Reconciler
from bridge.state import RunCounts
from bridge.status import status_report
from bridge.usecases import reconcile
from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import MEMBERS, Bridge, make_client, subprocess_env

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OUTCOMES = ("applied", "duplicate", "skipped", "dead_lettered")


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def shared(samples: Samples) -> Samples:
    """The values read from the state database (every process must answer the same)."""
    return {key: v for key, v in samples.items() if not key[0].startswith("perkbridge_api_")}


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", "0", "--json", "--no-access-log"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert server.stdout is not None
    announced = json.loads(server.stdout.readline())
    assert announced["metrics"] == f"{announced['url']}/metrics"
    return server, str(announced["url"])


def stop_serve(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(timeout=30)
    for stream in (server.stdout, server.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def servers(sandbox: Sandbox, db_url: str, bridge: Bridge) -> Iterator[list[str]]:
    """Two ``serve`` processes on the bridge's database (migrated by ``bridge`` first)."""
    started = [start_serve(subprocess_env(sandbox, db_url)) for _ in range(2)]
    try:
        yield [url for _, url in started]
    finally:
        for server, _ in started:
            stop_serve(server)


def check_against_run_log(samples: Samples, bridge: Bridge) -> None:
    """Records by kind and outcome, runs by status and open dead letters as the state holds them."""
    business = bridge.business
    totals: dict[tuple[str, str], int] = {}
    runs: dict[tuple[str, str], int] = {}
    for run in bridge.state.runs.recent(business, 1000):
        runs[(run.direction, run.status)] = runs.get((run.direction, run.status), 0) + 1
        if run.direction == "import":
            for kind, counts in run.details.get("kinds", {}).items():
                for outcome in OUTCOMES:
                    totals[(kind, outcome)] = totals.get((kind, outcome), 0) + counts[outcome]
    assert totals, "no run recorded any record"
    for (kind, outcome), n in totals.items():
        got = value(samples, "perkbridge_records_total", business=business, kind=kind, outcome=outcome)
        assert (got or 0) == n, (kind, outcome)
    for (direction, status), n in runs.items():
        assert value(samples, "perkbridge_runs", business=business, direction=direction, status=status) == n
    for reason, n in bridge.state.dead_letters.counts(business).get("open", {}).items():
        assert value(samples, "perkbridge_dead_letters_open", business=business, reason=reason) == n


class ScrapeMidway(NullProgress):
    """Scrapes both servers once, after the first page of transactions is committed (the pipeline
    calls ``advance`` on its own thread right after it commits a page)."""

    def __init__(self, urls: list[str], bridge: Bridge) -> None:
        self.urls, self.bridge = urls, bridge
        self.seen: list[Samples] = []

    def advance(self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
                pace: float | None = None) -> None:
        if name == "transactions" and not self.seen:
            self.seen = [scrape(url) for url in self.urls]
            first, second = self.seen
            assert shared(first) == shared(second)
            check_against_run_log(first, self.bridge)
            running = value(first, "perkbridge_runs", business=self.bridge.business, direction="import",
                            status="running")
            assert running == 1


def test_metrics_during_and_after_a_backfill_match_the_run_log_on_two_serve_processes(
    bridge: Bridge, servers: list[str]
) -> None:
    business = bridge.business
    empty = scrape(servers[0])
    assert value(empty, "perkbridge_state_up") == 1
    assert not [key for key in empty if key[0] == "perkbridge_runs"]

    ledger = bridge.box.ledger
    victims = [t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points][:3]
    for txn in victims:
        txn.classification = "BOGUS"  # three dead letters, and balances that differ
    client = make_client(bridge.box, requests_per_second=500.0)
    midway = ScrapeMidway(servers, bridge)
    pipeline = Pipeline(state=bridge.state, source=client, target=bridge.target, config=bridge.config(),
                        progress=midway)
    try:
        summary = pipeline.run(RunOptions(kind="backfill", mode="history"))
        assert summary.status == "succeeded" and summary.counts.dead_lettered == 3
        assert midway.seen, "the backfill never reached its transactions"
        requests = dict(client.stats)
        report = reconcile(
            pipeline, Reconciler(state=bridge.state, source=client, target=bridge.target, business=business),
            mode="history",
        )
    finally:
        client.close()
    assert not report.ok and report.checked == MEMBERS

    first, second = (scrape(url) for url in servers)
    assert shared(first) == shared(second)
    check_against_run_log(first, bridge)
    assert value(first, "perkbridge_dead_letters_open", business=business, reason="bad_classification") == 3
    assert value(first, "perkbridge_runs", business=business, direction="import", status="succeeded") == 1
    assert value(first, "perkbridge_runs", business=business, direction="reconcile", status="mismatched") == 1
    assert value(first, "perkbridge_reconcile_checked", business=business) == MEMBERS
    assert value(first, "perkbridge_reconcile_mismatches", business=business) == len(report.mismatches) > 0
    # Lag per business and resource, as `perkbridge status` computes it.
    lags = [c for c in status_report(bridge.state, business, 1)["cursors"] if c["lag_seconds"] is not None]
    assert lags
    for cursor in lags:
        got = value(first, "perkbridge_cursor_lag_seconds", business=business, resource=cursor["resource"])
        assert got == cursor["lag_seconds"]
    # Perkville answers by status class: what the client counted during the backfill.
    assert requests["status_2xx"] > 0
    for status_class in ("2xx", "4xx", "5xx"):
        got = value(first, "perkbridge_perkville_requests_total", business=business, status_class=status_class)
        assert (got or 0) == requests[f"status_{status_class}"]
    assert (value(first, "perkbridge_perkville_throttled_total", business=business) or 0) == requests["throttled"]
    rate = bridge.state.runs.learned_rate(business)
    assert rate is not None
    assert value(first, "perkbridge_perkville_request_rate", business=business) == rate
    # Finished runs in the duration histogram: the backfill and the reconcile.
    assert value(first, "perkbridge_run_duration_seconds_count", direction="import") == 1
    assert value(first, "perkbridge_run_duration_seconds_count", direction="reconcile") == 1
    assert value(first, "perkbridge_run_duration_seconds_bucket", direction="import", le="+Inf") == 1
    # No customer data in any label: no member id, record id or customer id.
    text = httpx.get(f"{servers[0]}/metrics", timeout=30).text
    for txn in victims:
        assert f'"{txn.id}"' not in text
    assert "perkville:" not in text


def test_api_requests_are_counted_by_route_template_and_status(bridge: Bridge, servers: list[str]) -> None:
    url = servers[0]
    for user in ("alice", "bob", "carol"):
        assert httpx.get(f"{url}/v1/customer/{user}", timeout=30).status_code == 401  # no key
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{url}/no/such/page", timeout=30).status_code == 404
    samples = scrape(url)
    assert value(samples, "perkbridge_api_requests_total", route="/v1/customer/{user_id:path}", method="GET",
                 status="401") == 3
    assert value(samples, "perkbridge_api_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(samples, "perkbridge_api_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(samples, "perkbridge_api_request_duration_seconds_count", route="/healthz", method="GET") == 1
    assert (value(samples, "perkbridge_api_request_duration_seconds_bucket", route="/healthz", method="GET",
                  le="+Inf") == 1)
    assert not [key for key in samples if "alice" in str(key) or "/no/such" in str(key)]
    # The other process answered none of these: each reports its own requests.
    other = scrape(servers[1])
    assert value(other, "perkbridge_api_requests_total", route="/healthz", method="GET", status="200") is None
