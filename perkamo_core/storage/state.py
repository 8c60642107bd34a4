"""The customer state document (``core_customers.state``): :class:`CustomerState` as stored text."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from perkamo_core.engine import CustomerState, PerkUnlock
from perkamo_core.storage.columns import dump_json, load_json_exact

_ZERO = Decimal(0)

_FAST_SECTIONS = frozenset(
    {"balances", "lifetime", "perks", "counters", "event_counts", "reward_counts"}
)


def _trigger_doc(trigger: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in trigger.items()}


def _trigger_value(key: str, value: Any) -> Any:
    if key == "amount" and isinstance(value, str):
        amount = Decimal(value)
        return int(amount) if int(amount) == amount else amount.normalize()
    return value


def encode_state(state: CustomerState) -> str:
    """The stored state document: ``CustomerState.to_json`` without its empty sections.

    The common state (balances, lifetime totals, unlocked perks) is encoded here directly, in the
    same format, because it is written once per customer per page.
    """
    if (state.achievements or state.last_applied or state.achievement_totals
            or state.achievement_days or state.streaks):
        return dump_json({k: v for k, v in state.to_json().items() if v})
    doc: dict[str, Any] = {}
    if state.balances:
        doc["balances"] = {k: str(v) for k, v in state.balances.items()}
    if state.lifetime:
        doc["lifetime"] = {k: str(v) for k, v in state.lifetime.items()}
    if state.perks:
        doc["perks"] = {
            k: {"unlocked_at": p.unlocked_at.isoformat(), "trigger": _trigger_doc(p.trigger)}
            for k, p in state.perks.items()
        }
    if state.event_counts:
        doc["event_counts"] = state.event_counts
    if state.counters:
        doc["counters"] = state.counters
    if state.reward_counts:
        doc["reward_counts"] = state.reward_counts
    return dump_json(doc)


def state_balance(text: str, wallet: str) -> Decimal:
    """The balance of ``wallet`` in a stored state document (0 when it never moved)."""
    if text == "{}":
        return _ZERO
    value = load_json_exact(text).get("balances", {}).get(wallet)
    return _ZERO if value is None else Decimal(value)


def decode_state(text: str) -> CustomerState:
    """Inverse of :func:`encode_state` (a customer created without state stores ``{}``)."""
    if text == "{}":
        return CustomerState()
    doc = load_json_exact(text)  # Decimals are stored as strings: no float literal inside
    if not doc.keys() <= _FAST_SECTIONS:
        return CustomerState.from_json(doc)
    perks = doc.get("perks")
    return CustomerState(
        balances={k: Decimal(v) for k, v in doc.get("balances", {}).items()},
        lifetime={k: Decimal(v) for k, v in doc.get("lifetime", {}).items()},
        perks={
            k: PerkUnlock(
                k, datetime.fromisoformat(p["unlocked_at"]),
                {tk: _trigger_value(tk, tv) for tk, tv in (p.get("trigger") or {}).items()},
            )
            for k, p in perks.items()
        } if perks else {},
        event_counts=dict(doc.get("event_counts", {})),
        counters=dict(doc.get("counters", {})),
        reward_counts=dict(doc.get("reward_counts", {})),
    )
