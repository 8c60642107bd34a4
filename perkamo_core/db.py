"""Database engines for SQLite (the zero-set-up default) and PostgreSQL (psycopg 3).

SQLite runs in WAL mode with foreign keys on and a busy timeout, and every transaction begins
with ``BEGIN IMMEDIATE`` so that two writers are serialized instead of failing at commit.  A
read-only block may opt out with ``conn.execution_options(sqlite_begin="DEFERRED")``.
PostgreSQL URLs written as ``postgres://`` or ``postgresql://`` use the psycopg 3 driver.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Every engine ``create_db_engine`` made that is still alive: closed at exit (``_dispose_at_exit``)."""


def _dispose_at_exit() -> None:
    """At exit, close the pooled connections of every engine still alive.

    The last connection to a SQLite file to close checkpoints the WAL into the file and removes
    it, so a copy of the database file alone holds everything committed; PostgreSQL sees each
    connection end cleanly. The interpreter's teardown would close them too, but ``perkbridge``
    leaves without it (``bridge.cli.run``): this runs among the exit handlers either way.
    """
    for engine in list(_ENGINES):
        try:
            engine.dispose()
        except Exception:  # noqa: BLE001 - best effort at exit: a failed close loses nothing committed
            pass


atexit.register(_dispose_at_exit)


def normalize_url(url: str) -> str:
    """Return ``url`` with the driver this project uses for its dialect."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class UnsupportedDatabaseError(ValueError):
    """The URL cannot be parsed, names a backend other than SQLite or PostgreSQL, or a driver
    that is not installed.  The message never repeats the URL (it may hold a password)."""


def create_db_engine(url: str, *, echo: bool = False, pool_size: int = 5) -> Engine:
    """Create an engine for ``url`` with this project's connection settings."""
    from sqlalchemy.exc import ArgumentError

    try:
        url = normalize_url(url)
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The parser's own text quotes pieces of the URL (a bad port may be half a password).
        raise UnsupportedDatabaseError("the URL cannot be parsed") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise UnsupportedDatabaseError(f"unsupported database backend {backend!r}")
    try:
        if backend == "sqlite":
            engine = _create_sqlite_engine(url, echo=echo)
        else:
            engine = create_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
    except ImportError as exc:
        raise UnsupportedDatabaseError(
            f"its driver {exc.name or parsed.get_driver_name()!r} is not installed"
        ) from None
    _ENGINES.add(engine)
    return engine


def _create_sqlite_engine(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    in_memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"echo": echo}
    if in_memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not pysqlite, decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # First, so that every statement below (journal_mode=WAL needs a lock on a new file while
        # other processes open it too) waits for a busy database instead of failing at once.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            # Checkpoint the WAL every ~40 MB instead of every ~4 MB: page-sized bulk writes
            # otherwise spend much of their time copying the WAL back into the database.
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            # 16 MiB page cache (the default is 2 MiB): the pages a bulk import's transaction
            # dirties stay in it; reads come through the memory map below, so a larger cache
            # (64 MiB was measured) only adds to the process's memory, not to its speed.
            cursor.execute("PRAGMA cache_size=-16384")
            # Read the first 256 MiB of the file through a memory map instead of read() calls into
            # the page cache (writes still go through the WAL as before). A disk read error then
            # ends the process instead of failing one statement: nothing committed is at risk.
            cursor.execute("PRAGMA mmap_size=268435456")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"bad sqlite_begin {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class WalCheckpointer:
    """Checkpoints an SQLite WAL from a background thread while a bulk writer runs.

    SQLite checkpoints inside the commit that pushes the WAL past ``wal_autocheckpoint``, and with
    ``synchronous=NORMAL`` that checkpoint is where the database file is synced: the writer waits
    for the disk.  Run as ``with WalCheckpointer(engine):`` around a bulk load, a thread with its
    own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds instead: it
    never blocks the writer (it copies what is committed and syncs while the writer works), and
    the WAL restarts from its beginning whenever it has been copied in full.  Durability is the
    same: commits still go to the WAL as before.  Anything but a file SQLite database: no-op.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.2) -> None:
        self._engine = engine
        self._interval = interval
        self._stop: Any = None
        self._thread: Any = None
        self.checkpoints = 0

    def __enter__(self) -> WalCheckpointer:
        import threading

        database = self._engine.url.database
        if not is_sqlite(self._engine) or database in (None, "", ":memory:"):
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perkbridge-wal-checkpoint", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import sqlite3

        database = self._engine.url.database
        assert database is not None
        try:
            connection = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            while not self._stop.wait(self._interval):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error:
                    continue  # busy or locked for a moment: the next round tries again
        finally:
            connection.close()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
