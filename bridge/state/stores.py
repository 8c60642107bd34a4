"""Cursors and the run log: row ↔ value conversion at the boundary (dead letters: ``dead_letters``;
the id map and staged users: ``members``).

Every write method that belongs to a page takes the caller's ``Connection`` so the pipeline can
commit a page's events, cursor, counters and dead letters in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update

from bridge.redaction import redact_message
from bridge.state.schema import as_utc, cursors, runs, utcnow
from bridge.state.sql import upsert

Clock = Callable[[], datetime]


def read_connection(engine: Engine) -> Any:
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
            with read_connection(self._engine) as c:
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
        with read_connection(self._engine) as c:
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
        with read_connection(self._engine) as c:
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


def _ended(started: datetime | None, now: datetime) -> dict[str, Any]:
    """A run's end: ``finished_at`` and, when its start is known, ``duration_ms`` (never negative)."""
    values: dict[str, Any] = {"finished_at": now}
    if started is not None:
        values["duration_ms"] = max(0, int((now - as_utc(started)).total_seconds() * 1000))  # type: ignore[operator]
    return values


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
        """Add ``counts`` to the run inside the caller's (page) transaction; ``details`` replaces
        those top-level keys of its details (the others stay)."""
        values: dict[str, Any] = {name: runs.c[name] + getattr(counts, name) for name in COUNTER_NAMES}
        if details is not None:
            values["details"] = _merged_details(conn, run_id, details)
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def update_details(self, run_id: int, details: Mapping[str, Any]) -> None:
        """Replace the given top-level keys of the run's details (the others stay), in a
        transaction of its own (what a run records besides its pages: its progress)."""
        with self._engine.begin() as conn:
            merged = _merged_details(conn, run_id, details)
            conn.execute(update(runs).where(runs.c.id == run_id).values(details=merged))

    def finish(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        secrets: Iterable[str | None] = (),
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """End the run; ``details`` replaces those top-level keys of its details (the others stay)."""
        now = self._clock()
        with self._engine.begin() as conn:
            started = conn.execute(select(runs.c.started_at).where(runs.c.id == run_id)).scalar()
            values: dict[str, Any] = {"status": status, **_ended(started, now)}
            if error is not None:
                values["error"] = redact_message(error, secrets)
            if details is not None:
                values["details"] = _merged_details(conn, run_id, details)
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def interrupt_stale(self, business: str, direction: str, *, keep: int | None = None) -> int:
        """Mark earlier ``running`` runs of this lease as ``interrupted`` (their runner died), ended
        now (when the lease's new holder noticed), their duration from their start; how many."""
        now = self._clock()
        where = [runs.c.business == business, runs.c.direction == direction, runs.c.status == "running"]
        if keep is not None:
            where.append(runs.c.id != keep)
        interrupted = 0
        with self._engine.begin() as conn:
            for run_id, started in conn.execute(select(runs.c.id, runs.c.started_at).where(*where)).all():
                result = conn.execute(
                    update(runs)
                    .where(runs.c.id == run_id, runs.c.status == "running")
                    .values(
                        status="interrupted",
                        error="the runner stopped before the run finished",
                        **_ended(started, now),
                    )
                )
                interrupted += int(result.rowcount or 0)
        return interrupted

    def get(self, run_id: int) -> RunRecord | None:
        with read_connection(self._engine) as c:
            row = c.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            return None if row is None else _to_run(row)

    def recent(self, business: str | None = None, limit: int = 10) -> list[RunRecord]:
        stmt = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if business is not None:
            stmt = stmt.where(runs.c.business == business)
        with read_connection(self._engine) as c:
            return [_to_run(row) for row in c.execute(stmt).mappings()]

    def listing(
        self,
        *,
        business: str | None = None,
        direction: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[RunRecord], int]:
        """One page of the runs matching the filters, newest first, and how many match in all.

        Their ``details`` are left out (empty): a list shows none, and a run's log can be large.
        """
        where = [
            column == value
            for column, value in ((runs.c.business, business), (runs.c.direction, direction), (runs.c.status, status))
            if value is not None
        ]
        with read_connection(self._engine) as c:
            total = int(c.execute(select(func.count()).select_from(runs).where(*where)).scalar() or 0)
            columns = [column for column in runs.c if column.name != "details"]
            rows = c.execute(select(*columns).where(*where).order_by(runs.c.id.desc()).offset(offset).limit(limit))
            return [_to_run(row) for row in rows.mappings()], total

    def values(self, column: str) -> list[str]:
        """The distinct values of ``direction`` or ``status`` in the log (the list's filters)."""
        if column not in ("direction", "status", "business"):
            raise ValueError(f"not a filter column: {column!r}")
        with read_connection(self._engine) as c:
            return sorted(str(v) for (v,) in c.execute(select(runs.c[column]).distinct()))

    def last_success(self, business: str, kind: str | None = None) -> RunRecord | None:
        stmt = (
            select(runs)
            .where(runs.c.business == business, runs.c.status == "succeeded")
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        if kind is not None:
            stmt = stmt.where(runs.c.kind == kind)
        with read_connection(self._engine) as c:
            row = c.execute(stmt).mappings().first()
            return None if row is None else _to_run(row)

    def learned_rate(self, business: str, *, look_back: int = 5) -> float | None:
        """The Perkville request rate (requests/s) the business's latest runs ended with, if any."""
        stmt = (
            select(runs.c.details)
            .where(runs.c.business == business, runs.c.details.is_not(None))
            .order_by(runs.c.id.desc())
            .limit(look_back)
        )
        with read_connection(self._engine) as c:
            for (text,) in c.execute(stmt).all():
                try:
                    rate = json.loads(text).get("request_rate")
                except (TypeError, ValueError, AttributeError):
                    continue
                if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
                    return float(rate)
        return None

    def kinds_applied(self, business: str, direction: str) -> set[tuple[str, str | None]]:
        """The ``(kind, mode)`` pairs of the business's runs that applied anything."""
        stmt = (
            select(runs.c.kind, runs.c.mode)
            .where(runs.c.business == business, runs.c.direction == direction, runs.c.applied > 0)
            .group_by(runs.c.kind, runs.c.mode)
        )
        with read_connection(self._engine) as c:
            return {(kind, mode) for kind, mode in c.execute(stmt).all()}


def _merged_details(conn: Connection, run_id: int, details: Mapping[str, Any]) -> str:
    """The run's stored details with the top-level keys of ``details`` replaced, as JSON text.

    Keys a run wrote earlier (its window at start, its progress) survive a page's or the end's
    write of other keys.
    """
    text = conn.execute(select(runs.c.details).where(runs.c.id == run_id)).scalar()
    try:
        stored = json.loads(text) if text else {}
    except ValueError:
        stored = {}
    merged = {**(stored if isinstance(stored, dict) else {}), **details}
    return json.dumps(merged, default=str)


def _to_run(row: Mapping[str, Any]) -> RunRecord:
    details = json.loads(row["details"]) if row.get("details") else {}
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
