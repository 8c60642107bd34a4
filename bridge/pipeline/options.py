"""What a run is asked to do and what it reports: plain values read once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bridge.state import RunCounts

Mode = Literal["history", "balance"]
Kind = Literal["backfill", "sync"]
DIRECTION = "import"
IMPORT_KINDS = frozenset({"connection", "transaction"})
"""Dead-letter kinds the import pipeline writes (and retries)."""


@dataclass(frozen=True)
class PipelineConfig:
    """Plain values the pipeline needs from the settings (read once at the edge)."""

    business: str
    timezone: str = "UTC"
    id_strategy: str = "perkville_user"
    lookback_days: int = 45
    overlap_seconds: int = 300
    trait_allow: tuple[str, ...] | None = None
    trait_deny: tuple[str, ...] = ()
    lease_seconds: int = 120
    secrets: tuple[str, ...] = ()
    target_kind: str = "embedded"
    tiers: tuple[tuple[str, int], ...] = ()
    """``[tiers]``: Perkville level name → Perkamo level; empty = no ``perkville.tier_migrated`` events."""


@dataclass(frozen=True)
class RunOptions:
    """What one run does: backfill or sync, the mode, an optional bounded window."""

    kind: Kind = "backfill"
    mode: Mode = "history"
    since: datetime | None = None
    until: datetime | None = None
    wait: bool = False
    wait_timeout: float | None = None
    force: bool = False
    """Run a backfill even though the business already had one of the other mode (see
    ``checkpoint.check_mode``): only right when the target Space holds nothing of the earlier one."""
    allow_partial: bool = False
    """Run a backfill even though the staff account does not see every location's customers."""

    @property
    def windowed(self) -> bool:
        return self.since is not None or self.until is not None


@dataclass
class RunSummary:
    """What a run did; ``to_json`` is the contract shape of ``backfill``/``sync --json``."""

    run_id: int
    status: str
    counts: RunCounts
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    applied_to: frozenset[str] = frozenset()
    """Customer ids that got an applied event in this run (not part of the JSON)."""
    request_rate: float | None = None
    """The Perkville requests/s the adaptive budget ended the run with (the next run starts there)."""
    unknown_levels: dict[str, int] = field(default_factory=dict)
    """Perkville level names ``[tiers]`` does not map, with the members carrying each."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"run_id": self.run_id, "status": self.status, **self.counts.as_dict()}
        body["kinds"] = self.kinds
        body["seconds"] = round(self.seconds, 3)
        if self.request_rate is not None:
            body["request_rate"] = self.request_rate
        if self.error:
            body["error"] = self.error
        if self.unknown_levels:
            body["unknown_levels"] = self.unknown_levels
        return body
