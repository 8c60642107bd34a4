"""Engine factory and the migration runner, on every backend."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text

from perkamo_core.db import WalCheckpointer, create_db_engine, normalize_url
from perkamo_core.migrations import Migration, migrate


def _create_a(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE a (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))


def _add_b(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE b (id INTEGER PRIMARY KEY)"))


def test_normalize_url_picks_psycopg() -> None:
    assert normalize_url("postgres://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unsupported_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported database backend"):
        create_db_engine("mysql://u@h/db")


def test_migrations_upgrade_in_place(db_engine: Engine) -> None:
    first = [Migration(1, "create a", _create_a)]
    assert migrate(db_engine, "demo", first) == [1]
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO a (id, v) VALUES (1, 10)"))
    # A second start applies nothing; a new version upgrades the existing data in place.
    assert migrate(db_engine, "demo", first) == []
    assert migrate(db_engine, "demo", [*first, Migration(2, "add b", _add_b)]) == [2]
    names = set(inspect(db_engine).get_table_names())
    assert {"a", "b", "schema_migrations"} <= names
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM a")).scalar_one() == 10


def test_migration_versions_must_ascend(db_engine: Engine) -> None:
    with pytest.raises(ValueError, match="unique and ascending"):
        migrate(db_engine, "demo", [Migration(2, "x", _add_b), Migration(1, "y", _create_a)])


def test_failed_migration_leaves_no_record(db_engine: Engine) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE c (id INTEGER PRIMARY KEY)"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        migrate(db_engine, "demo", [Migration(1, "broken", broken)])
    assert migrate(db_engine, "demo", [Migration(1, "fixed", _create_a)]) == [1]


def test_concurrent_writers_do_not_lose_updates(db_engine: Engine) -> None:
    migrate(db_engine, "demo", [Migration(1, "create a", _create_a)])
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO a (id, v) VALUES (1, 0)"))
    lock = " FOR UPDATE" if db_engine.dialect.name == "postgresql" else ""

    def bump() -> None:
        for _ in range(25):
            with db_engine.begin() as conn:
                value = conn.execute(text(f"SELECT v FROM a WHERE id = 1{lock}")).scalar_one()
                conn.execute(text("UPDATE a SET v = :v WHERE id = 1"), {"v": value + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM a")).scalar_one() == 100


def test_sqlite_file_uses_wal(tmp_path: object) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/wal.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar_one() == 268435456
    engine.dispose()


def test_wal_checkpointer_copies_the_wal_while_a_writer_runs(tmp_path: Path) -> None:
    """The background checkpoints keep up with a bulk writer: the WAL restarts instead of growing
    without bound, and what was committed is all there."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'bulk.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
        rows = 0
        with WalCheckpointer(engine, interval=0.005) as checkpointer:
            for batch in range(40):
                with engine.begin() as conn:
                    conn.execute(
                        text("INSERT INTO t (v) VALUES (:v)"),
                        [{"v": "x" * 500} for _ in range(250)],
                    )
                rows += 250
                time.sleep(0.01)
        assert checkpointer.checkpoints > 0
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == rows
        raw = sqlite3.connect(tmp_path / "bulk.db", isolation_level=None)
        try:
            busy, log, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            raw.close()
        assert busy == 0 and log == copied
        # 40 commits of ~130 KB each: without checkpoints the WAL would hold all ~5 MB of them.
        assert (tmp_path / "bulk.db-wal").stat().st_size < 4_000_000
    finally:
        engine.dispose()


def test_wal_checkpointer_is_a_no_op_off_sqlite_files(db_engine: Engine) -> None:
    memory = create_db_engine("sqlite://")
    try:
        for engine in (memory, db_engine):
            if engine is db_engine and engine.dialect.name == "sqlite":
                continue  # a file database: the test above
            with WalCheckpointer(engine, interval=0.001) as checkpointer:
                time.sleep(0.02)
            assert checkpointer.checkpoints == 0
    finally:
        memory.dispose()
