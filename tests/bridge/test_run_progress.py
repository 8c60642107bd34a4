"""A run's phases and log lines in its run-log row, where another process (the dashboard) reads them."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from bridge.journal import LogCapture
from bridge.pipeline import Pipeline, RunOptions
from bridge.progress import NullProgress, RecordedProgress
from bridge.state import RunCounts, StateStore
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import Bridge, run


class _Writes:
    """A run log that only counts the progress written to it."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def update_details(self, run_id: int, details: dict[str, Any]) -> None:
        self.written.append(details["progress"])


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_written_at_phase_boundaries_and_at_most_once_a_second_between() -> None:
    writes, clock = _Writes(), _Clock()
    progress = RecordedProgress(writes, 7, clock=clock)  # type: ignore[arg-type]
    progress.phase("users")
    assert len(writes.written) == 1 and writes.written[0]["phases"][0]["done"] == 0
    for _ in range(50):
        clock.now += 0.01
        progress.advance("users", 10, total=1000, pace=4.0)
    assert len(writes.written) == 1  # half a second of pages: nothing written
    clock.now += 0.6
    progress.advance("users", 10, total=1000)
    assert len(writes.written) == 2
    phase = writes.written[-1]["phases"][0]
    assert (phase["name"], phase["done"], phase["total"], phase["finished"]) == ("users", 510, 1000, False)
    assert phase["rate"] == pytest.approx(510 / 1.1, rel=0.01) and writes.written[-1]["pace"] == 4.0
    progress.done("users", "51 users")
    assert len(writes.written) == 3
    assert writes.written[-1]["phases"][0]["finished"] is True
    assert writes.written[-1]["phases"][0]["summary"] == "51 users"


def test_a_failing_progress_write_is_logged_once_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def update_details(self, run_id: int, details: dict[str, Any]) -> None:
            raise OperationalError("UPDATE bridge_runs", {}, Exception("database is locked"))

    progress = RecordedProgress(Broken(), 3, every=0.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bridge.progress"):
        progress.phase("users")
        progress.advance("users", 5)
        progress.done("users", None)
    assert [r.getMessage() for r in caplog.records] == [
        "run 3: could not record its progress (OperationalError); the run goes on"
    ]
    assert progress.snapshot()["phases"][0]["done"] == 5


def test_log_capture_keeps_the_runs_own_warnings_bounded_and_redacted() -> None:
    capture = LogCapture(("s3cr3t-value",), limit=3)
    other: list[None] = []
    with capture.attached():
        logging.getLogger("connectors.perkville").warning("perkville: answered 429 with s3cr3t-value")
        logging.getLogger("bridge.pipeline").info("an info line is not kept")
        logging.getLogger("unrelated").warning("another library's warning is not kept")
        thread = threading.Thread(
            target=lambda: other.append(logging.getLogger("bridge").warning("another run's line")),
            name="perkbridge-job-2",
        )
        thread.start()
        thread.join()
        for n in range(4):
            logging.getLogger("perkbridge.schedule").error("failure %d", n)
    logging.getLogger("bridge").warning("after the run: not kept")
    lines = capture.lines()
    assert [line["message"] for line in lines] == [
        "perkville: answered 429 with ***",
        "failure 0",
        "failure 1",
        "2 more log lines were left out (at most 3 are kept)",
    ]
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "connectors.perkville"


def _from_helper_thread(message: str) -> None:
    thread = threading.Thread(
        target=lambda: logging.getLogger("connectors.perkville").warning(message), name="perkville-page_0"
    )
    thread.start()
    thread.join()


def test_a_helper_threads_lines_belong_to_the_only_capturing_run_else_to_none() -> None:
    alone, first, second = LogCapture(), LogCapture(), LogCapture()
    with alone.attached():
        _from_helper_thread("page 3 answered 429; retry 1")
    assert [line["message"] for line in alone.lines()] == ["page 3 answered 429; retry 1"]
    with first.attached(), second.attached():  # two runs in one process: whose page was it?
        _from_helper_thread("page 4 answered 429; retry 1")
    assert first.lines() == [] and second.lines() == []


def _phases(state: StateStore, run_id: int) -> dict[str, dict[str, Any]]:
    run = state.runs.get(run_id)
    assert run is not None
    return {p["name"]: p for p in run.details["progress"]["phases"]}


class _Watcher(NullProgress):
    """Reads the run's row through another engine each time a page is counted (as the dashboard)."""

    def __init__(self, db_url: str) -> None:
        self.engine = create_db_engine(db_url)
        self.reader = StateStore(self.engine)
        self.seen: list[dict[str, Any]] = []

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        running = self.reader.runs.recent(limit=1)[0]
        assert running.status == "running"
        self.seen.append({p["name"]: p for p in running.details["progress"]["phases"]}[name])


@pytest.mark.db
def test_a_backfill_leaves_its_phases_in_its_row_and_shows_them_while_it_runs(
    bridge: Bridge, db_url: str
) -> None:
    watcher = _Watcher(db_url)
    try:
        pipeline = Pipeline(
            state=bridge.state, source=bridge.client, target=bridge.target, config=bridge.config(),
            progress=watcher,
        )
        summary = pipeline.run(RunOptions(kind="backfill", mode="history"))
    finally:
        watcher.engine.dispose()
    assert summary.status == "succeeded"
    # Seen from another engine while the run went on: each phase was there, unfinished.
    assert {"users", "members", "transactions"} <= {phase["name"] for phase in watcher.seen}
    assert all(not phase["finished"] for phase in watcher.seen)
    phases = _phases(bridge.state, summary.run_id)
    assert ["reference", "users", "members", "transactions"] == [n for n in phases if n in (
        "reference", "users", "members", "transactions")]
    assert all(p["finished"] and p["finished_at"] for p in phases.values())
    assert phases["transactions"]["done"] == summary.kinds["transaction"]["read"]
    assert phases["members"]["summary"].endswith("members")
    assert isinstance(phases["transactions"]["rate"], float)
    run = bridge.state.runs.get(summary.run_id)
    assert run is not None and run.details["log"] == [] and "kinds" in run.details


@pytest.mark.db
def test_a_progress_write_failure_never_fails_the_run(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(run_id: int, details: dict[str, Any]) -> None:
        raise OperationalError("UPDATE bridge_runs", {}, Exception("database is locked"))

    monkeypatch.setattr(bridge.state.runs, "update_details", locked)
    summary = bridge.backfill()
    assert summary.status == "succeeded" and summary.counts.applied > 0 and summary.counts.balanced
    run = bridge.state.runs.get(summary.run_id)
    assert run is not None and run.counts == summary.counts
    # The end wrote the phases all the same, and the run's log says what went wrong, once.
    assert _phases(bridge.state, summary.run_id)["transactions"]["finished"] is True
    assert [line["message"] for line in run.details["log"]] == [
        f"run {summary.run_id}: could not record its progress (OperationalError); the run goes on"
    ]


@pytest.mark.db
def test_the_backfill_command_tees_its_terminal_progress_with_the_row(
    cli_env: Path, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    code, body, err = run(capsys, cli_env, "backfill", "--json", "--business", os.environ["PERKVILLE_BUSINESS_ID"])
    assert code == 0, err
    assert "phase_done phase=transactions" in err  # the terminal's progress is still there
    engine = create_db_engine(db_url)
    try:
        phases = _phases(StateStore(engine), body["run_id"])
    finally:
        engine.dispose()
    assert phases["transactions"]["finished"] and phases["transactions"]["done"] == body["read"] - phases[
        "members"]["done"]
