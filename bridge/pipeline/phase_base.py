"""What every phase of an import run works with: the run's parts and state (declared here,
set by ``Pipeline``), the delivery it supplies, and the sync cursor a page commits.

``MemberPhases`` (``member_phases.py``) and ``TransactionPhases`` (``transaction_phases.py``)
build on it; ``Phases`` (``phases.py``) runs them in order.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bridge.pipeline.checkpoint import BackfillCheckpoint
from bridge.pipeline.options import PipelineConfig
from bridge.pipeline.pages import PageFeed, ReadAhead
from bridge.pipeline.records import ExternalMembers, PageRecord
from bridge.pipeline.tally import PageTally
from bridge.progress import Progress
from bridge.signposts import Signposts
from bridge.sources import PerkvilleSource
from bridge.state import RunCounts, StateStore
from bridge.targets import Target

WriteState = Callable[[Connection, PageTally], None]
"""What commits with a page besides its events: checkpoint, cursor, id map."""


class PhaseBase:
    """The state the phases share (see the module docstring)."""

    state: StateStore
    source: PerkvilleSource
    target: Target
    config: PipelineConfig
    progress: Progress
    stop: threading.Event
    business: str
    feed: PageFeed
    early_signposts: Callable[[], Signposts | None] | None
    _ahead: ReadAhead
    _run_id: int
    _counts: RunCounts
    _locations: dict[str, Any]
    _members: ExternalMembers
    _checkpoint: BackfillCheckpoint | None
    _signposts: dict[str, datetime | None]
    _read_newest: dict[str, datetime]
    _ordered: dict[str, bool]
    _cursors_before: dict[str, datetime | None]
    _clock_details: dict[str, Any]
    _unknown_levels: Counter[str]
    _open_dead_letters: int

    # Supplied by Pipeline.
    def _deliver(self, records: list[PageRecord], kind: str, write_state: WriteState) -> None:
        raise NotImplementedError

    def _fence(self, conn: Connection) -> None:
        raise NotImplementedError

    def _refetch(self, kind: str, record_id: str, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def _set_cursor(self, conn: Connection, resource: str, value: datetime) -> None:
        """Store a sync cursor with the source's newest change this run saw (status's lag)."""
        seen = self._signposts.get(resource)
        self.state.cursors.set(
            conn, self.business, resource, value.isoformat(), self._run_id,
            source_newest=(max(seen, value) if seen is not None else value).isoformat(),
        )
