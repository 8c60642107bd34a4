"""`perkbridge backfill` refuses to mix import modes for one business unless `--force` is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bridge.conftest import run


def test_backfill_of_the_other_mode_exits_3_unless_forced(
    cli_env: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    code, body, _ = run(capsys, cli_env, "backfill", "--mode", "history", "--json")
    assert code == 0 and body["status"] == "succeeded", body

    code, _, err = run(capsys, cli_env, "backfill", "--mode", "balance", "--json")
    assert code == 3
    assert "history mode" in err and len(err.strip().splitlines()) == 1

    code, body, _ = run(capsys, cli_env, "backfill", "--mode", "balance", "--force", "--json")
    assert code == 0, body
    assert body["read"] == body["applied"] + body["duplicate"] + body["skipped"] + body["dead_lettered"]
