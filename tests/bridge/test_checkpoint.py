"""``BackfillCheckpoint``: what an unfinished backfill stores, and how it reads back."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bridge.pipeline.checkpoint import BackfillCheckpoint
from bridge.source_clock import CutOver


def test_a_checkpoint_round_trips_through_its_json() -> None:
    checkpoint = BackfillCheckpoint(
        mode="balance",
        cutover=CutOver(datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC), 4411),
        signposts={"users": "2026-03-01T11:00:00+00:00", "connections": None, "transactions": "2026-03-01T12:00:04+00:00"},
    ).with_members_done().advanced(1200)
    back = BackfillCheckpoint.from_json(checkpoint.to_json(), resumed=True)
    assert back == BackfillCheckpoint(
        mode="balance", cutover=checkpoint.cutover, signposts=checkpoint.signposts,
        offset=1200, members_done=True, resumed=True,
    )
    assert "resumed" not in json.loads(checkpoint.to_json())  # never stored


def test_a_checkpoint_of_an_older_version_has_no_signposts() -> None:
    legacy = json.dumps({"mode": "history", "cutover": None, "offset": 300, "members_done": True})
    back = BackfillCheckpoint.from_json(legacy)
    assert back.signposts is None and back.offset == 300 and back.members_done and back.cutover is None
    assert "signposts" not in json.loads(back.to_json())  # stays recognisably old when saved again


def test_advancing_returns_a_new_checkpoint() -> None:
    first = BackfillCheckpoint(mode="history", signposts={})
    moved = first.advanced(50)
    assert first.offset == 0 and moved.offset == 50 and moved.mode == "history"
