"""Wallet state at each wallet's precision and the level object for a customer's totals."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal

from perkamo_core.engine.decimals import _CTX, _ONE, _PROGRESS_QUANTUM, _ZERO, _quantize
from perkamo_core.engine.outcome import LevelState
from perkamo_core.engine.plans import _program_plan, _ProgramPlan
from perkamo_core.program import Program


def _level_name(pplan: _ProgramPlan, n: int) -> str:
    if pplan.level_names is not None and 0 < n <= len(pplan.level_names):
        return pplan.level_names[n - 1]
    return f"Level {n}"


def _wallet_state(pplan: _ProgramPlan, balances: Mapping[str, Decimal]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    get = balances.get
    for key, quantum, rounding in pplan.wallet_quanta:
        out[key] = get(key, _ZERO).quantize(quantum, rounding, _CTX)
    for key, value in balances.items():
        if key not in out:
            out[key] = value
    return out


def wallet_state(program: Program, balances: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Every known wallet's balance at its precision (program wallets first, then any other held)."""
    return _wallet_state(_program_plan(program), balances)


def _level_number(
    program: Program, pplan: _ProgramPlan, balances: Mapping[str, Decimal], lifetime: Mapping[str, Decimal]
) -> int:
    lv = program.leveling
    assert lv is not None
    raw = (lifetime if lv.basis == "lifetime" else balances).get(lv.wallet, _ZERO)
    return max(1, bisect_right(pplan.thresholds, raw))


def compute_level(
    program: Program, balances: Mapping[str, Decimal], lifetime: Mapping[str, Decimal]
) -> LevelState | None:
    """The level object for these totals, or None without a leveling module."""
    lv = program.leveling
    if lv is None:
        return None
    pplan = _program_plan(program)
    raw = (lifetime if lv.basis == "lifetime" else balances).get(lv.wallet, _ZERO)
    cache = pplan.level_cache
    hit = cache.get(raw)
    if hit is not None:
        return hit
    if len(cache) >= _LEVEL_CACHE_SIZE:
        cache.clear()
    cache[raw] = level = _make_level(lv.wallet, pplan, raw)
    return level


_LEVEL_CACHE_SIZE = 4096


def _make_level(wallet: str, pplan: _ProgramPlan, raw: Decimal) -> LevelState:
    thresholds = pplan.thresholds
    q = pplan.quanta.get(wallet)
    current = _quantize(raw, *q) if q is not None else raw
    n = max(1, bisect_right(thresholds, current))
    at = thresholds[n - 1]
    if n < len(thresholds):
        nxt: Decimal | None = thresholds[n]
        assert nxt is not None
        ratio = _CTX.divide(_CTX.subtract(current, at), _CTX.subtract(nxt, at))
        ratio = min(max(ratio, _ZERO), _ONE)
        progress = ratio.quantize(_PROGRESS_QUANTUM, rounding=ROUND_DOWN, context=_CTX).normalize(_CTX)
    else:
        nxt = None
        progress = _ONE
    return LevelState(wallet, n, current, at, nxt, progress, _level_name(pplan, n))
