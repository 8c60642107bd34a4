"""A ``ConflictError`` from the core rolls the page back and the embedded target sends it again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bridge.errors import TargetError
from bridge.pipeline import Pipeline, RunOptions
from bridge.targets import CONFLICT_ATTEMPTS, EmbeddedTarget
from perkamo_core.errors import ConflictError
from perkamo_core.service import CoreService
from tests.bridge.conftest import SPACE, Bridge, event_count


class CollidingService:
    """The real core, but chosen ``ingest_bulk`` calls write their page and then raise ``ConflictError``
    (as PostgreSQL does when a concurrent writer collides with the page's transaction)."""

    def __init__(self, real: CoreService, fail_calls: set[int]) -> None:
        self.real = real
        self.fail_calls = fail_calls
        self.calls: list[list[str | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def ingest_bulk(self, space: str, events: Sequence[Any], **kwargs: Any) -> Any:
        self.calls.append([e.transaction_id for e in events])
        outcomes = self.real.ingest_bulk(space, events, **kwargs)
        if len(self.calls) in self.fail_calls:
            raise ConflictError("a concurrent writer touched the same rows; roll back and retry the page")
        return outcomes


def _pipeline(bridge: Bridge, service: Any, **config: Any) -> Pipeline:
    target = EmbeddedTarget(service, bridge.engine, SPACE, sleep=lambda _s: None)
    return Pipeline(state=bridge.state, source=bridge.client, target=target, config=bridge.config(**config))


@pytest.mark.parametrize("fail_calls", [pytest.param({1}, id="first-page"), pytest.param({3, 4}, id="a-later-page-twice")])
def test_a_conflicting_page_is_rolled_back_and_retried_with_the_same_ids(
    bridge: Bridge, fail_calls: set[int]
) -> None:
    service = CollidingService(bridge.service, fail_calls)
    summary = _pipeline(bridge, service).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    rows = list(bridge.box.ledger.txns.values())
    not_refs = sum(1 for t in rows if t.status != "VOID_REF")
    voids = sum(1 for t in rows if t.status == "VOID")
    assert summary.kinds["transaction"]["applied"] == not_refs  # counted once, not once per attempt
    assert summary.kinds["transaction"]["duplicate"] == 0
    assert event_count(bridge.engine) == not_refs + voids
    for failed in fail_calls:  # the retry sent exactly the page that collided
        assert service.calls[failed] == service.calls[failed - 1]
    assert bridge.reconcile().ok
    run = bridge.state.runs.get(summary.run_id)
    assert run is not None and run.counts == summary.counts  # the run log counted each page once


def test_persistent_conflicts_fail_the_run_and_commit_nothing_of_the_page(bridge: Bridge) -> None:
    service = CollidingService(bridge.service, set(range(1, CONFLICT_ATTEMPTS + 1)))
    with pytest.raises(TargetError, match=r"run \d+ failed") as failed:
        _pipeline(bridge, service).run(RunOptions(kind="backfill"))
    assert "kept conflicting" in str(failed.value)
    assert len(service.calls) == CONFLICT_ATTEMPTS
    assert event_count(bridge.engine) == 0
    resumed = bridge.backfill("history")  # the checkpoint did not move past the failed page
    assert resumed.status == "succeeded" and bridge.reconcile().ok
