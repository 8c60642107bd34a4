"""The checkpoint of an unfinished backfill, and the mode a business was imported in.

The checkpoint lives in the ``backfill`` cursor as JSON: the mode, the balance-mode cut-over, the
signposts (the source's newest ``last_mod_dt`` per resource when the backfill first started, in
its own clock), whether the members phase is done and the offset of the next transactions page.
Every page's commit advances it in the same database transaction as the page's events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection

from bridge.errors import ConfigurationError
from bridge.pipeline.options import DIRECTION, Mode
from bridge.source_clock import CutOver
from bridge.state import StateStore

CURSOR = "backfill"
"""The cursor row holding the checkpoint."""


@dataclass(frozen=True)
class BackfillCheckpoint:
    """Where an unfinished backfill stands (values as stored; the source's clock throughout)."""

    mode: Mode
    cutover: CutOver | None = None
    signposts: Mapping[str, str | None] | None = None
    """ISO stamps per resource; ``None`` when an older version wrote the checkpoint (its bounds
    were on this machine's clock)."""
    offset: int = 0
    members_done: bool = False
    resumed: bool = False
    """Loaded from an earlier attempt rather than started by this run (never stored)."""

    def advanced(self, offset: int) -> BackfillCheckpoint:
        return replace(self, offset=offset)

    def with_members_done(self) -> BackfillCheckpoint:
        return replace(self, members_done=True)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "mode": self.mode,
            "cutover": self.cutover.to_text() if self.cutover is not None else None,
            "offset": self.offset,
            "members_done": self.members_done,
        }
        if self.signposts is not None:
            body["signposts"] = dict(self.signposts)
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str, *, resumed: bool = False) -> BackfillCheckpoint:
        body = json.loads(text)
        signposts = body.get("signposts")
        return cls(
            mode=body.get("mode", "history"),
            cutover=CutOver.from_text(body["cutover"]) if body.get("cutover") else None,
            signposts=dict(signposts) if isinstance(signposts, Mapping) else None,
            offset=int(body.get("offset") or 0),
            members_done=bool(body.get("members_done")),
            resumed=resumed,
        )


def load(state: StateStore, business: str, mode: Mode) -> BackfillCheckpoint | None:
    """The unfinished backfill of ``business`` in ``mode`` (``None``: none, or another mode's)."""
    raw = state.cursors.get(business, CURSOR)
    if not raw:
        return None
    saved = BackfillCheckpoint.from_json(raw, resumed=True)
    return saved if saved.mode == mode else None


def save(state: StateStore, conn: Connection, business: str, checkpoint: BackfillCheckpoint, run_id: int) -> None:
    state.cursors.set(conn, business, CURSOR, checkpoint.to_json(), run_id)


def earlier_mode(state: StateStore, business: str) -> Mode | None:
    """The mode the business's points already came in by (``None`` before any import).

    Balance: a balance-mode backfill applied something, or a cut-over is recorded. History: a
    history-mode backfill applied something, or a sync imported rows with no cut-over (its first
    pass reads the whole ledger, like a history backfill).
    """
    modes = state.runs.kinds_applied(business, DIRECTION)
    if state.cursors.get(business, "cutover") is not None or ("backfill", "balance") in modes:
        return "balance"
    if ("backfill", "history") in modes or any(kind == "sync" for kind, _mode in modes):
        return "history"
    return None


def check_mode(state: StateStore, business: str, mode: Mode) -> None:
    """Refuse a backfill whose mode differs from how the business was imported before.

    History after balance (or balance after history) would count the same points twice: the
    opening balances already carry what the ledger rows before the cut-over add up to.
    """
    earlier = earlier_mode(state, business)
    if earlier is not None and earlier != mode:
        raise ConfigurationError(
            f"business {business} was already imported in {earlier} mode; a {mode}-mode "
            f"backfill on top of it would count points twice (use --force only for a fresh Space)"
        )
