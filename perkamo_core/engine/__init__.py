"""The pure rules engine: (program, customer state, event) -> outcome, plus redemption and read-model pieces.

No database session, clock or I/O lives here. The service loads a `CustomerState` (at least the
parts `plan_state_query` names for the event), calls `evaluate`, persists the explicit changes the
`Outcome` lists, and may fold them into the in-memory state with `apply_outcome` to evaluate the
next event of the same customer (the bulk path). A state key the service did not load reads as
zero / absent.

Counter keys (rule limits) are ``"{rule_id}|d|YYYY-MM-DD"`` (local day), ``"{rule_id}|w|YYYY-Www"``
(ISO week of the local day) and ``"{rule_id}|life"``; ``last_applied`` is keyed by rule id. Counters
are kept only for limits a rule actually has.

One module per concern; this package re-exports the public names. `state` (inputs: event, customer
state, state query), `outcome` (outputs and their fast constructors, with `slots`), `decimals`
(context and constants), `plans` (per-event-type plans cached on the program), `periods`,
`evaluation` (`plan_state_query`, `evaluate`), `levels` (`wallet_state`, `compute_level`),
`transitions` (`apply_outcome`, `prune_state`), `redemption` and `views` (the read model).
"""

from __future__ import annotations

from perkamo_core.engine.evaluation import evaluate, plan_state_query
from perkamo_core.engine.levels import compute_level, wallet_state
from perkamo_core.engine.outcome import (
    AchievementIncrement,
    LevelState,
    Outcome,
    RedemptionPlan,
    RuleTrace,
    Unlock,
    WalletDelta,
)
from perkamo_core.engine.periods import period_label
from perkamo_core.engine.redemption import apply_redemption, plan_redemption
from perkamo_core.engine.state import CustomerState, EngineEvent, PerkUnlock, StateQuery, StreakState
from perkamo_core.engine.transitions import apply_outcome, prune_state
from perkamo_core.engine.views import (
    achievements_view,
    active_boosts,
    customer_view,
    flags_view,
    format_datetime,
    next_perks_view,
    perks_view,
    plan_read_query,
    streaks_view,
)
from perkamo_core.limits import MAX_AMOUNT

__all__ = [
    "MAX_AMOUNT",
    "AchievementIncrement",
    "CustomerState",
    "EngineEvent",
    "LevelState",
    "Outcome",
    "PerkUnlock",
    "RedemptionPlan",
    "RuleTrace",
    "StateQuery",
    "StreakState",
    "Unlock",
    "WalletDelta",
    "achievements_view",
    "active_boosts",
    "apply_outcome",
    "apply_redemption",
    "compute_level",
    "customer_view",
    "evaluate",
    "flags_view",
    "format_datetime",
    "next_perks_view",
    "perks_view",
    "period_label",
    "plan_read_query",
    "plan_redemption",
    "plan_state_query",
    "prune_state",
    "streaks_view",
    "wallet_state",
]
