"""Leases in the database: one runner per named job (``import:{business}``), with expiry and heartbeat.

Acquisition is one atomic statement on both backends: ``INSERT … ON CONFLICT (name) DO UPDATE …
WHERE the lease expired or is already ours``.  On PostgreSQL the conflicting row is locked by the
statement itself; on SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (see
``perkamo_core.db``), so two acquirers serialize.  Several worker processes — the scheduler's, or
two ``perkbridge sync`` runs — can therefore share one database and never run the same job twice.
A holder proves it still owns the lease inside each page transaction (``fence``), so a runner
whose lease was taken over cannot commit another page.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import OperationalError

from bridge.errors import LeaseHeldError, LeaseLostError
from bridge.state.schema import as_utc, leases, utcnow
from bridge.state.sql import upsert

Clock = Callable[[], datetime]


def lease_name(business: str, direction: str) -> str:
    """The lease of one (business, direction) pair, e.g. ``import:25``."""
    return f"{direction}:{business}"


def new_owner_id() -> str:
    """An owner id unique to this process and call: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` (``host:pid[:…]``) names a process of THIS host that has exited.

    A crashed run (``kill -9``) then does not block the next one until its lease expires; owners
    on other hosts are only ever replaced after expiry.
    """
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class Lease:
    """A lease as stored: who holds ``name`` and until when."""

    name: str
    owner: str
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now


class LeaseStore:
    """Acquire, renew, fence and release named leases in the state database."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def try_acquire(self, name: str, owner: str, ttl: timedelta) -> Lease | None:
        """Take ``name`` if it is free, expired or already ours; ``None`` if someone else holds it.

        A lease another live runner holds is seen with a read, no write lock: on SQLite the holder
        keeps the write lock page after page, and a contender must answer "already running", not
        wait behind it for the busy timeout.  A write that still finds the database busy is
        contention too (``None``), never a "database is locked" failure.
        """
        try:
            held = self.holder(name)
            if held is not None and held.owner != owner and not held.expired(self._clock()):
                if not owner_is_dead(held.owner):
                    return None
                return self._take_from_dead(name, held.owner, owner, ttl)
            return self._upsert(name, owner, ttl)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
            return None

    def _upsert(self, name: str, owner: str, ttl: timedelta) -> Lease | None:
        now = self._clock()
        expires = now + ttl
        with self._engine.begin() as conn:
            upsert(
                conn,
                leases,
                {
                    "name": name,
                    "owner": owner,
                    "acquired_at": now,
                    "heartbeat_at": now,
                    "expires_at": expires,
                },
                keys=("name",),
                update=("owner", "acquired_at", "heartbeat_at", "expires_at"),
                where=(leases.c.expires_at <= now) | (leases.c.owner == owner),
            )
            lease = self._read(conn, name)
        if lease is not None and lease.owner != owner and owner_is_dead(lease.owner):
            return self._take_from_dead(name, lease.owner, owner, ttl)
        if lease is None or lease.owner != owner:
            return None
        return lease

    def _take_from_dead(self, name: str, dead: str, owner: str, ttl: timedelta) -> Lease | None:
        """Take over a lease whose holder was a process on this host that no longer exists."""
        now = self._clock()
        with self._engine.begin() as conn:
            result = conn.execute(
                update(leases)
                .where(leases.c.name == name, leases.c.owner == dead)
                .values(owner=owner, acquired_at=now, heartbeat_at=now, expires_at=now + ttl)
            )
            if result.rowcount != 1:
                return None
            return self._read(conn, name)

    def acquire(
        self,
        name: str,
        owner: str,
        ttl: timedelta,
        *,
        wait: bool = False,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        stop: threading.Event | None = None,
    ) -> Lease:
        """Take ``name`` or raise ``LeaseHeldError``; with ``wait`` poll until it frees (or
        ``timeout``, or ``stop`` is set: a stopping scheduler does not wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            lease = self.try_acquire(name, owner, ttl)
            if lease is not None:
                return lease
            holder = self.holder(name)
            stopped = stop is not None and stop.is_set()
            if not wait or stopped or (deadline is not None and time.monotonic() >= deadline):
                who = holder.owner if holder else "another runner"
                until = holder.expires_at.isoformat(timespec="seconds") if holder else "?"
                raise LeaseHeldError(
                    f"{name} is already running (held by {who} until {until}); "
                    "wait for it to finish or pass --wait",
                    name=name,
                    owner=holder.owner if holder else None,
                )
            if stop is not None:
                stop.wait(poll_seconds)
            else:
                time.sleep(poll_seconds)

    def renew(self, name: str, owner: str, ttl: timedelta) -> bool:
        """Extend our lease; ``False`` if it is no longer ours."""
        with self._engine.begin() as conn:
            return self._renew(conn, name, owner, ttl)

    def fence(self, conn: Connection, name: str, owner: str, ttl: timedelta) -> None:
        """Inside a page transaction: renew our lease or raise ``LeaseLostError`` (the caller rolls back)."""
        if not self._renew(conn, name, owner, ttl):
            raise LeaseLostError(
                f"lease {name} was taken over by another runner; this run stops without "
                "committing its current page"
            )

    def _renew(self, conn: Connection, name: str, owner: str, ttl: timedelta) -> bool:
        now = self._clock()
        result = conn.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.owner == owner)
            .values(heartbeat_at=now, expires_at=now + ttl)
        )
        return result.rowcount == 1

    def release(self, name: str, owner: str) -> None:
        """Give the lease up (a no-op when it is not ours any more)."""
        with self._engine.begin() as conn:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.owner == owner))

    def holder(self, name: str) -> Lease | None:
        """The current lease row of ``name``, expired or not."""
        with self._engine.connect() as conn:
            return self._read(conn.execution_options(sqlite_begin="DEFERRED"), name)

    def all(self) -> list[Lease]:
        """Every lease row, by name."""
        with self._engine.connect() as conn:
            rows = (
                conn.execution_options(sqlite_begin="DEFERRED")
                .execute(select(leases).order_by(leases.c.name))
                .mappings()
            )
            return [_to_lease(row) for row in rows]

    def _read(self, conn: Connection, name: str) -> Lease | None:
        row = conn.execute(select(leases).where(leases.c.name == name)).mappings().first()
        return None if row is None else _to_lease(row)


def _is_busy(exc: OperationalError) -> bool:
    """SQLite's SQLITE_BUSY / SQLITE_LOCKED after the busy timeout: another writer holds the lock."""
    text = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text or "database table is locked" in text


def _to_lease(row: object) -> Lease:
    values = dict(row)  # type: ignore[call-overload]
    return Lease(
        name=values["name"],
        owner=values["owner"],
        acquired_at=as_utc(values["acquired_at"]),  # type: ignore[arg-type]
        heartbeat_at=as_utc(values["heartbeat_at"]),  # type: ignore[arg-type]
        expires_at=as_utc(values["expires_at"]),  # type: ignore[arg-type]
    )


class LeaseKeeper:
    """Holds a lease for a block: renews it from a daemon thread every ``ttl / 3``.

    ``lost`` is set when a renewal finds the lease taken over; the page fence stops the run then.
    """

    def __init__(self, store: LeaseStore, lease: Lease, ttl: timedelta) -> None:
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.lease.name

    @property
    def owner(self) -> str:
        return self.lease.owner

    def fence(self, conn: Connection) -> None:
        """Prove ownership inside the caller's transaction (raises ``LeaseLostError``)."""
        self.store.fence(conn, self.lease.name, self.lease.owner, self.ttl)

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._beat, name=f"lease:{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.release(self.lease.name, self.lease.owner)

    def _beat(self) -> None:
        interval = max(self.ttl.total_seconds() / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                if not self.store.renew(self.lease.name, self.lease.owner, self.ttl):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried; the fence decides
                continue
