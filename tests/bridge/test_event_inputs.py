"""The embedded target's fast ``EventInput`` construction equals pydantic's validated one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.targets import _event_inputs
from mapping.types import PerkamoEvent
from perkamo_core.models import EventInput

_KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_MOMENTS = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=9))]),
    ),
)
_EVENTS = st.builds(
    PerkamoEvent,
    user_id=st.text(min_size=1, max_size=30),
    event=st.sampled_from(["perkville.points_earned", "perkville.points_redeemed", "perkville.transaction_voided"]),
    transaction_id=st.text(min_size=1, max_size=60),
    context=st.dictionaries(_KEYS, _VALUES, max_size=6),
    occurred_at=_MOMENTS,
)


def _wire_context(context: dict[str, Any]) -> dict[str, Any]:
    """What a JSON round trip of the event would carry: whole Decimals as ints."""
    return {
        k: (int(v) if isinstance(v, Decimal) and v == v.to_integral_value() else v) for k, v in context.items()
    }


@given(st.lists(_EVENTS, max_size=8))
def test_fast_event_inputs_equal_validated_ones(events: list[PerkamoEvent]) -> None:
    fast = _event_inputs(events)
    slow = [
        EventInput(
            user_id=e.user_id,
            event=e.event,
            transaction_id=e.transaction_id,
            context=_wire_context(e.context),
            occurred_at=e.occurred_at,
        )
        for e in events
    ]
    assert fast == slow
    for made, checked in zip(fast, slow, strict=True):
        assert type(made) is EventInput
        assert made.model_dump() == checked.model_dump()
        assert made.model_fields_set == checked.model_fields_set
        # Whole Decimals became ints, others stayed Decimal: the types match too.
        assert [type(v) for v in made.context.values()] == [type(v) for v in checked.context.values()]
