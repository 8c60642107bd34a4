"""The bridge's state store: cursors, run log, id map, dead letters, leases and reconcile results, in the
core's database."""

from __future__ import annotations

from sqlalchemy import Engine

from bridge.state.dead_letters import DeadLetter, DeadLetterStore
from bridge.state.leases import Lease, LeaseKeeper, LeaseStore, lease_name, new_owner_id
from bridge.state.members import IdMap, IdMapEntry, StagedUsers, plain_decimal
from bridge.state.probes import ProbeRecord, ProbeStore
from bridge.state.reconciled import ReconciledMember, ReconcileResults, ReconcileTotals
from bridge.state.run_events import RunEvent, RunEvents
from bridge.state.schema import MIGRATIONS, as_utc, utcnow
from bridge.state.stores import (
    Clock,
    Cursor,
    CursorStore,
    RunCounts,
    RunLog,
    RunRecord,
)
from perkamo_core.migrations import migrate

__all__ = [
    "MIGRATIONS",
    "Cursor",
    "CursorStore",
    "DeadLetter",
    "DeadLetterStore",
    "IdMap",
    "IdMapEntry",
    "Lease",
    "LeaseKeeper",
    "LeaseStore",
    "ProbeRecord",
    "ProbeStore",
    "ReconcileResults",
    "ReconcileTotals",
    "ReconciledMember",
    "RunCounts",
    "RunEvent",
    "RunEvents",
    "RunLog",
    "RunRecord",
    "StagedUsers",
    "plain_decimal",
    "StateStore",
    "as_utc",
    "lease_name",
    "new_owner_id",
    "utcnow",
]


class StateStore:
    """Every bridge-owned table behind one object; ``migrate()`` creates or upgrades them."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self.cursors = CursorStore(engine, clock=clock)
        self.runs = RunLog(engine, clock=clock)
        self.dead_letters = DeadLetterStore(engine, clock=clock)
        self.id_map = IdMap(engine, clock=clock)
        self.users = StagedUsers(engine, clock=clock)
        self.leases = LeaseStore(engine, clock=clock)
        self.probes = ProbeStore(engine, clock=clock)
        self.run_events = RunEvents(engine, clock=clock)
        self.reconciled = ReconcileResults(engine, clock=clock)

    def migrate(self) -> list[int]:
        """Apply the bridge's missing migrations; returns the versions applied now."""
        return migrate(self.engine, "bridge", MIGRATIONS)
