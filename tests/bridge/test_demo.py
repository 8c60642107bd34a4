"""``perkbridge demo``: sandbox over HTTP with the password grant into a fresh SQLite file, reconciled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main


def test_demo_migrates_reconciles_and_summarizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "demo.db"
    with pytest.raises(SystemExit) as done:
        main(["demo", "--members", "15", "--transactions", "150", "--db", str(database), "--json"])
    assert done.value.code in (0, None)
    body = json.loads(capsys.readouterr().out)
    assert body["members"] == 15 and body["transactions"] == 150
    assert body["balances_matched"] == body["balances_checked"] == 15
    assert body["run"]["status"] == "succeeded" and body["perkville_requests"] > 0
    assert database.exists()
    with pytest.raises(SystemExit) as again:
        main(["demo", "--db", str(database)])
    assert again.value.code == 2  # never migrates into an existing file
    assert "already exists" in capsys.readouterr().err
