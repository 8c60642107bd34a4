"""CoreService refuses text the databases cannot store (NUL, lone surrogates) with a ValidationError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from perkamo_core import storage as st
from perkamo_core.errors import ValidationError
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import (
    SPACE,
    assert_refused_writing_nothing,
    count,
    make_service,
    purchase,
)

BAD_TEXT = [pytest.param("a\x00b", id="nul"), pytest.param("a\ud800b", id="lone-surrogate"),
            pytest.param("\udfff", id="low-surrogate-only")]

GOOD: dict[str, Any] = {"user_id": "a", "event": "purchase.completed", "transaction_id": "t1",
                        "context": {"note": "ok"}}


def _event_with(bad: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Event changes that carry ``bad`` somewhere, with the field the error must name."""
    return {
        "user_id": ({"user_id": bad}, "user_id"),
        "event": ({"event": bad}, "event"),
        "transaction_id": ({"transaction_id": bad}, "transaction_id"),
        "context-key": ({"context": {bad: 1}}, "context"),
        "context-value": ({"context": {"note": bad}}, "context.note"),
        "context-nested": ({"context": {"tags": ["x", {"k": bad}]}}, "context.tags[1].k"),
        "context-nested-key": ({"context": {"meta": {bad: 1}}}, "context.meta"),
    }


WHERE = ["user_id", "event", "transaction_id", "context-key", "context-value", "context-nested",
         "context-nested-key"]


@pytest.mark.parametrize("bad", BAD_TEXT)
@pytest.mark.parametrize("where", WHERE)
def test_ingest_refuses_unstorable_text_naming_the_field(db_engine: Engine, where: str, bad: str) -> None:
    service = make_service(db_engine)
    change, field = _event_with(bad)[where]
    assert_refused_writing_nothing(db_engine, service, EventInput(**{**GOOD, **change}), field)


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_ingest_bulk_refuses_each_bad_item_and_applies_the_rest(db_engine: Engine, bad: str) -> None:
    service = make_service(db_engine)
    cases = _event_with(bad)
    page = [purchase("ok", "good-0")]
    for i, where in enumerate(WHERE):
        change = {**cases[where][0]}
        if where != "transaction_id":
            change.setdefault("transaction_id", f"bad-{i}")
        page.append(EventInput(**{**GOOD, **change}))
    page.append(purchase("ok", "good-1"))

    outcomes = service.ingest_bulk(SPACE, page)

    assert [o.error.field if o.error else None for o in outcomes] == (
        [None] + [cases[w][1] for w in WHERE] + [None])
    assert all(isinstance(o.error, ValidationError) for o in outcomes[1:-1])
    assert count(db_engine, st.events) == 2
    assert service.wallet_balances(SPACE) == {"ok": 100}


def _calls(bad: str) -> dict[str, tuple[Callable[[CoreService], Any], str]]:
    return {
        "identify-user": (lambda s: s.identify(SPACE, bad, {}), "user_id"),
        "identify-trait-key": (lambda s: s.identify(SPACE, "a", {bad: 1}), "traits"),
        "identify-trait-value": (lambda s: s.identify(SPACE, "a", {"name": bad}), "traits.name"),
        "identify-trait-nested": (lambda s: s.identify(SPACE, "a", {"tags": [bad]}), "traits.tags[0]"),
        "identify-bulk-user": (lambda s: s.identify_bulk(SPACE, [("a", {}), (bad, {})]), "user_id"),
        "identify-bulk-trait": (lambda s: s.identify_bulk(SPACE, [("a", {}), ("b", {"x": bad})]),
                                "traits.x"),
        "redeem-user": (lambda s: s.redeem(SPACE, bad, "free_shipping", "r1"), "user_id"),
        "redeem-reward": (lambda s: s.redeem(SPACE, "a", bad, "r1"), "reward_key"),
        "redeem-txid": (lambda s: s.redeem(SPACE, "a", "free_shipping", bad), "transaction_id"),
    }


@pytest.mark.parametrize("bad", BAD_TEXT)
@pytest.mark.parametrize("name", list(_calls("x")))
def test_identify_and_redeem_refuse_unstorable_text(db_engine: Engine, name: str, bad: str) -> None:
    service = make_service(db_engine)
    service.ingest(SPACE, purchase("a", "t0"))
    before = (count(db_engine, st.customers), count(db_engine, st.redemptions),
              count(db_engine, st.outbox))
    call, field = _calls(bad)[name]
    with pytest.raises(ValidationError) as raised:
        call(service)
    assert raised.value.field == field
    assert (count(db_engine, st.customers), count(db_engine, st.redemptions),
            count(db_engine, st.outbox)) == before
    assert service.customer(SPACE, "a")["traits"] == {}


@pytest.mark.parametrize(
    "text",
    [pytest.param("caf\u00e9 \U0001f600", id="non-ascii-and-astral"),
     pytest.param("tab\tnew\nline", id="control-characters")],
)
def test_storable_unicode_round_trips(db_engine: Engine, text: str) -> None:
    service = make_service(db_engine)
    service.identify(SPACE, text, {text: text})
    service.ingest(SPACE, EventInput(user_id=text, event="purchase.completed",
                                     transaction_id=text, context={text: text}))
    profile = service.customer(SPACE, text)
    assert profile["traits"] == {text: text}
    assert profile["events"][0]["transaction_id"] == text
