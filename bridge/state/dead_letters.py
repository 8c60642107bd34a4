"""Dead letters: records that could not be delivered, with their raw JSON and reason."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from bridge.redaction import redact_record, redact_text
from bridge.state.schema import as_utc, dead_letters, utcnow
from bridge.state.sql import upsert
from bridge.state.stores import Clock, read_connection


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

    def redacted(self, known: Iterable[str] = ()) -> DeadLetter:
        """This letter as a page or the CLI shows it: its raw record and detail without secrets
        (``bridge.redaction``; ``known``: the settings' secret values). The stored letter keeps
        the record as it came."""
        known = tuple(known)
        detail = None if self.detail is None else redact_text(self.detail, known)
        return replace(self, raw=redact_record(self.raw, known), detail=detail)


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
        run_id: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DeadLetter]:
        """Dead letters by id, filtered (``run_id``: those whose latest failure was in that run);
        ``limit`` and ``offset`` page through them."""
        stmt = select(dead_letters).order_by(dead_letters.c.id)
        if run_id is not None:
            stmt = stmt.where(dead_letters.c.run_id == run_id)
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
        if offset:
            stmt = stmt.offset(offset)
        with read_connection(self._engine) as c:
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
        with read_connection(self._engine) as c:
            for status, reason, n in c.execute(stmt):
                out.setdefault(status, {})[reason] = int(n)
        return out

    def of_run(self, run_id: int, *, limit: int = 100) -> tuple[Sequence[DeadLetter], int]:
        """The dead letters whose latest failure was in run ``run_id`` (any status; at most
        ``limit``, by id) and how many there are in all."""
        where = dead_letters.c.run_id == run_id
        with read_connection(self._engine) as c:
            total = int(c.execute(select(func.count()).where(where)).scalar() or 0)
            rows = c.execute(select(dead_letters).where(where).order_by(dead_letters.c.id).limit(limit))
            return [_to_dead_letter(row) for row in rows.mappings()], total

    def open_count(self, business: str, conn: Connection | None = None) -> int:
        stmt = select(func.count()).where(
            dead_letters.c.business == business, dead_letters.c.status == "open"
        )
        if conn is not None:
            return int(conn.execute(stmt).scalar() or 0)
        with read_connection(self._engine) as c:
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
