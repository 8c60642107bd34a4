"""The run pages: the list, one run (counts, phases, issues, log), its live progress, its rollback
(dry run, then confirm) and its audit pack, signed in through the real app."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bridge.audit.signing import keygen
from bridge.pipeline import Pipeline, RunOptions
from bridge.progress import NullProgress
from bridge.state import RunCounts, RunLog, utcnow
from tests.bridge.conftest import SPACE, Bridge, run
from tests.bridge.dashboard.conftest import SignedIn, dashboard_app, sign_in

pytestmark = pytest.mark.db


def _cell(page: str, row: str, count: str) -> str:
    found = re.search(rf'id="{row}".*?data-count="{count}">([^<]*)<', page, re.S)
    assert found, f"no {count} in {row}"
    return found.group(1)


def _wallets(bridge: Bridge) -> dict[str, Decimal]:
    return dict(bridge.service.wallet_balances(SPACE, "points"))


def test_without_a_session_run_pages_redirect_and_the_rest_answers_401(
    bridge: Bridge, dashboard_client: TestClient
) -> None:
    run_id = bridge.backfill().run_id
    for page in ("/dashboard/runs", f"/dashboard/runs/{run_id}"):
        answer = dashboard_client.get(page, follow_redirects=False)
        assert answer.status_code == 303 and answer.text == ""
        assert answer.headers["location"].startswith("/dashboard/login?next=")
    for path in (f"/dashboard/runs/{run_id}/progress.json", f"/dashboard/runs/{run_id}/audit.zip"):
        answer = dashboard_client.get(path, follow_redirects=False)
        assert answer.status_code == 401 and answer.text == ""
    answer = dashboard_client.post(f"/dashboard/runs/{run_id}/rollback/confirm", data={"csrf_token": "x"})
    assert answer.status_code == 401 and answer.text == ""
    assert bridge.state.runs.recent(limit=1)[0].id == run_id  # no rollback run


def test_a_finished_backfill_shows_its_counts_phases_and_an_empty_issue_list(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    summary = bridge.backfill()
    listing = signed_in.client.get("/dashboard/runs")
    assert listing.status_code == 200
    c = summary.counts
    for name, value in c.as_dict().items():
        assert _cell(listing.text, f"run-{summary.run_id}", name) == f"{value:,}"
    page = signed_in.client.get(f"/dashboard/runs/{summary.run_id}")
    assert page.status_code == 200
    assert f'data-count="read">{c.read:,}<' in page.text and f'data-count="applied">{c.applied:,}<' in page.text
    for phase in ("reference", "users", "members", "transactions"):
        assert f'data-phase="{phase}"' in page.text
    assert 'data-poll=' not in page.text and "runs.js" not in page.text  # finished: nothing to follow
    assert "No error, no dead letter and no warning in this run." in page.text
    assert "transactions done" in page.text  # the log has the phases' ends
    assert signed_in.key not in page.text and bridge.box.credentials["password"] not in page.text
    # Filters: the run is an import that succeeded; no write-back run exists.
    assert f"run-{summary.run_id}" in signed_in.client.get("/dashboard/runs?status=succeeded&direction=import").text
    empty = signed_in.client.get("/dashboard/runs?direction=writeback").text
    assert f"run-{summary.run_id}" not in empty and "No run matches these filters" in empty
    assert signed_in.client.get("/dashboard/runs/999999").status_code == 404


def test_the_list_pages_newest_first(signed_in: SignedIn) -> None:
    runs = signed_in.bridge.state.runs
    ids = [runs.start("77", direction="import", kind="sync") for _ in range(55)]
    first = signed_in.client.get("/dashboard/runs?business=77").text
    assert "55 runs" in first and "page 1 of 2" in first
    shown = [int(n) for n in re.findall(r'id="run-(\d+)"', first)]
    assert shown == sorted(ids, reverse=True)[:50]
    second = signed_in.client.get("/dashboard/runs?business=77&page=2").text
    assert [int(n) for n in re.findall(r'id="run-(\d+)"', second)] == sorted(ids, reverse=True)[50:]


def test_a_dead_lettered_record_is_an_issue_of_the_run_that_made_it(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    victim = next(t for t in bridge.box.ledger.txns.values() if t.status == "ACTIVE" and t.points)
    victim.classification = "MYSTERY"
    bridge.box.ledger.version += 1
    summary = bridge.backfill()
    assert summary.counts.dead_lettered == 1
    page = signed_in.client.get(f"/dashboard/runs/{summary.run_id}").text
    letter = bridge.state.dead_letters.list(bridge.business)[0]
    assert "Dead letters from this run" in page and f">{letter.reason}<" in page
    assert f">{letter.record_id}<" in page


class _Poller(NullProgress):
    """Asks the dashboard for the run's progress.json while the backfill runs (once a phase)."""

    def __init__(self, signed_in: SignedIn) -> None:
        self.signed_in = signed_in
        self.answers: dict[str, dict[str, Any]] = {}
        self.page = ""

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        if name in self.answers:
            return
        run_id = self.signed_in.bridge.state.runs.recent(limit=1)[0].id
        answer = self.signed_in.client.get(f"/dashboard/runs/{run_id}/progress.json")
        assert answer.status_code == 200
        self.answers[name] = answer.json()
        if name == "transactions":
            self.page = self.signed_in.client.get(f"/dashboard/runs/{run_id}").text


def test_a_run_whose_runner_died_shows_when_the_takeover_ended_it(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    started = utcnow() - timedelta(hours=2)
    dead = RunLog(bridge.engine, clock=lambda: started).start(bridge.business, direction="import", kind="sync")
    noticed = started + timedelta(minutes=4, seconds=5)
    assert RunLog(bridge.engine, clock=lambda: noticed).interrupt_stale(bridge.business, "import") == 1
    page = signed_in.client.get(f"/dashboard/runs/{dead}").text
    assert " · finished " in page and "data-poll=" not in page and "Running for" not in page
    assert '<span class="value num" data-live="elapsed">4 min 05 s</span>' in page  # not still counting
    assert "the runner stopped before the run finished" in page
    listing = signed_in.client.get(f"/dashboard/runs?business={bridge.business}").text
    assert f"run-{dead}" in listing and "interrupted" in listing


def test_a_running_backfill_answers_its_progress_json_and_the_page_follows_it(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    poller = _Poller(signed_in)
    pipeline = Pipeline(
        state=bridge.state, source=bridge.client, target=bridge.target, config=bridge.config(), progress=poller
    )
    summary = pipeline.run(RunOptions(kind="backfill", mode="history"))
    assert summary.status == "succeeded"
    body = poller.answers["transactions"]
    assert body["run_id"] == summary.run_id and body["status"] == "running" and body["running"] is True
    names = [p["name"] for p in body["phases"]]
    assert names[-1] == "transactions" and {"users", "members"} <= set(names)
    assert all(p["finished"] for p in body["phases"][:-1]) and not body["phases"][-1]["finished"]
    assert body["counts"]["read"] >= body["counts"]["applied"] > 0
    # The page of a running run polls progress.json (and shows the state without JavaScript).
    assert f'data-poll="/dashboard/runs/{summary.run_id}/progress.json"' in poller.page
    assert '<script src="/dashboard/static/runs.js" defer></script>' in poller.page
    assert 'data-phase="transactions"' in poller.page
    script = signed_in.client.get("/dashboard/static/runs.js")
    assert script.status_code == 200 and "run-progress" in script.text
    done = signed_in.client.get(f"/dashboard/runs/{summary.run_id}/progress.json").json()
    assert done["running"] is False and all(p["finished"] for p in done["phases"])


def test_rollback_dry_run_then_confirm_gives_the_wallets_as_before_the_sync(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    assert bridge.backfill().status == "succeeded"
    before = _wallets(bridge)
    perk = int(next(p["perk_id"] for p in bridge.box.ledger.perks.values()
                    if p["classification"] == "EARN" and p["points"] > 0))
    users = sorted(int(c["user"]) for c in bridge.box.ledger.connections.values())[:3]
    for n, user in enumerate(users):
        bridge.box.add_transaction(perk=perk, user=user, quantity=1 + n)
    sync = bridge.sync()
    moved = _wallets(bridge)
    assert sync.counts.applied >= len(users) and moved != before

    page = signed_in.client.get(f"/dashboard/runs/{sync.run_id}").text
    assert f'action="/dashboard/runs/{sync.run_id}/rollback"' in page
    # Without the CSRF token: refused, nothing written.
    forged = signed_in.post(f"/dashboard/runs/{sync.run_id}/rollback/confirm", {}, csrf=False)
    assert forged.status_code == 403 and _wallets(bridge) == moved

    dry = signed_in.post(f"/dashboard/runs/{sync.run_id}/rollback", {})
    assert dry.status_code == 200 and "Dry run: nothing was written" in dry.text
    assert f'action="/dashboard/runs/{sync.run_id}/rollback/confirm"' in dry.text
    assert _wallets(bridge) == moved
    runs_before = bridge.state.runs.recent(limit=1)[0].id

    # The confirmation answers once the rollback run is recorded and leaves it going: to its page.
    done = signed_in.post(f"/dashboard/runs/{sync.run_id}/rollback/confirm", {})
    assert done.status_code == 303
    rollback = bridge.state.runs.recent(limit=1)[0]
    assert rollback.id > runs_before and rollback.direction == "rollback"
    assert done.headers["location"] == f"/dashboard/runs/{rollback.id}"
    assert _finished(bridge, rollback.id).status == "succeeded"
    assert {k: v for k, v in _wallets(bridge).items() if v or k in before} == before
    reversed_page = signed_in.client.get(f"/dashboard/runs/{rollback.id}").text
    assert 'id="reversed"' in reversed_page and "Nothing was left to reverse" not in reversed_page
    # A rollback run is not rolled back; its page says why and links the run it reverses.
    page = signed_in.client.get(f"/dashboard/runs/{rollback.id}").text
    assert "is itself a rollback" in page and f'href="/dashboard/runs/{sync.run_id}"' in page
    assert signed_in.post(f"/dashboard/runs/{rollback.id}/rollback", {}).status_code == 409


def _finished(bridge: Bridge, run_id: int) -> Any:
    """The run once it has ended (the dashboard's rollback goes on after its answer)."""
    deadline = time.monotonic() + 120
    while (run := bridge.state.runs.get(run_id)) is None or run.status == "running":
        assert time.monotonic() < deadline, f"run {run_id} did not end"
        time.sleep(0.05)
    return run


def test_a_refused_rollback_is_answered_on_its_page_and_starts_nothing(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    first = bridge.backfill()
    runs_before = bridge.state.runs.recent(limit=1)[0].id
    from bridge.state import lease_name

    name = lease_name(bridge.business, "import")
    assert bridge.state.leases.try_acquire(name, "a-running-sync", timedelta(seconds=60)) is not None
    try:
        refused = signed_in.post(f"/dashboard/runs/{first.run_id}/rollback/confirm", {})
    finally:
        bridge.state.leases.release(name, "a-running-sync")
    assert refused.status_code == 409 and "Refused" in refused.text and "already running" in refused.text
    assert bridge.state.runs.recent(limit=1)[0].id == runs_before
    assert signed_in.client.app.state.dashboard.background.running == 0


def test_shutting_down_stops_a_background_rollback_after_its_batch() -> None:
    from bridge.dashboard.background import Background

    background = Background()
    reached = threading.Event()

    def work(stop: threading.Event, started: Any) -> None:
        started(7)
        reached.set()
        stop.wait(120)  # a batch in progress; the shutdown's stop event ends it

    assert background.start("rollback-1", work) == 7
    assert reached.wait(120) and background.running == 1
    background.stop_all()
    assert background.running == 0
    with pytest.raises(RuntimeError, match="shutting down"):
        background.start("rollback-2", work)


def _until_stopped() -> tuple[Any, threading.Event]:
    """Background work that reports run 1, then waits for its stop event (set: ``stopped``)."""
    stopped = threading.Event()

    def work(stop: threading.Event, started: Any) -> None:
        started(1)
        if stop.wait(120):
            stopped.set()

    return work, stopped


def test_the_server_shutting_down_stops_its_background_runs(bridge: Bridge) -> None:
    app = dashboard_app(bridge)
    work, stopped = _until_stopped()
    with TestClient(app):
        background = app.state.dashboard.background
        background.start("rollback-1", work)
        assert background.running == 1
    # The lifespan's end (uvicorn's shutdown) set the run's stop event and waited for it.
    assert stopped.is_set() and background.running == 0


def test_uvicorn_s_shutdown_stops_the_background_runs_too(bridge: Bridge) -> None:
    # What SIGTERM does to `perkbridge serve`: uvicorn sets should_exit, drains, ends the lifespan.
    import uvicorn

    app = dashboard_app(bridge)
    work, stopped = _until_stopped()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = threading.Thread(target=server.run, name="test-uvicorn")
    serving.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert serving.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        app.state.dashboard.background.start("rollback-1", work)
    finally:
        server.should_exit = True
        serving.join(120)
    assert not serving.is_alive()
    assert stopped.is_set() and app.state.dashboard.background.running == 0


def test_the_audit_pack_downloads_and_verifies_or_the_page_says_how_to_configure_the_key(
    signed_in: SignedIn, bridge: Bridge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = bridge.backfill().run_id
    without = signed_in.client.get(f"/dashboard/runs/{run_id}").text
    assert "No signing key is configured" in without and "PERKBRIDGE_AUDIT_KEY" in without
    assert "audit.zip" not in without
    assert signed_in.client.get(f"/dashboard/runs/{run_id}/audit.zip").status_code == 409

    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub"
    keygen(private, public)
    with TestClient(dashboard_app(bridge, PERKBRIDGE_AUDIT_KEY=str(private))) as client:
        assert sign_in(client, signed_in.key).status_code == 303
        page = client.get(f"/dashboard/runs/{run_id}").text
        assert f'href="/dashboard/runs/{run_id}/audit.zip"' in page
        answer = client.get(f"/dashboard/runs/{run_id}/audit.zip")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert f"perkbridge-run-{run_id}-audit.zip" in answer.headers["content-disposition"]
    pack = tmp_path / "pack.zip"
    pack.write_bytes(answer.content)
    config = tmp_path / "perkbridge.toml"
    config.write_text("")
    code, out, err = run(capsys, config, "audit", "verify", str(pack), "--public-key", str(public))
    assert code == 0, err
    assert "verified" in out


def test_the_runs_own_warnings_are_its_issues_and_its_log(
    signed_in: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = signed_in.bridge
    secret = bridge.box.credentials["client_secret"]

    def locked(run_id: int, details: dict[str, Any]) -> None:
        raise RuntimeError(f"database is locked (client_secret={secret})")

    with monkeypatch.context() as patched:
        patched.setattr(bridge.state.runs, "update_details", locked)
        summary = bridge.backfill()
    assert summary.status == "succeeded"
    page = signed_in.client.get(f"/dashboard/runs/{summary.run_id}").text
    assert "1 warning or error line in the" in page
    assert f"run {summary.run_id}: could not record its progress (RuntimeError); the run goes on" in page
    assert 'class="log-warning"' in page and secret not in page
