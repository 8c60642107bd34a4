"""The engine's decimal context and constants, shared by its modules."""

from __future__ import annotations

from decimal import Context, Decimal, InvalidOperation

_CTX = Context(prec=60, traps=[InvalidOperation])
"""Balances and totals: 60 significant digits, so sums of bounded amounts never round silently."""

# MAX_AMOUNT (perkamo_core.limits): achievement steps stay below it; wallet values below
# ``wallet_limit(quantum)``. Beyond either the event is rejected (``Outcome.rejection``).

_ZERO = Decimal(0)
_ONE = Decimal(1)
_PROGRESS_QUANTUM = Decimal("0.0001")


def _quantize(amount: Decimal, quantum: Decimal, rounding: str) -> Decimal:
    return amount.quantize(quantum, rounding=rounding, context=_CTX)
