"""Operator errors through the real CLI: one line on stderr, the contract's exit code, and never
SQL, bound parameters, a link to SQLAlchemy's docs or a secret."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import sandbox_settings

PASSWORD = "pw-s3cret-9"
CLIENT_SECRET = "cs-s3cret-7"
LEAKS = ("[SQL", "[parameters", "sqlalche.me", "INSERT", "Traceback", PASSWORD, CLIENT_SECRET)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        # PERKBRIDGE_TEST_* configure the test run itself (the PostgreSQL server), not perkbridge.
        if key.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_")) and not key.startswith("PERKBRIDGE_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PERKVILLE_BUSINESS_ID", "1")
    monkeypatch.setenv("PERKVILLE_CLIENT_ID", "client")
    monkeypatch.setenv("PERKVILLE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("PERKVILLE_USERNAME", "staff")
    monkeypatch.setenv("PERKVILLE_PASSWORD", PASSWORD)
    monkeypatch.setenv("PERKBRIDGE_LOG_FORMAT", "plain")
    return monkeypatch


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clean_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    for leak in LEAKS:
        assert leak not in err, (leak, err)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def existing_database(capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch, path: Path) -> None:
    env.setenv("PERKBRIDGE_DATABASE_URL", f"sqlite:///{path}")
    code, _, err = run(capsys, "status")
    assert code == 0, err
    assert path.exists()


DATABASE_COMMANDS = [
    pytest.param(("backfill",), id="backfill"),
    pytest.param(("customer", "someone"), id="customer"),
    pytest.param(("schedule", "--status"), id="schedule-status"),
]


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        pytest.param("missing-directory", "cannot open the database file", id="missing-directory"),
        pytest.param("not-a-database", "not a SQLite database", id="not-a-database"),
        pytest.param("unreachable", "cannot connect to the database server", id="unreachable"),
        pytest.param("notaurl", "sqlite:///path/to/file.db or postgresql+psycopg://", id="notaurl"),
        pytest.param("unsupported", "(unsupported database backend 'mysql'); use sqlite:///path/to/file.db or "
                     "postgresql+psycopg://", id="unsupported"),
        pytest.param("bad-port", "(the URL cannot be parsed); use sqlite:///path/to/file.db", id="bad-port"),
        pytest.param("missing-driver", "(its driver 'psycopg2' is not installed); use sqlite:///path/to/file.db",
                     id="missing-driver"),
    ],
)
def test_unusable_database_is_one_line_naming_the_setting_exit_3(
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    case: str,
    fragment: str,
    command: tuple[str, ...],
) -> None:
    if case == "missing-directory":
        url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'perkbridge.db'}"
    elif case == "not-a-database":
        text = tmp_path / "notes.db"
        text.write_text("these are notes, not a database\n" * 100)
        url = f"sqlite:///{text}"
    elif case == "unreachable":
        url = f"postgresql+psycopg://bridge:{PASSWORD}@127.0.0.1:{closed_port()}/perkbridge"
    elif case == "notaurl":
        url = f"notaurl{PASSWORD}"
    elif case == "bad-port":
        # An '@' in the password: the parser reads the rest as the port and quotes it.
        url = f"postgresql+psycopg://bridge:x@{PASSWORD}:{PASSWORD}@127.0.0.1/perkbridge"
    elif case == "missing-driver":
        url = f"postgresql+psycopg2://bridge:{PASSWORD}@127.0.0.1/perkbridge"
    else:
        url = f"mysql://bridge:{PASSWORD}@127.0.0.1/perkbridge"
    env.setenv("PERKBRIDGE_DATABASE_URL", url)
    code, out, err = run(capsys, *command)
    assert code == 3, err
    assert_one_clean_line(err, "PERKBRIDGE_DATABASE_URL", fragment)
    assert PASSWORD not in out


@pytest.mark.parametrize("command", [pytest.param(("backfill",), id="backfill"),
                                     pytest.param(("customer", "someone"), id="customer")])
def test_read_only_database_is_one_line_exit_3(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = tmp_path / "perkbridge.db"
    existing_database(capsys, env, path)
    # SQLite's read-only open is what a read-only mount or an immutable file gives the driver.
    env.setenv("PERKBRIDGE_DATABASE_URL", f"sqlite:///file:{path}?mode=ro&uri=true")
    code, _, err = run(capsys, *command)
    assert code == 3, err
    assert_one_clean_line(err, "PERKBRIDGE_DATABASE_URL", f"sqlite file {path}", "read-only",
                          "give a writable database")
    assert "?mode=ro" not in err and "uri=true" not in err  # no query string


def test_immutable_database_file_is_one_line_exit_3(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "perkbridge.db"
    existing_database(capsys, env, path)
    chattr = shutil.which("chattr")
    made = chattr is not None and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
    if not made:
        pytest.skip("chattr +i needs root with CAP_LINUX_IMMUTABLE on a filesystem that supports it; "
                    "the read-only variant is covered by test_read_only_database_is_one_line_exit_3")
    try:
        code, _, err = run(capsys, "backfill")
    finally:
        subprocess.run([str(chattr), "-i", str(path)], check=True)
    assert code == 3, err
    assert_one_clean_line(err, "PERKBRIDGE_DATABASE_URL", "read-only")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("--since", "2025-01-01", "--until", "2024-01-01"), "is not before --until", id="inverted"),
        pytest.param(("--since", "2024-01-01", "--until", "2024-01-01"), "the window is empty", id="empty"),
        pytest.param(("--since", "yesterday"), "--since is not an ISO-8601 date", id="bad-since"),
        pytest.param(("--until", "2024-13-45"), "--until is not an ISO-8601 date", id="bad-until"),
    ],
)
def test_backfill_window_errors_are_usage_errors(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...],
    fragment: str,
) -> None:
    db = tmp_path / "perkbridge.db"
    env.setenv("PERKBRIDGE_DATABASE_URL", f"sqlite:///{db}")
    code, _, err = run(capsys, "backfill", *args)
    assert code == 2, err
    assert_one_clean_line(err, fragment)
    assert not db.exists()  # refused before anything was opened or read


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        pytest.param("directory", "is a directory", id="directory"),
        pytest.param("missing", "config file not found", id="missing"),
        pytest.param("bad-toml", "is not valid TOML", id="bad-toml"),
        pytest.param("unknown-section", "unknown section [writebak] (did you mean [writeback]?)", id="section"),
    ],
)
def test_config_file_errors_are_one_line_exit_3(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, fragment: str
) -> None:
    env.setenv("PERKBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'perkbridge.db'}")
    config = tmp_path / "perkbridge.toml"
    if case == "directory":
        config = tmp_path
    elif case == "bad-toml":
        config.write_text(f'PERKVILLE_PASSWORD = "{PASSWORD}"\nthis is = = not toml\n')
    elif case == "unknown-section":
        config.write_text(f'PERKVILLE_PASSWORD = "{PASSWORD}"\n[writebak]\nenabled = true\n')
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == 3, err
    assert_one_clean_line(err, fragment)


def _cli_with_closed_stdout(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run the real console entry point with stdout a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-c", "from bridge.cli import main; main()", *args],
            stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=120, check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["status", "--json"], id="status-json"),
        pytest.param(["status"], id="status"),
        pytest.param(["idmap"], id="idmap"),
        pytest.param(["schedule", "--status"], id="schedule-status"),
        pytest.param(["--help"], id="help"),
        pytest.param(["backfill", "--help"], id="command-help"),
    ],
)
def test_closed_stdout_ends_quietly_with_exit_0(tmp_path: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))}
    env.update({"PERKBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'perkbridge.db'}", "PERKVILLE_BUSINESS_ID": "1"})
    done = _cli_with_closed_stdout(args, env)
    assert done.stderr.decode() == ""
    assert done.returncode == 0


@pytest.mark.parametrize(
    "unset",
    [
        pytest.param(("PERKVILLE_CLIENT_SECRET",), id="secret"),
        pytest.param(("PERKVILLE_USERNAME", "PERKVILLE_PASSWORD"), id="user-and-password"),
        pytest.param(("PERKVILLE_CLIENT_ID", "PERKVILLE_CLIENT_SECRET", "PERKVILLE_USERNAME", "PERKVILLE_PASSWORD"),
                     id="all"),
    ],
)
def test_missing_credentials_name_exactly_the_missing_settings(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, unset: tuple[str, ...]
) -> None:
    env.setenv("PERKBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'perkbridge.db'}")
    for name in unset:
        env.delenv(name)
    code, _, err = run(capsys, "backfill")
    assert code == 3, err
    assert_one_clean_line(err, f"Perkville credentials missing: {', '.join(unset)} not set", "PERKVILLE_ACCESS_TOKEN")
    named = {n for n in ("PERKVILLE_CLIENT_ID", "PERKVILLE_CLIENT_SECRET", "PERKVILLE_USERNAME", "PERKVILLE_PASSWORD")
             if n in err.split(" not set")[0]}
    assert named == set(unset)


def test_schedule_status_to_a_pipe_is_not_cut_to_80_columns(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    from datetime import UTC, datetime

    from bridge.scheduler import finish_job_run, job_id, prepare_database, start_job_run
    from perkamo_core.db import create_db_engine

    engine = create_db_engine(db_url)
    try:
        prepare_database(engine)
        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        job = job_id("sync", "business-with-a-long-identifier-0123456789")
        run_id = start_job_run(engine, job, "worker-with-a-long-host-name.example.internal:4242", now)
        error = "Perkville answered HTTP 503 on GET /v2/transactions/ " + "and kept answering it " * 6 + "END"
        finish_job_run(engine, run_id, job, "failure", now, error)
    finally:
        engine.dispose()
    env.setenv("PERKBRIDGE_DATABASE_URL", db_url)
    code, out, err = run(capsys, "schedule", "--status")
    assert code == 0, err
    rows = [line for line in out.splitlines() if job in line]
    assert len(rows) == 1, out
    assert error in rows[0]
    assert "worker-with-a-long-host-name.example.internal:4242" in rows[0]


def test_a_run_that_fails_in_the_database_stores_no_sql_or_member_data(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str, sandbox: Sandbox
) -> None:
    from sqlalchemy import text

    from perkamo_core.db import create_db_engine

    for key, value in sandbox_settings(sandbox, db_url).items():
        env.setenv(key, value)
    code, _, err = run(capsys, "status")  # creates the schema
    assert code == 0, err
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:  # the members phase's INSERT (raw users: emails, names) now fails
            conn.execute(text("ALTER TABLE bridge_staged_users RENAME TO bridge_staged_users_moved"))
    finally:
        engine.dispose()
    code, _, err = run(capsys, "backfill")
    assert code == 1, err
    assert_one_clean_line(err.splitlines()[-1], "PERKBRIDGE_DATABASE_URL")  # after the progress lines
    assert not any(leak in err for leak in LEAKS), err
    emails = [e["email"] for user in sandbox.ledger.users.values() for e in user.get("emails", [])]
    code, out, err = run(capsys, "status", "--json")
    assert code == 0, err
    failed = [r for r in json.loads(out)["runs"] if r["status"] == "failed"]
    assert len(failed) == 1, out
    stored = failed[0]["error"]
    assert "\n" not in stored and "PERKBRIDGE_DATABASE_URL" in stored, stored
    code, table, err = run(capsys, "status")
    assert code == 0, err
    for shown in (stored, table):
        for leak in (*LEAKS, "bridge_staged_users", "LINE 1"):
            assert leak not in shown, (leak, shown)
        assert not any(email in shown for email in emails), shown
