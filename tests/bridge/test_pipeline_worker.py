"""A backfill whose transactions are fetched and mapped in a worker process gives the in-process result."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import RunFailedError
from bridge.pipeline import RunOptions
from bridge.wiring import ClientFactory
from tests.bridge.conftest import Bridge, checksum, event_count


def _with_factory(bridge: Bridge, **overrides: Any) -> None:
    kwargs: dict[str, Any] = {
        **bridge.box.client_kwargs(),
        "page_size": 50,
        "requests_per_second": None,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "timeout": 5.0,
        **overrides,
    }
    bridge.client.perkbridge_factory = ClientFactory(kwargs)  # type: ignore[attr-defined]


def test_fetch_and_map_worker_backfill_equals_the_in_process_one(bridge: Bridge) -> None:
    ledger = bridge.box.ledger
    victim = next(t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points)
    victim.classification = "BOGUS"  # one dead letter: its raw row must come back from the worker
    _with_factory(bridge)
    summary = bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    rows = list(ledger.txns.values())
    not_refs = sum(1 for t in rows if t.status != "VOID_REF")
    voids = sum(1 for t in rows if t.status == "VOID")
    skipped = len(rows) - not_refs
    assert summary.kinds["transaction"] == {
        "read": len(rows), "applied": not_refs - 1, "duplicate": 0, "skipped": skipped, "dead_lettered": 1,
    }
    assert event_count(bridge.engine) == not_refs - 1 + voids
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.record_id == str(victim.id) and letter.raw["classification"] == "BOGUS"
    after_worker = checksum(bridge.engine)

    again = bridge.pipeline(map_workers=0).run(RunOptions(kind="backfill"))
    assert again.counts.applied == 0 and again.counts.dead_lettered == 1
    assert checksum(bridge.engine) == after_worker


def test_a_failing_worker_fails_the_run_with_a_clear_error(bridge: Bridge) -> None:
    _with_factory(bridge, password="wrong-password-VALUE")
    with pytest.raises(RunFailedError) as failed:
        bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert "worker process" in str(failed.value)
    assert "wrong-password-VALUE" not in str(failed.value)
