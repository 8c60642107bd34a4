"""``perkbridge`` leaves without tearing the interpreter down (``bridge.cli.leave``), yet everything
an ordinary exit does that anyone can see still happens: exit status, flushed output, exit
handlers, threads waited for, and SQLite databases closed (no WAL file left beside them)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 120


def _child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )


@pytest.mark.parametrize(
    ("status", "returncode", "stderr"),
    [("None", 0, ""), ("0", 0, ""), ("3", 3, ""), ("'no such business'", 1, "no such business\n")],
)
def test_the_exit_status_is_the_one_sys_exit_would_give(
    tmp_path: Path, status: str, returncode: int, stderr: str
) -> None:
    done = _child(f"from bridge.cli import leave\nleave({status})", tmp_path)
    assert (done.returncode, done.stderr) == (returncode, stderr)


def test_buffered_output_exit_handlers_and_threads_are_not_lost(tmp_path: Path) -> None:
    done = _child(
        """
        import atexit, logging, threading, time
        from pathlib import Path
        from bridge.cli import leave

        logging.basicConfig(filename="run.log", level=logging.INFO)
        logging.getLogger("t").info("logged line")
        atexit.register(lambda: Path("handler.txt").write_text("ran"))

        def late() -> None:
            time.sleep(0.3)  # still running when leave() is called: it must be waited for
            Path("thread.txt").write_text("finished")

        threading.Thread(target=late).start()
        print("buffered, no newline", end="")  # a pipe: block-buffered until flushed
        leave(0)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "handler.txt").read_text() == "ran"
    assert (tmp_path / "thread.txt").read_text() == "finished"
    assert "logged line" in (tmp_path / "run.log").read_text()


def test_a_sqlite_database_left_open_is_closed_and_its_wal_folded_in(tmp_path: Path) -> None:
    done = _child(
        """
        from sqlalchemy import text
        from perkamo_core.db import create_db_engine
        from bridge.cli import leave

        engine = create_db_engine("sqlite:///state.db")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (42)"))
        leave(0)  # the engine was never disposed
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "state.db-wal").exists(), "the WAL was left beside the database"
    # A copy of the database file alone holds what was committed.
    copy = tmp_path / "copy.db"
    copy.write_bytes((tmp_path / "state.db").read_bytes())
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT v FROM t").fetchall() == [(42,)]


def test_the_console_script_and_python_m_bridge_leave_this_way() -> None:
    import bridge.__main__ as entry

    assert entry.run.__module__ == "bridge.cli" and entry.run.__name__ == "run"
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "perkbridge"]
    assert script.value == "bridge.cli:run"
