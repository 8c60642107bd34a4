"""Group commit of concurrent single events: same results as one-by-one, failures stay per Space."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine

from perkamo_core.api.writer import EventWriter
from perkamo_core.errors import CoreError
from perkamo_core.models import EventInput, IngestOutcome
from tests.perkamo_core.api.support import OTHER_SPACE, SPACE, make_core


def _event(n: int, txid: str | None = None) -> EventInput:
    return EventInput(user_id=f"u{n % 3}", event="page.viewed", transaction_id=txid or f"pv_{n}")


async def _submit_all(writer: EventWriter, items: Sequence[tuple[str, EventInput]]) -> list[Any]:
    return await asyncio.gather(*(writer.ingest(space, event) for space, event in items), return_exceptions=True)


def test_concurrent_events_share_bulks_and_keep_their_own_results(
    db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = make_core(db_engine)
    calls: list[int] = []
    real = service.ingest_bulk

    def counting(space: str, events: Sequence[EventInput], **kwargs: Any) -> list[IngestOutcome]:
        calls.append(len(events))
        return real(space, events, **kwargs)

    monkeypatch.setattr(service, "ingest_bulk", counting)
    writer = EventWriter(service)
    items = [(SPACE, _event(n)) for n in range(30)] + [(SPACE, _event(99, "pv_0"))]
    try:
        outcomes = asyncio.run(_submit_all(writer, items))
    finally:
        writer.close()
    assert sum(calls) == 31 and len(calls) < 31, "events arriving together are written together"
    assert all(isinstance(o, IngestOutcome) and o.ok for o in outcomes)
    results = [o.result for o in outcomes]
    assert [r["applied"] for r in results] == [True] * 30 + [False]
    assert results[-1]["duplicate"] is True
    assert service.customer(SPACE, "u0")["wallets"] == {"points": 10}  # pv_0, pv_3, …, pv_27 once each


def test_a_failing_space_fails_only_its_own_events(db_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = make_core(db_engine)
    real = service.ingest_bulk

    def flaky(space: str, events: Sequence[EventInput], **kwargs: Any) -> list[IngestOutcome]:
        if space == OTHER_SPACE:
            raise RuntimeError("disk full")
        return real(space, events, **kwargs)

    monkeypatch.setattr(service, "ingest_bulk", flaky)
    writer = EventWriter(service)
    items = [(SPACE if n % 2 else OTHER_SPACE, _event(n)) for n in range(10)]
    try:
        outcomes = asyncio.run(_submit_all(writer, items))
    finally:
        writer.close()
    for n, outcome in enumerate(outcomes):
        if n % 2:
            assert isinstance(outcome, IngestOutcome) and outcome.ok
        else:
            assert isinstance(outcome, RuntimeError)
    assert service.customer(SPACE, "u1")["wallets"] == {"points": 2}  # pv_1 and pv_7
    with pytest.raises(CoreError):
        service.customer(OTHER_SPACE, "u0")
