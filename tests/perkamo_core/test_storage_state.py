"""The stored customer state document: ``encode_state``/``decode_state`` (the fast path) agree
with ``CustomerState.to_json``/``from_json`` (the general path) and round-trip exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st_

from perkamo_core.engine import CustomerState, PerkUnlock, StreakState
from perkamo_core.storage.columns import dump_json, load_json_exact
from perkamo_core.storage.state import decode_state, encode_state, state_balance

_keys = st_.text(alphabet="abwxyz_.:é-", min_size=1, max_size=8)
_amounts = st_.decimals(allow_nan=False, allow_infinity=False, places=4,
                        min_value=-10**12, max_value=10**12)
_counts = st_.integers(min_value=0, max_value=10**9)
_instants = st_.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                          timezones=st_.just(UTC))
_triggers = st_.fixed_dictionaries(
    {"type": st_.sampled_from(["points_threshold", "level", "event_count"])},
    optional={"wallet": _keys, "amount": _amounts | _counts, "level": _counts, "event": _keys},
)


@st_.composite
def _perks(draw: st_.DrawFn) -> dict[str, PerkUnlock]:
    keys = draw(st_.lists(_keys, max_size=3, unique=True))
    return {k: PerkUnlock(k, draw(_instants), draw(_triggers)) for k in keys}


_common: dict[str, Any] = {
    "balances": st_.dictionaries(_keys, _amounts, max_size=3),
    "lifetime": st_.dictionaries(_keys, _amounts, max_size=3),
    "perks": _perks(),
    "event_counts": st_.dictionaries(_keys, _counts, max_size=3),
    "counters": st_.dictionaries(_keys, _counts, max_size=3),
    "reward_counts": st_.dictionaries(_keys, _counts, max_size=3),
}
_rare: dict[str, Any] = {
    "achievements": st_.dictionaries(_keys, _instants, max_size=2),
    "last_applied": st_.dictionaries(_keys, _instants, max_size=2),
    "achievement_totals": st_.dictionaries(_keys, _amounts, max_size=2),
    "achievement_days": st_.dictionaries(
        _keys, st_.dictionaries(st_.dates(date(2000, 1, 1), date(2100, 1, 1)), _amounts, max_size=2),
        max_size=2,
    ),
    "streaks": st_.dictionaries(_keys, st_.builds(
        StreakState, _counts, _counts, st_.none() | st_.dates(date(2000, 1, 1), date(2100, 1, 1)),
    ), max_size=2),
}

common_states = st_.fixed_dictionaries({}, optional=_common).map(lambda kw: CustomerState(**kw))
"""States with only the sections encode_state/decode_state handle themselves."""

any_states = st_.fixed_dictionaries({}, optional={**_common, **_rare}).map(
    lambda kw: CustomerState(**kw))
"""States with any section (the codec falls back to to_json/from_json for the rare ones)."""


def _general(state: CustomerState) -> str:
    return dump_json({k: v for k, v in state.to_json().items() if v})


@given(common_states)
def test_encode_state__fast_sections_give_the_text_of_to_json(state: CustomerState) -> None:
    assert encode_state(state) == _general(state)


@given(any_states)
def test_encode_state__any_state_gives_the_text_of_to_json(state: CustomerState) -> None:
    assert encode_state(state) == _general(state)


@given(any_states)
def test_decode_state__equals_from_json_and_round_trips(state: CustomerState) -> None:
    text = encode_state(state)
    decoded = decode_state(text)
    assert decoded == CustomerState.from_json(load_json_exact(text))
    assert decoded == state
    assert encode_state(decoded) == text or decoded.perks  # a trigger amount comes back normalized


@given(common_states, _keys)
def test_state_balance__reads_the_encoded_balance(state: CustomerState, wallet: str) -> None:
    assert state_balance(encode_state(state), wallet) == state.balances.get(wallet, Decimal(0))


def test_decode_state__an_empty_document_is_an_empty_state() -> None:
    assert decode_state("{}") == CustomerState()
    assert encode_state(CustomerState()) == "{}"
