"""What the core accepts because it can hold it exactly: wallet values and the ``occurred_at``
range, defined here once.

**Wallet values.** A movement, a balance and a lifetime total of a wallet hold at most
``MAX_DIGITS`` (15) significant digits at the wallet's precision: ``|value| < 10**15 * quantum``
(``999999999999999`` for a wallet of precision 0, ``9999999999999.99`` for precision 2).  The
chain a value travels decides the bound, and its weakest link is the wire:

- storage is exact for any size (Decimals as text: ``core_ledger.amount``, the state document);
- the engine sums in a 60-digit Decimal context and formulas compute in 34 digits;
- the JSON answers write a fractional Decimal as a binary double, which gives back the same
  decimal text only up to 15 significant digits; and the official JavaScript SDK reads every
  JSON number as a double (integers are exact there only below 2**53, about 9.007e15).

An event whose rule would move a wallet by such an amount, or leave its balance or lifetime
total there, is rejected as a whole (400, nothing recorded): never applied with the movement
silently dropped or rounded.  Formula results are first rounded to the wallet's precision with
its declared rounding mode (that is the program's rule, not a loss).  Achievement steps read
from the context (``sum_of``) obey the same 15 digits.

**occurred_at.** It must fall in ``[OCCURRED_AT_MIN, OCCURRED_AT_END)`` once converted to UTC,
i.e. from 1970-01-01T00:00:00Z up to (not including) 9999-01-01T00:00:00Z.  Python's
``datetime`` ends at 9999-12-31; the last year is left out so that every computation on an
accepted moment (shifting it into a Space's timezone, at most about ±15 h; the local day, its
ISO week and the week's Monday) stays inside that range.  The lower end keeps windows that look
back from a moment (achievement windows of up to 3660 days, limit-counter pruning) clear of
year 1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

MAX_DIGITS = 15
"""Significant digits a wallet value may have at its wallet's precision."""

MAX_AMOUNT = Decimal(10) ** MAX_DIGITS
"""The bound of a wallet value at precision 0, and of an achievement step: ``|value| < 10**15``."""


def wallet_limit(quantum: Decimal) -> Decimal:
    """The exclusive bound of ``|value|`` for a wallet whose smallest unit is ``quantum``."""
    return quantum.scaleb(MAX_DIGITS)


def held_exactly(value: Decimal, quantum: Decimal) -> bool:
    """Whether a wallet with smallest unit ``quantum`` holds ``value`` exactly (see the module)."""
    return value.is_finite() and abs(value) < wallet_limit(quantum)


OCCURRED_AT_MIN = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest accepted ``occurred_at`` (inclusive)."""

OCCURRED_AT_END = datetime(9999, 1, 1, tzinfo=UTC)
"""The first ``occurred_at`` no longer accepted (exclusive)."""

OCCURRED_AT_RANGE = "1970-01-01T00:00:00Z to 9998-12-31T23:59:59.999999Z"
"""The accepted range as the error messages and the docs state it."""
