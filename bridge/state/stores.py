"""Cursors, the run log, dead letters, the id map and staged users: row ↔ value conversion at the boundary.

Every write method that belongs to a page takes the caller's ``Connection`` so the pipeline can
commit a page's events, cursor, counters and dead letters in one transaction.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, func, select, update

from bridge.state.schema import as_utc, cursors, dead_letters, id_map, runs, staged_users, utcnow
from bridge.state.sql import upsert

Clock = Callable[[], datetime]


def _read(engine: Engine) -> Any:
    """A read-only connection (SQLite: deferred, so readers never queue behind writers)."""
    return engine.connect().execution_options(sqlite_begin="DEFERRED")


# --------------------------------------------------------------------------------------- cursors


@dataclass(frozen=True)
class Cursor:
    """Where a resource's incremental read stands for one business."""

    business: str
    resource: str
    value: str
    run_id: int | None
    updated_at: datetime
    source_newest: str | None = None
    """The source's newest change the last run saw (same clock and form as ``value``)."""


class CursorStore:
    """One cursor per (business, resource); values are opaque strings chosen by the pipeline."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def get(self, business: str, resource: str, conn: Connection | None = None) -> str | None:
        stmt = select(cursors.c.value).where(
            cursors.c.business == business, cursors.c.resource == resource
        )
        if conn is not None:
            value = conn.execute(stmt).scalar()
        else:
            with _read(self._engine) as c:
                value = c.execute(stmt).scalar()
        return None if value is None else str(value)

    def set(
        self,
        conn: Connection,
        business: str,
        resource: str,
        value: str,
        run_id: int | None,
        *,
        source_newest: str | None = None,
    ) -> None:
        """Store ``value``; ``source_newest`` (when given) also replaces the source's newest change."""
        row = {
            "business": business,
            "resource": resource,
            "value": value,
            "run_id": run_id,
            "updated_at": self._clock(),
        }
        columns = ["value", "run_id", "updated_at"]
        if source_newest is not None:
            row["source_newest"] = source_newest
            columns.append("source_newest")
        upsert(conn, cursors, row, keys=("business", "resource"), update=columns)

    def entry(self, business: str, resource: str) -> Cursor | None:
        """The whole cursor row (value and the source's newest change), or None."""
        stmt = select(cursors).where(cursors.c.business == business, cursors.c.resource == resource)
        with _read(self._engine) as c:
            row = c.execute(stmt).mappings().first()
        return None if row is None else _to_cursor(row)

    def observe(self, conn: Connection, business: str, resource: str, source_newest: str) -> None:
        """Record the source's newest change for an existing cursor (its value stays).

        A cursor with none (kept on the bridge's own clock by an earlier version) keeps its NULL,
        which tells sync to replace it.
        """
        conn.execute(
            update(cursors)
            .where(
                cursors.c.business == business,
                cursors.c.resource == resource,
                cursors.c.source_newest.is_not(None),
            )
            .values(source_newest=source_newest)
        )

    def delete(self, conn: Connection, business: str, resource: str) -> None:
        conn.execute(
            delete(cursors).where(cursors.c.business == business, cursors.c.resource == resource)
        )

    def all(self, business: str | None = None) -> list[Cursor]:
        stmt = select(cursors).order_by(cursors.c.business, cursors.c.resource)
        if business is not None:
            stmt = stmt.where(cursors.c.business == business)
        with _read(self._engine) as c:
            return [_to_cursor(r) for r in c.execute(stmt).mappings()]


def _to_cursor(row: Mapping[str, Any]) -> Cursor:
    return Cursor(
        business=row["business"],
        resource=row["resource"],
        value=row["value"],
        run_id=row["run_id"],
        updated_at=as_utc(row["updated_at"]),  # type: ignore[arg-type]
        source_newest=row["source_newest"],
    )


# --------------------------------------------------------------------------------------- run log

COUNTER_NAMES = ("read", "applied", "duplicate", "skipped", "dead_lettered")


@dataclass
class RunCounts:
    """Record counters of a run; ``read == applied + duplicate + skipped + dead_lettered`` always."""

    read: int = 0
    applied: int = 0
    duplicate: int = 0
    skipped: int = 0
    dead_lettered: int = 0

    def add(self, other: RunCounts) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` records read with ``outcome`` (``applied``, ``duplicate``, …)."""
        if outcome not in COUNTER_NAMES[1:]:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.read += n
        setattr(self, outcome, getattr(self, outcome) + n)

    @property
    def balanced(self) -> bool:
        return self.read == self.applied + self.duplicate + self.skipped + self.dead_lettered

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    def __bool__(self) -> bool:
        return self.read > 0


@dataclass(frozen=True)
class RunRecord:
    """One run as the log holds it."""

    id: int
    business: str
    direction: str
    kind: str
    mode: str | None
    target: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    counts: RunCounts
    error: str | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "run_id": self.id,
            "business": self.business,
            "direction": self.direction,
            "kind": self.kind,
            "mode": self.mode,
            "target": self.target,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            **self.counts.as_dict(),
            "error": self.error,
        }
        if self.details:
            body["details"] = self.details
        return body


_SECRETISH = re.compile(
    r"(?i)(access_token|refresh_token|client_secret|password|api[_-]?key|authorization|"
    r"x-perkamo-api-key|token)(['\"]?\s*[:=]\s*['\"]?)([^\s'\",&]+)"
)
_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_KEYLIKE = re.compile(r"\bsk_(test|live)_[A-Za-z0-9_\-]+")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-~+/=]+")


def redact(message: str, secrets: Iterable[str | None] = ()) -> str:
    """``message`` with known secret values, key-like tokens and URL query strings removed."""
    text = message
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SECRETISH.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _BEARER.sub("Bearer ***", text)
    text = _KEYLIKE.sub("sk_***", text)
    text = _URL_QUERY.sub(r"\1?…", text)
    return text[:2000]


class RunLog:
    """Runs with their counters, status, duration and a secret-free error."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def start(
        self,
        business: str,
        *,
        direction: str,
        kind: str,
        mode: str | None = None,
        target: str | None = None,
        owner: str | None = None,
        details: Mapping[str, Any] | None = None,
        started_at: datetime | None = None,
    ) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(
                runs.insert().values(
                    business=business,
                    direction=direction,
                    kind=kind,
                    mode=mode,
                    target=target,
                    status="running",
                    owner=owner,
                    started_at=started_at or self._clock(),
                    read=0,
                    applied=0,
                    duplicate=0,
                    skipped=0,
                    dead_lettered=0,
                    details=json.dumps(dict(details or {}), default=str),
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def add(
        self,
        conn: Connection,
        run_id: int,
        counts: RunCounts,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Add ``counts`` to the run inside the caller's (page) transaction."""
        values: dict[str, Any] = {name: runs.c[name] + getattr(counts, name) for name in COUNTER_NAMES}
        if details is not None:
            values["details"] = json.dumps(dict(details), default=str)
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def finish(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        secrets: Iterable[str | None] = (),
        details: Mapping[str, Any] | None = None,
    ) -> None:
        now = self._clock()
        with self._engine.begin() as conn:
            started = conn.execute(select(runs.c.started_at).where(runs.c.id == run_id)).scalar()
            values: dict[str, Any] = {"status": status, "finished_at": now}
            if started is not None:
                values["duration_ms"] = int((now - as_utc(started)).total_seconds() * 1000)  # type: ignore[operator]
            if error is not None:
                values["error"] = redact(error, secrets)
            if details is not None:
                values["details"] = json.dumps(dict(details), default=str)
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def interrupt_stale(self, business: str, direction: str, *, keep: int | None = None) -> int:
        """Mark earlier ``running`` runs of this lease as ``interrupted`` (their runner died)."""
        with self._engine.begin() as conn:
            stmt = update(runs).where(
                runs.c.business == business,
                runs.c.direction == direction,
                runs.c.status == "running",
            )
            if keep is not None:
                stmt = stmt.where(runs.c.id != keep)
            result = conn.execute(
                stmt.values(status="interrupted", error="the runner stopped before the run finished")
            )
            return int(result.rowcount or 0)

    def get(self, run_id: int) -> RunRecord | None:
        with _read(self._engine) as c:
            row = c.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            return None if row is None else _to_run(row)

    def recent(self, business: str | None = None, limit: int = 10) -> list[RunRecord]:
        stmt = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if business is not None:
            stmt = stmt.where(runs.c.business == business)
        with _read(self._engine) as c:
            return [_to_run(row) for row in c.execute(stmt).mappings()]

    def last_success(self, business: str, kind: str | None = None) -> RunRecord | None:
        stmt = (
            select(runs)
            .where(runs.c.business == business, runs.c.status == "succeeded")
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        if kind is not None:
            stmt = stmt.where(runs.c.kind == kind)
        with _read(self._engine) as c:
            row = c.execute(stmt).mappings().first()
            return None if row is None else _to_run(row)

    def kinds_applied(self, business: str, direction: str) -> set[tuple[str, str | None]]:
        """The ``(kind, mode)`` pairs of the business's runs that applied anything."""
        stmt = (
            select(runs.c.kind, runs.c.mode)
            .where(runs.c.business == business, runs.c.direction == direction, runs.c.applied > 0)
            .group_by(runs.c.kind, runs.c.mode)
        )
        with _read(self._engine) as c:
            return {(kind, mode) for kind, mode in c.execute(stmt).all()}


def _to_run(row: Mapping[str, Any]) -> RunRecord:
    details = json.loads(row["details"]) if row["details"] else {}
    return RunRecord(
        id=row["id"],
        business=row["business"],
        direction=row["direction"],
        kind=row["kind"],
        mode=row["mode"],
        target=row["target"],
        status=row["status"],
        started_at=as_utc(row["started_at"]),  # type: ignore[arg-type]
        finished_at=as_utc(row["finished_at"]),
        duration_ms=row["duration_ms"],
        counts=RunCounts(**{name: int(row[name] or 0) for name in COUNTER_NAMES}),
        error=row["error"],
        details=details,
    )


# ---------------------------------------------------------------------------------- dead letters


@dataclass(frozen=True)
class DeadLetter:
    """A record the bridge could not deliver, with its raw JSON and the reason."""

    id: int
    business: str
    kind: str
    record_id: str
    run_id: int | None
    raw: dict[str, Any]
    reason: str
    detail: str | None
    attempts: int
    status: str
    created_at: datetime
    updated_at: datetime

    def to_json(self, *, with_raw: bool = True) -> dict[str, Any]:
        body = asdict(self)
        if not with_raw:
            body.pop("raw")
        return body


class DeadLetterStore:
    """Dead letters keyed by (business, kind, record id): a repeat failure bumps ``attempts``.

    Statuses: ``open`` (retried by ``deadletters retry``), ``resolved`` (went through since; a
    new failure opens it again), ``discarded`` (the operator's decision: kept for the record,
    never reopened, retried or changed by later runs).
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def put(
        self,
        conn: Connection,
        *,
        business: str,
        kind: str,
        record_id: str,
        raw: Mapping[str, Any],
        reason: str,
        detail: str | None,
        run_id: int | None,
    ) -> None:
        now = self._clock()
        upsert(
            conn,
            dead_letters,
            {
                "business": business,
                "kind": kind,
                "record_id": record_id,
                "run_id": run_id,
                "raw": json.dumps(raw, default=str, ensure_ascii=False),
                "reason": reason[:64],
                "detail": detail,
                "attempts": 1,
                "status": "open",
                "created_at": now,
                "updated_at": now,
            },
            keys=("business", "kind", "record_id"),
            update=("run_id", "raw", "reason", "detail", "status", "updated_at"),
            increments={"attempts": 1},
            # An operator's discard is final: the letter stays as it was, for the record.
            where=dead_letters.c.status != "discarded",
        )

    def resolve(
        self, conn: Connection, business: str, kind: str, record_ids: Sequence[str]
    ) -> int:
        """Mark open dead letters of these records resolved (they went through since)."""
        if not record_ids:
            return 0
        result = conn.execute(
            update(dead_letters)
            .where(
                dead_letters.c.business == business,
                dead_letters.c.kind == kind,
                dead_letters.c.record_id.in_(list(record_ids)),
                dead_letters.c.status == "open",
            )
            .values(status="resolved", updated_at=self._clock())
        )
        return int(result.rowcount or 0)

    def list(
        self,
        business: str | None = None,
        *,
        status: str | None = "open",
        reason: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        stmt = select(dead_letters).order_by(dead_letters.c.id)
        if business is not None:
            stmt = stmt.where(dead_letters.c.business == business)
        if status is not None:
            stmt = stmt.where(dead_letters.c.status == status)
        if reason is not None:
            stmt = stmt.where(dead_letters.c.reason == reason)
        if ids:
            stmt = stmt.where(dead_letters.c.id.in_(list(ids)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with _read(self._engine) as c:
            return [_to_dead_letter(row) for row in c.execute(stmt).mappings()]

    def discard(
        self,
        business: str | None = None,
        *,
        reason: str | None = None,
        ids: Sequence[int] | None = None,
    ) -> int:
        stmt = update(dead_letters).where(dead_letters.c.status == "open")
        if business is not None:
            stmt = stmt.where(dead_letters.c.business == business)
        if reason is not None:
            stmt = stmt.where(dead_letters.c.reason == reason)
        if ids:
            stmt = stmt.where(dead_letters.c.id.in_(list(ids)))
        with self._engine.begin() as conn:
            result = conn.execute(stmt.values(status="discarded", updated_at=self._clock()))
            return int(result.rowcount or 0)

    def bump(self, conn: Connection, dead_letter_id: int, reason: str, detail: str | None) -> None:
        """A retry failed again: count the attempt and keep the newest reason."""
        conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id == dead_letter_id)
            .values(
                attempts=dead_letters.c.attempts + 1,
                reason=reason[:64],
                detail=detail,
                updated_at=self._clock(),
            )
        )

    def mark(self, conn: Connection, dead_letter_id: int, status: str) -> None:
        conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id == dead_letter_id)
            .values(status=status, updated_at=self._clock())
        )

    def counts(self, business: str | None = None) -> dict[str, dict[str, int]]:
        """``{status: {reason: n}}``."""
        stmt = select(dead_letters.c.status, dead_letters.c.reason, func.count()).group_by(
            dead_letters.c.status, dead_letters.c.reason
        )
        if business is not None:
            stmt = stmt.where(dead_letters.c.business == business)
        out: dict[str, dict[str, int]] = {}
        with _read(self._engine) as c:
            for status, reason, n in c.execute(stmt):
                out.setdefault(status, {})[reason] = int(n)
        return out

    def open_count(self, business: str, conn: Connection | None = None) -> int:
        stmt = select(func.count()).where(
            dead_letters.c.business == business, dead_letters.c.status == "open"
        )
        if conn is not None:
            return int(conn.execute(stmt).scalar() or 0)
        with _read(self._engine) as c:
            return int(c.execute(stmt).scalar() or 0)


def _to_dead_letter(row: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        business=row["business"],
        kind=row["kind"],
        record_id=row["record_id"],
        run_id=row["run_id"],
        raw=json.loads(row["raw"]),
        reason=row["reason"],
        detail=row["detail"],
        attempts=int(row["attempts"]),
        status=row["status"],
        created_at=as_utc(row["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(row["updated_at"]),  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------------------- id map


@dataclass(frozen=True)
class IdMapEntry:
    """Which Perkamo customer a Perkville user became, and under which strategy."""

    business: str
    perkville_user_id: str
    customer_id: str
    strategy: str
    connection_id: str | None = None
    connection_status: str | None = None
    perkville_balance: Decimal | None = None
    traits_hash: str | None = None
    adjustments: int = 0

    def exported(self) -> dict[str, Any]:
        """The entry as ``id-map export`` shows it (the columns of ``ID_MAP_CSV_COLUMNS``)."""
        return {column: getattr(self, column) for column in ID_MAP_CSV_COLUMNS}


ID_MAP_CSV_COLUMNS = (
    "business",
    "perkville_user_id",
    "customer_id",
    "strategy",
    "connection_id",
    "connection_status",
    "perkville_balance",
)


class IdMap:
    """The customer id ↔ Perkville user id map, exportable as CSV."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, conn: Connection, entries: Sequence[IdMapEntry]) -> None:
        now = self._clock()
        upsert(
            conn,
            id_map,
            [
                {
                    "business": e.business,
                    "perkville_user_id": e.perkville_user_id,
                    "customer_id": e.customer_id,
                    "strategy": e.strategy,
                    "connection_id": e.connection_id,
                    "connection_status": e.connection_status,
                    "perkville_balance": e.perkville_balance,
                    "traits_hash": e.traits_hash,
                    "adjustments": e.adjustments,
                    "created_at": now,
                    "updated_at": now,
                }
                for e in entries
            ],
            keys=("business", "perkville_user_id"),
            update=(
                "customer_id",
                "strategy",
                "connection_id",
                "connection_status",
                "perkville_balance",
                "traits_hash",
                "updated_at",
            ),
        )

    def get_many(
        self, business: str, user_ids: Iterable[str], conn: Connection | None = None
    ) -> dict[str, IdMapEntry]:
        wanted = list(dict.fromkeys(user_ids))
        if not wanted:
            return {}
        out: dict[str, IdMapEntry] = {}
        for start in range(0, len(wanted), 500):
            stmt = select(id_map).where(
                id_map.c.business == business,
                id_map.c.perkville_user_id.in_(wanted[start : start + 500]),
            )
            if conn is not None:
                rows = list(conn.execute(stmt).mappings())
            else:
                with _read(self._engine) as c:
                    rows = list(c.execute(stmt).mappings())
            for row in rows:
                out[row["perkville_user_id"]] = _to_entry(dict(row))
        return out

    def customer_owner(self, business: str, customer_id: str, conn: Connection) -> str | None:
        """The Perkville user already mapped to ``customer_id`` (collision check), if any."""
        return conn.execute(
            select(id_map.c.perkville_user_id).where(
                id_map.c.business == business, id_map.c.customer_id == customer_id
            )
        ).scalar()

    def iter_all(self, business: str) -> Iterator[IdMapEntry]:
        with _read(self._engine) as c:
            stmt = (
                select(id_map)
                .where(id_map.c.business == business)
                .order_by(id_map.c.perkville_user_id)
            )
            for row in c.execute(stmt).mappings():
                yield _to_entry(row)

    def count(self, business: str | None = None) -> int:
        stmt = select(func.count()).select_from(id_map)
        if business is not None:
            stmt = stmt.where(id_map.c.business == business)
        with _read(self._engine) as c:
            return int(c.execute(stmt).scalar() or 0)

    def next_adjustment(self, conn: Connection, business: str, perkville_user_id: str) -> int:
        """Reserve the next repair number ``n`` for this user (1, 2, …) inside the caller's transaction."""
        conn.execute(
            update(id_map)
            .where(
                and_(id_map.c.business == business, id_map.c.perkville_user_id == perkville_user_id)
            )
            .values(adjustments=id_map.c.adjustments + 1)
        )
        value = conn.execute(
            select(id_map.c.adjustments).where(
                id_map.c.business == business, id_map.c.perkville_user_id == perkville_user_id
            )
        ).scalar()
        if value is None:
            raise KeyError(perkville_user_id)
        return int(value)

    def export_csv(self, business: str, stream: IO[str]) -> int:
        writer = csv.writer(stream)
        writer.writerow(ID_MAP_CSV_COLUMNS)
        n = 0
        for entry in self.iter_all(business):
            writer.writerow(["" if v is None else str(v) for v in entry.exported().values()])
            n += 1
        return n


def _to_entry(row: Mapping[str, Any]) -> IdMapEntry:
    balance = row["perkville_balance"]
    return IdMapEntry(
        business=row["business"],
        perkville_user_id=row["perkville_user_id"],
        customer_id=row["customer_id"],
        strategy=row["strategy"],
        connection_id=row["connection_id"],
        connection_status=row["connection_status"],
        perkville_balance=None if balance is None else plain_decimal(Decimal(str(balance))),
        traits_hash=row["traits_hash"],
        adjustments=int(row["adjustments"] or 0),
    )


def plain_decimal(value: Decimal) -> Decimal:
    """``value`` without trailing zeros or an exponent (``40.000000`` → ``40``, ``1.50`` → ``1.5``)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return Decimal(format(value.normalize(), "f"))


# -------------------------------------------------------------------------------- staged users


class StagedUsers:
    """Raw Perkville user records kept between the users phase and the connections phase."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, conn: Connection, business: str, users: Mapping[str, Mapping[str, Any]]) -> None:
        now = self._clock()
        upsert(
            conn,
            staged_users,
            [
                {
                    "business": business,
                    "perkville_user_id": uid,
                    "raw": _raw_json(raw),
                    "updated_at": now,
                }
                for uid, raw in users.items()
            ],
            keys=("business", "perkville_user_id"),
            update=("raw", "updated_at"),
        )

    def get_many(
        self, business: str, user_ids: Iterable[str], conn: Connection | None = None
    ) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(user_ids))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            stmt = select(staged_users.c.perkville_user_id, staged_users.c.raw).where(
                staged_users.c.business == business,
                staged_users.c.perkville_user_id.in_(wanted[start : start + 500]),
            )
            if conn is not None:
                rows = list(conn.execute(stmt))
            else:
                with _read(self._engine) as c:
                    rows = list(c.execute(stmt))
            for uid, raw in rows:
                out[uid] = _parse_raw(raw)
        return out


def _raw_json(raw: Mapping[str, Any]) -> str:
    """A staged record as compact JSON (orjson; what it refuses goes through the standard library)."""
    try:
        return orjson.dumps(raw, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(raw, default=str, ensure_ascii=False)


def _parse_raw(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits
        return json.loads(text)
