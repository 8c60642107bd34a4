"""The one-shot commands' garbage-collector settings: in force during the run, restored after."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.runs import ONE_SHOT_GC_THRESHOLD, one_shot_gc
from bridge.pipeline import RunOptions
from bridge.pipeline.pipeline import Pipeline
from tests.bridge.conftest import run


def test_one_shot_gc_freezes_start_up_and_restores_the_settings() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with one_shot_gc():
        assert gc.get_threshold() == (ONE_SHOT_GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles made during the run are still collected
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_one_shot_gc_restores_the_settings_when_the_run_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), one_shot_gc():
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_backfill_and_sync_run_with_it_and_leave_the_collector_as_they_found_it(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []
    original = Pipeline.run

    def spy(self: Pipeline, options: RunOptions) -> Any:
        seen.append(gc.get_threshold())
        return original(self, options)

    monkeypatch.setattr(Pipeline, "run", spy)
    before = gc.get_threshold()
    for command in ("backfill", "sync"):
        code, body, _ = run(capsys, cli_env, command, "--json")
        assert code == 0, body
        assert seen[-1] == (ONE_SHOT_GC_THRESHOLD, *before[1:])
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    assert len(seen) == 2


def test_what_a_run_imported_and_opened_after_it_began_is_frozen_too(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.cli import run_cmds, runs

    counts: list[tuple[int, int]] = []

    def spy() -> None:
        before = gc.get_freeze_count()
        runs.started_up()
        counts.append((before, gc.get_freeze_count()))

    monkeypatch.setattr(run_cmds, "started_up", spy)
    for command in ("backfill", "sync"):
        code, body, _ = run(capsys, cli_env, command, "--json")
        assert code == 0, body
        assert gc.get_freeze_count() == 0
    # The run's parts (and the modules they import on use) were made after one_shot_gc froze.
    assert len(counts) == 2 and all(after > before for before, after in counts)


def test_the_commands_import_with_the_collector_paused_and_leave_it_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bridge.cli as cli

    during: list[bool] = []
    monkeypatch.setattr(cli, "_import_and_register", lambda: during.append(gc.isenabled()))
    assert gc.isenabled()
    cli._register_commands()
    assert during == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        cli._register_commands()
        assert not gc.isenabled()  # paused by someone else: left to them
    finally:
        gc.enable()

    def fails() -> None:
        raise ImportError("a command module is broken")

    monkeypatch.setattr(cli, "_import_and_register", fails)
    with pytest.raises(ImportError):
        cli._register_commands()
    assert gc.isenabled()
