"""``bridge.targets._event_inputs`` (EventInputs built without pydantic validation, the hot path)
gives what validating each event gives."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st_

from bridge.targets import _event_inputs, _jsonable
from mapping.types import PerkamoEvent
from perkamo_core.models import EventInput
from perkamo_core.service import check_event

_text = st_.text(min_size=1, max_size=12)
_values = (st_.none() | st_.booleans() | st_.integers() | _text
           | st_.decimals(allow_nan=False, allow_infinity=False, places=3))
_events = st_.builds(
    PerkamoEvent,
    user_id=_text,
    event=_text,
    transaction_id=_text,
    context=st_.dictionaries(_text, _values, max_size=6),
    occurred_at=st_.none() | st_.datetimes(timezones=st_.just(UTC)),
)


@given(st_.lists(_events, max_size=5))
def test_event_inputs__equal_validated_event_inputs(events: list[PerkamoEvent]) -> None:
    fast = _event_inputs(events)
    general = [
        EventInput(user_id=e.user_id, event=e.event, transaction_id=e.transaction_id,
                   context=_jsonable(e.context), occurred_at=e.occurred_at)
        for e in events
    ]
    assert fast == general
    for made, validated in zip(fast, general, strict=True):
        assert type(made) is EventInput
        assert made.model_fields_set == validated.model_fields_set
        assert made.model_dump() == validated.model_dump()


def test_event_inputs__a_checked_event_passes_as_it_is() -> None:
    checked = check_event("u", "e", "t", {"points": 1}, datetime(2026, 1, 1, tzinfo=UTC))
    event = PerkamoEvent(user_id="u", event="e", transaction_id="t2", context={"p": Decimal("2")})
    out = _event_inputs([checked, event])
    assert out[0] is checked
    assert out[1].context == {"p": 2}
