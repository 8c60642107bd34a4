"""Errors keep their class to the CLI: credentials → exit 3, the other side down → exit 4 (retry
later), someone else running → exit 1 "already running"; one line, no secret, the run recorded."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from bridge.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_RETRY_LATER, exit_code_for
from bridge.errors import (
    BridgeError,
    ConfigurationError,
    CredentialsRejectedError,
    LeaseHeldError,
    RunFailedError,
    SourceError,
    SourceUnavailableError,
    TargetError,
    TargetUnavailableError,
    classify,
)
from connectors.perkamo.errors import PerkamoApiError, PerkamoConnectionError
from connectors.perkville.errors import AuthError, PaginationError, RetryBudgetExhausted
from connectors.perkville.sandbox import Faults, Sandbox
from tests.bridge.conftest import run


def _wrapped(inner: BaseException, outer: BridgeError) -> BridgeError:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BridgeError as caught:
        return caught


CASES = [
    (AuthError("token refused"), CredentialsRejectedError, EXIT_CONFIG),
    (RetryBudgetExhausted("503 x6", path="transactions/", attempts=6, last_error="503"),
     SourceUnavailableError, EXIT_RETRY_LATER),
    (_wrapped(PerkamoConnectionError("refused", method="POST", path="/v1/events/batch", attempts=5),
              TargetError("event batch failed")), TargetUnavailableError, EXIT_RETRY_LATER),
    (PerkamoApiError(503, {"error": {"code": "unavailable", "message": "down"}}), TargetUnavailableError,
     EXIT_RETRY_LATER),
    (PerkamoApiError(401, {"error": {"code": "unauthenticated", "message": "no"}}), CredentialsRejectedError,
     EXIT_CONFIG),
    (OperationalError("INSERT INTO x VALUES (?)", ("secret@member",), Exception("unable to open database file")),
     ConfigurationError, EXIT_CONFIG),
    (PaginationError("next link repeats", path="transactions/"), None, None),
    (LeaseHeldError("import:25 is already running", name="import:25", owner="x"), LeaseHeldError, EXIT_FAILURE),
    (SourceError("business 25 is not visible"), SourceError, EXIT_FAILURE),
    (ValueError("a bug"), None, None),
]


@pytest.mark.parametrize(("raised", "expected", "code"), CASES, ids=lambda v: type(v).__name__)
def test_classify_names_what_to_do_next(raised: BaseException, expected: type | None, code: int | None) -> None:
    found = classify(raised)
    if expected is None:
        assert found is None
        return
    assert type(found) is expected
    assert exit_code_for(found) == code
    assert "secret@member" not in found.message and "INSERT" not in found.message


def test_exit_codes_keep_the_contract() -> None:
    assert exit_code_for(ConfigurationError("x")) == 3
    assert exit_code_for(RunFailedError("x")) == 1
    assert exit_code_for(SourceUnavailableError("x")) == exit_code_for(TargetUnavailableError("x")) == 4


def _status_runs(capsys: pytest.CaptureFixture[str], config: Path) -> list[dict[str, object]]:
    code, body, err = run(capsys, config, "status", "--json")
    assert code == 0, err
    return body["runs"]  # type: ignore[no-any-return]


def test_perkville_down_is_retry_later_exit_4_and_the_run_is_recorded(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    cli_env.write_text(cli_env.read_text() + "max_retries = 2\nbackoff_base_seconds = 0\nbackoff_max_seconds = 0\n")
    sandbox.set_faults(Faults(rate_5xx=1.0))
    code, out, err = run(capsys, cli_env, "backfill")
    sandbox.set_faults(Faults())
    assert code == EXIT_RETRY_LATER, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: run ") and "failed" in last and "run the same command again later" in last
    assert "Traceback" not in err and "password" not in err.lower()
    (failed,) = [r for r in _status_runs(capsys, cli_env) if r["status"] == "failed"]
    assert "Perkville did not answer" in str(failed["error"])
    code, _, err = run(capsys, cli_env, "backfill")  # later, Perkville is back: it just works
    assert code == 0, err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_remote_perkamo_that_does_not_answer_is_retry_later_exit_4(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERKAMO_TARGET", "remote")
    monkeypatch.setenv("PERKAMO_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("PERKAMO_SECRET_KEY", "sk_test_not-a-real-key-123")
    code, _, err = run(capsys, cli_env, "backfill")
    assert code == EXIT_RETRY_LATER, err
    last = err.strip().splitlines()[-1]
    assert "Perkamo did not answer" in last and "sk_test_not-a-real-key-123" not in err
    assert json.dumps(_status_runs(capsys, cli_env)).count("sk_test_not-a-real-key-123") == 0
