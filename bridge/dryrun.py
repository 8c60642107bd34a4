"""``backfill --dry-run``: the same run into a scratch SQLite copy of the engine, then a report; nothing else is written."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bridge.pipeline import Pipeline, PipelineConfig, RunOptions, RunSummary
from bridge.progress import Progress
from bridge.state import StateStore
from bridge.state.members import plain_decimal
from bridge.tiers import TierRow

SCRATCH_SPACE = "dry-run"


@dataclass
class DryRunReport:
    """Counts per kind, the issues, and the balances the engine predicts (vs Perkville's)."""

    run: RunSummary
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    predicted: dict[str, Decimal] = field(default_factory=dict)
    perkville: dict[str, Decimal] = field(default_factory=dict)
    tiers: list[TierRow] | None = None
    """With ``[tiers]``: every member's predicted Perkamo level against its mapped level."""

    @property
    def demotions(self) -> int:
        """Members the run would leave below the level their Perkville level maps to (must be 0)."""
        return sum(1 for row in self.tiers or () if row.demoted)

    @property
    def mismatches(self) -> list[dict[str, Any]]:
        out = []
        for cid, expected in sorted(self.perkville.items()):
            got = self.predicted.get(cid, Decimal(0))
            if got != expected:
                out.append(
                    {
                        "customer_id": cid,
                        "perkville_balance": plain_decimal(expected),
                        "predicted_balance": plain_decimal(got),
                        "difference": plain_decimal(expected - got),
                    }
                )
        return out

    def to_json(self, *, top: int = 20) -> dict[str, Any]:
        counts = self.run.counts.as_dict()
        ranked = sorted(self.predicted.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "dry_run": True,
            "status": self.run.status,
            **counts,
            "kinds": self.run.kinds,
            "issues": self.issues,
            "predicted": {
                "customers": len(self.predicted),
                "total_points": plain_decimal(sum(self.predicted.values(), Decimal(0))),
                "top": [{"customer_id": c, "points": plain_decimal(v)} for c, v in ranked[:top]],
                "balances": {c: plain_decimal(v) for c, v in sorted(self.predicted.items())},
            },
            "predicted_mismatches": self.mismatches,
            **({} if self.tiers is None else {"tiers": {
                "members": [row.to_json() for row in self.tiers],
                "demotions": self.demotions,
                "unknown_levels": self.run.unknown_levels,
            }}),
        }


def run_dry(
    *,
    source: Any,
    config: PipelineConfig,
    options: RunOptions,
    progress: Progress | None = None,
) -> DryRunReport:
    """Run ``options`` against a throw-away SQLite database; the real database is never opened."""
    from bridge.targets import EmbeddedTarget
    from bridge.wiring import core_service
    from perkamo_core.db import create_db_engine

    scratch_dir = Path(tempfile.mkdtemp(prefix="perkbridge-dry-run-"))
    engine = create_db_engine(f"sqlite:///{scratch_dir / 'scratch.db'}")
    try:
        state = StateStore(engine)
        state.migrate()
        service = core_service(engine)
        target = EmbeddedTarget(service, engine, SCRATCH_SPACE, tiers=dict(config.tiers))
        scratch_config = PipelineConfig(**{**config.__dict__, "target_kind": "dry-run"})
        run = Pipeline(
            state=state, source=source, target=target, config=scratch_config, progress=progress
        ).run(RunOptions(kind="backfill", mode=options.mode, since=options.since, until=options.until))
        report = DryRunReport(run=run)
        for letter in state.dead_letters.list(config.business):
            group = report.issues.setdefault(letter.reason, {"count": 0, "examples": []})
            group["count"] += 1
            if len(group["examples"]) < 3:
                group["examples"].append({"kind": letter.kind, "record_id": letter.record_id, "detail": letter.detail})
        report.predicted = {
            cid: Decimal(v) for cid, v in service.wallet_balances(SCRATCH_SPACE, "points").items()
        }
        for entry in state.id_map.iter_all(config.business):
            if entry.perkville_balance is not None:
                report.perkville[entry.customer_id] = entry.perkville_balance
        if config.tiers:
            report.tiers = _predicted_tiers(state, target, config)
        return report
    finally:
        engine.dispose()
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _predicted_tiers(state: StateStore, target: Any, config: PipelineConfig) -> list[TierRow]:
    """Each member's Perkville level (its ``perkville_level`` trait), mapped and as predicted:
    one read of the scratch core's customer read model per member."""
    from bridge.tiers import tier_rows

    members: list[tuple[str, str, str | None]] = []
    levels: dict[str, int | None] = {}
    for entry in state.id_map.iter_all(config.business):
        customer = target.service.customer(target.space, entry.customer_id)
        name = (customer.get("traits") or {}).get("perkville_level")
        level = customer.get("level")
        levels[entry.customer_id] = level.get("level") if isinstance(level, dict) else None
        members.append((entry.customer_id, entry.perkville_user_id, None if name is None else str(name)))
    return tier_rows(members, dict(config.tiers), levels)
