"""End to end over loopback: everything the Perkville sandbox serves maps cleanly, and replaying its
transactions through the engine with the shipped program gives the sandbox's true balances."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest

from config.programs import load_migration_program
from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from mapping import (
    parse_location,
    to_events,
    to_identify,
    to_program_modules,
)
from perkamo_core.engine import CustomerState, EngineEvent, apply_outcome, evaluate
from perkamo_core.program import Program


def _objects(pages: Iterator[Any]) -> list[dict[str, Any]]:
    return [obj for page in pages for obj in page.objects]


@pytest.mark.slow
@pytest.mark.parametrize(
    "timezone, redeem_sign, style",
    [
        pytest.param("UTC", "positive", "space", id="utc-positive-redemptions"),
        pytest.param("America/Chicago", "negative", "t", id="chicago-negative-redemptions"),
        pytest.param("Europe/Prague", "negative", "offset", id="prague-offset-datetimes"),
    ],
)
def test_sandbox_business_maps_and_reconciles(timezone: str, redeem_sign: str, style: str) -> None:
    sandbox = Sandbox(seed=7, members=25, transactions=400, timezone=timezone, redeem_sign=redeem_sign,
                      void_ratio=0.1)
    sandbox.start()
    client = PerkvilleClient(**sandbox.client_kwargs(), timezone=timezone)
    try:
        sandbox.set_behaviour(datetime_style=style)
        business = sandbox.business_ids[0]
        locations = {}
        for raw in _objects(client.iter_locations(business)):
            record = parse_location(raw, timezone=timezone).record
            assert record is not None
            locations[record.location_id] = record
        users = {str(u["user_id"]): u for u in _objects(client.iter_users())}
        connections = _objects(client.iter_connections(business))
        for connection in connections:
            result = to_identify(users.get(str(connection["user"]).strip("/").split("/")[-1]),
                                 connection=connection, locations=locations, timezone=timezone)
            assert result.call is not None, result.issues
            assert not [i for i in result.issues if i.severity == "error"]
        perks = _objects(client.iter_perks(business))
        translation = to_program_modules(perks, timezone=timezone, base=load_migration_program())
        Program.from_modules(translation.modules)

        program = Program.from_modules(load_migration_program())
        states: dict[str, CustomerState] = defaultdict(CustomerState)
        seen: set[str] = set()
        skipped = 0
        for raw in _objects(client.iter_transactions(business)):
            result = to_events(raw, business_id=business, timezone=timezone)
            assert result.ok, result.issues
            skipped += len(result.skipped)
            for event in result.events:
                assert event.transaction_id not in seen
                seen.add(event.transaction_id)
                assert event.occurred_at is not None
                state = states[event.user_id]
                outcome = evaluate(program, state, EngineEvent(event.event, event.occurred_at, event.context,
                                                               event.transaction_id), UTC)
                states[event.user_id] = apply_outcome(state, outcome)
        assert skipped > 0  # the sandbox voided some rows
        truth = sandbox.true_balances()
        assert truth
        for user_id, balance in truth.items():
            mine = states[f"perkville:{user_id}"].balances.get("points", Decimal(0))
            assert mine == balance, user_id
    finally:
        client.close()
        sandbox.stop()
