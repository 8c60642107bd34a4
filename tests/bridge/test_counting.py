"""Invariant: whatever mapping and the target answer, a page's counts balance and match its dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine

from bridge.pipeline import PageRecord, Pipeline, PipelineConfig
from bridge.state import LeaseKeeper, RunCounts, StateStore
from bridge.targets import Commit, Delivery
from mapping.types import IdentifyCall, PerkamoEvent

OUTCOMES = st.sampled_from(
    [Delivery("applied"), Delivery("duplicate"), Delivery("rejected", "invalid_request", "no")]
)


class ScriptedTarget:
    """Answers each identify/event with the next scripted outcome, then commits like the embedded target."""

    kind = "scripted"

    def __init__(self, engine: Engine, outcomes: list[Delivery]) -> None:
        self.engine = engine
        self.outcomes = outcomes

    def ensure_program(self) -> str:
        return "scripted"

    def deliver(self, identifies: Sequence[IdentifyCall], events: Sequence[PerkamoEvent], commit: Commit) -> None:
        script = iter(self.outcomes)
        ids = [next(script, Delivery("applied")) for _ in identifies]
        evs = [next(script, Delivery("applied")) for _ in events]
        with self.engine.begin() as conn:
            commit(conn, ids, evs)

    def balances(self, customer_ids: Sequence[str]) -> dict[str, object]:
        return {}


record_shapes = st.lists(
    st.tuples(
        st.sampled_from(["ok", "problem", "skipped"]),
        st.booleans(),  # with an identify call
        st.integers(min_value=0, max_value=2),  # events
    ),
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=record_shapes, outcomes=st.lists(OUTCOMES, max_size=30))
def test_page_counts_balance_and_match_dead_letters(
    db_engine: Engine, shapes: list[tuple[str, bool, int]], outcomes: list[Delivery]
) -> None:
    state = StateStore(db_engine)
    state.migrate()
    pipeline = Pipeline(
        state=state,
        source=None,
        target=ScriptedTarget(db_engine, outcomes),
        config=PipelineConfig(business="b1"),
    )
    pipeline._run_id = state.runs.start("b1", direction="import", kind="backfill")
    lease = state.leases.acquire(f"import:b1:{pipeline._run_id}", "test-owner", timedelta(seconds=60))
    pipeline._keeper = LeaseKeeper(state.leases, lease, timedelta(seconds=60))
    open_before = len(state.dead_letters.list("b1"))
    records = []
    for index, (kind, with_identify, n_events) in enumerate(shapes):
        record = PageRecord("transaction", f"r{pipeline._run_id}-{index}", {"i": index})
        if kind == "problem":
            record.problem = ("bad_points", "points missing")
        elif kind == "skipped":
            record.skipped = True
        else:
            if with_identify:
                record.identify = IdentifyCall(user_id=f"u{index}", traits={}, perkville_user_id=str(index))
            record.events = [
                PerkamoEvent(
                    user_id=f"u{index}", event="e", transaction_id=f"t{index}-{k}",
                    occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
                )
                for k in range(n_events)
            ]
        records.append(record)

    def no_state(_conn: Connection, _page: object) -> None:
        return None

    pipeline._deliver(records, "transaction", no_state)
    counts: RunCounts = pipeline._counts
    assert counts.balanced and counts.read == len(records)
    assert counts.dead_lettered == len(state.dead_letters.list("b1")) - open_before
    run = state.runs.get(pipeline._run_id)
    assert run is not None and run.counts == counts
