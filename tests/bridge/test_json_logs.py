"""``PERKBRIDGE_LOG_FORMAT=json``: every line on stderr is a JSON object (progress, notes, warnings,
library logs, Python warnings, errors and usage errors), through the real CLI in a subprocess.
What the operator asked for on stdout (a summary, a table, ``--json`` bodies) stays output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import SPACE, subprocess_env

TIMEOUT = 180
LEAKS = ("[SQL", "[parameters", "Traceback", "sqlalche.me")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as a JSON object (a plain-text line fails the test, naming it)."""
    records = []
    for line in err.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a plain-text line on stderr under PERKBRIDGE_LOG_FORMAT=json: {line!r}\n{err}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


@pytest.fixture
def env(sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    # An option the SQLite driver ignores makes SQLAlchemy raise a Python warning at start-up.
    url = f"sqlite:///{tmp_path / 'perkbridge.db'}?ignored_option=1"
    return subprocess_env(sandbox, url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="json")


def test_a_backfill_with_its_worker_then_status_and_schedule_status_log_only_json(env: dict[str, str]) -> None:
    done = _run(env, "backfill")
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stderr)
    events = {r.get("event") for r in records}
    assert {"phase_start", "phase_done", "note"} <= events, records
    warned = [r for r in records if r.get("logger") == "py.warnings"]
    assert warned and "SAWarning" in warned[0]["msg"], records
    assert any(r.get("msg", "").startswith("note: loaded the migration program") for r in records), records
    assert done.stdout.startswith("backfill run 1 succeeded: read "), done.stdout  # output, not a log

    for args in (("status",), ("status", "--json"), ("schedule", "--status"), ("program", "from-perkville")):
        shown = _run(env, *args)
        assert shown.returncode == 0, (args, shown.stderr)
        records = json_lines(shown.stderr)
        assert all(r["level"] in ("INFO", "WARNING") for r in records if "level" in r), records
    assert any(r["level"] == "WARNING" and r["msg"].startswith("perk ") for r in records), records


@pytest.mark.parametrize(
    ("args", "extra", "code", "fragment"),
    [
        pytest.param(("backfill", "--since", "yesterday"), {}, 2, "--since is not an ISO-8601 date", id="bad-since"),
        pytest.param(("backfill", "--no-such-option"), {}, 2, "No such option: --no-such-option", id="usage"),
        pytest.param(("no-such-command",), {}, 2, "No such command 'no-such-command'", id="command"),
        pytest.param(("backfill",), {"PERKBRIDGE_DATABASE_URL": "mysql://bridge:pw-s3cret@127.0.0.1/db"}, 3,
                     "PERKBRIDGE_DATABASE_URL is not a usable database URL", id="database"),
        pytest.param(("backfill",), {"PERKVILLE_PASSWORD": ""}, 3, "PERKVILLE_PASSWORD not set", id="credentials"),
    ],
)
def test_a_failing_command_says_it_in_one_json_line(
    env: dict[str, str], args: tuple[str, ...], extra: dict[str, str], code: int, fragment: str
) -> None:
    failed = _run({**env, **extra}, *args)
    assert failed.returncode == code, failed.stderr
    errors = [r for r in json_lines(failed.stderr) if r.get("level") == "ERROR"]
    assert len(errors) == 1, failed.stderr
    assert fragment in errors[0]["msg"] and errors[0]["exit_code"] == code, errors
    assert not any(leak in errors[0]["msg"] for leak in (*LEAKS, "pw-s3cret")), errors
    assert not any(leak in failed.stderr for leak in ("[SQL", "[parameters", "Traceback", "pw-s3cret"))


def test_serve_logs_uvicorn_and_its_own_lines_as_json(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen: list[str] = []
    watchdog = threading.Timer(TIMEOUT, proc.kill)  # a server that never comes up cannot hang the suite
    watchdog.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until uvicorn says it is up (a log line, not a delay)
            seen.append(line)
            if "Application startup complete" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _out, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = json_lines("".join(seen) + rest)
    loggers = {r.get("logger") for r in records}
    assert "uvicorn.error" in loggers, records
    assert any(r.get("msg") == "Shutting down" for r in records), records
    assert any(r.get("msg", "").startswith("perkbridge serve: Perkamo v1 API on http://127.0.0.1:") for r in records)
