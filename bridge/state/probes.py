"""What ``perkbridge probe`` found, per business: the latest report is what runs use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from bridge.state.schema import as_utc, probes, utcnow
from bridge.state.stores import Clock, read_connection


@dataclass(frozen=True)
class ProbeRecord:
    id: int
    business: str
    probed_at: datetime
    report: Mapping[str, Any]


class ProbeStore:
    """Append-only probe reports (JSON, secret-free); ``latest`` is the one that counts."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def record(self, business: str, report: Mapping[str, Any]) -> ProbeRecord:
        at = self._clock()
        with self._engine.begin() as conn:
            result = conn.execute(
                probes.insert().values(
                    business=business, probed_at=at, report=json.dumps(dict(report), default=str)
                )
            )
            key = result.inserted_primary_key
            assert key is not None
        return ProbeRecord(int(key[0]), business, at, dict(report))

    def latest(self, business: str) -> ProbeRecord | None:
        stmt = select(probes).where(probes.c.business == business).order_by(probes.c.id.desc()).limit(1)
        with read_connection(self._engine) as c:
            row = c.execute(stmt).mappings().first()
        return None if row is None else _to_record(row)

    def latest_with(self, business: str, key: str) -> ProbeRecord | None:
        """The newest report that holds ``key`` (e.g. ``write_test``: a later probe without
        ``--write-test`` does not forget the answers an earlier one recorded)."""
        stmt = select(probes).where(probes.c.business == business).order_by(probes.c.id.desc())
        with read_connection(self._engine) as c:
            for row in c.execute(stmt).mappings():
                record = _to_record(row)
                if key in record.report:
                    return record
        return None


def _to_record(row: Mapping[str, Any]) -> ProbeRecord:
    try:
        report = json.loads(row["report"])
    except ValueError:
        report = {}
    probed_at = as_utc(row["probed_at"])
    assert probed_at is not None
    return ProbeRecord(
        int(row["id"]), str(row["business"]), probed_at, report if isinstance(report, dict) else {}
    )
