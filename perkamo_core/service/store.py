"""What every part of the service shares: the database, the clock, write transactions with
bounded retries, and the lookups of a Space and of its active program.

Every write runs in one database transaction: a failure leaves nothing half-written. Writers of
one customer are serialized (``SELECT … FOR UPDATE`` in customer-id order on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and serialization/deadlock failures are retried a bounded number
of times (:func:`run_write`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from perkamo_core import storage as st
from perkamo_core.errors import ConflictError, NotFoundError, ValidationError
from perkamo_core.models import SpaceInfo
from perkamo_core.program import Program
from perkamo_core.storage.bulk import BulkStore

T = TypeVar("T")

_PG_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


class Write(Protocol):
    """Runs ``fn`` in a write transaction (or in the caller's ``conn``): :func:`run_write`."""

    def __call__(self, fn: Callable[[Connection], T], conn: Connection | None = None) -> T: ...


class RetryPage(Exception):
    """A concurrent writer took one of the page's transaction ids: retry the whole transaction."""


def is_retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _PG_RETRY_SQLSTATES:
        return True
    if isinstance(exc, IntegrityError):
        # Two writers created the same customer/event row at once: the retry sees the winner's row.
        return True
    if isinstance(exc, OperationalError) and "locked" in str(orig).lower():
        return True
    return False


def run_write(
    engine: Engine, fn: Callable[[Connection], T], conn: Connection | None, attempts: int
) -> T:
    """Run ``fn`` in a write transaction (or the caller's), retrying transient conflicts."""
    if conn is not None:
        try:
            return fn(conn)
        except RetryPage as exc:
            raise ConflictError(
                "a concurrent redemption used one of the page's transaction ids; roll back "
                "and retry the page with the same transaction ids"
            ) from exc
        except DBAPIError as exc:
            if is_retryable(exc):
                # The caller's transaction is spoiled: it must roll back and retry the page.
                raise ConflictError(
                    "a concurrent writer touched the same rows; roll back and retry the page "
                    "with the same transaction ids"
                ) from exc
            raise
    delay = 0.01
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as own:
                return fn(own)
        except (DBAPIError, RetryPage) as exc:
            if isinstance(exc, DBAPIError) and not is_retryable(exc):
                raise
            if attempt == attempts:
                raise ConflictError(
                    f"the write kept conflicting with concurrent writers after {attempt} "
                    "attempts; retry with the same transaction_id"
                ) from exc
            time.sleep(delay + secrets.randbelow(10) / 1000)
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")  # pragma: no cover


def zone(name: str) -> ZoneInfo:
    """The time zone ``name``, or a ``ValidationError`` naming the field."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {name!r}", field="timezone") from None


@dataclass(frozen=True)
class Space:
    """A Space's row."""

    id: int
    slug: str
    environment: str
    timezone: str
    require_signatures: bool
    created_at: datetime

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def info(self) -> SpaceInfo:
        return SpaceInfo(self.slug, self.environment, self.timezone, self.require_signatures,
                         self.created_at)


class CoreStore:
    """The engine, the clock and the lookups every part of the service makes."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.bulk = BulkStore(engine.dialect.name)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._programs: dict[tuple[int, tuple[tuple[str, int], ...]], Program] = {}

    def now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def insert(self, table: Any) -> Any:
        """The dialect's ``INSERT`` (with ``on_conflict_…``) for ``table``."""
        return pg_dialect.insert(table) if self.postgres else sqlite_dialect.insert(table)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (deferred on SQLite: it takes no write lock)."""
        with self.engine.connect() as conn:
            if not self.postgres:
                conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn

    def space(self, conn: Connection, slug: str) -> Space:
        """The Space ``slug``, or ``NotFoundError``."""
        row = conn.execute(select(st.spaces).where(st.spaces.c.slug == slug)).first()
        if row is None:
            raise NotFoundError(f"Space {slug!r} does not exist", field="space")
        return Space(row.id, row.slug, row.environment, row.timezone, row.require_signatures,
                     row.created_at)

    def program(self, conn: Connection, space_id: int) -> Program:
        """The Space's active program (parsed once per set of active module versions)."""
        pm = st.program_modules
        rows = conn.execute(
            select(pm.c.module, pm.c.id)
            .where(pm.c.space_id == space_id, pm.c.active.is_(True))
            .order_by(pm.c.module)
        ).all()
        cache_key = (space_id, tuple((r.module, r.id) for r in rows))
        cached = self._programs.get(cache_key)
        if cached is not None:
            return cached
        bodies = {
            r.module: r.body
            for r in conn.execute(
                select(pm.c.module, pm.c.body).where(pm.c.id.in_([r.id for r in rows]))
            )
        }
        program = Program.from_modules(bodies)
        if len(self._programs) > 32:
            self._programs.clear()
        self._programs[cache_key] = program
        return program
