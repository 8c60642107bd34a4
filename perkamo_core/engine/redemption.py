"""Redemption: checking a reward's cost against the balance, and applying the plan."""

from __future__ import annotations

from dataclasses import replace

from perkamo_core.engine.decimals import _CTX, _ZERO, _quantize
from perkamo_core.engine.levels import compute_level
from perkamo_core.engine.outcome import RedemptionPlan
from perkamo_core.engine.state import CustomerState
from perkamo_core.engine.transitions import _shallow_copy
from perkamo_core.program import ROUNDING_MODES, Program


def plan_redemption(program: Program, state: CustomerState, reward_key: str) -> RedemptionPlan:
    """Check a reward's cost against the balance (and its per-customer limit); changes nothing."""
    reward = program.reward_defs.get(reward_key)
    if reward is None:
        return RedemptionPlan("unknown_reward", reward_key, f"reward {reward_key!r} is not configured")
    wallet = program.wallet(reward.wallet)
    cost = _quantize(reward.cost, wallet.quantum, ROUNDING_MODES[wallet.rounding])
    balance = state.balances.get(reward.wallet, _ZERO)
    refused = RedemptionPlan(
        "insufficient_balance",
        reward_key,
        f"reward {reward_key!r} costs {cost} {reward.wallet}; the balance is {balance}",
        wallet=reward.wallet,
        cost=cost,
        balance_before=balance,
        balance_after=balance,
        effect=dict(reward.effect),
        reward_name=reward.name,
    )
    limit = reward.limits.per_customer
    if limit is not None and state.reward_counts.get(reward_key, 0) >= limit:
        message = f"reward {reward_key!r} may be redeemed {limit} time(s) per customer"
        return replace(refused, status="limit_reached", message=message)
    if cost > balance and not wallet.allow_negative:
        return refused
    after = _CTX.subtract(balance, cost)
    level = compute_level(program, {**state.balances, reward.wallet: after}, state.lifetime)
    return replace(refused, status="ok", message="redeemed", balance_after=after, level=level)


def apply_redemption(state: CustomerState, plan: RedemptionPlan) -> CustomerState:
    """A new state after a successful redemption plan (the input state is not modified)."""
    if not plan.ok or plan.wallet is None:
        raise ValueError(f"cannot apply a redemption plan with status {plan.status!r}")
    new = _shallow_copy(state)
    new.balances = {**state.balances, plan.wallet: plan.balance_after}
    new.reward_counts = {**state.reward_counts, plan.reward_key: state.reward_counts.get(plan.reward_key, 0) + 1}
    return new
