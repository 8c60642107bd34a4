"""The customer read model (``GET /v1/customer/{id}``), wallet balances and ledger audits."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.engine import CustomerState
from perkamo_core.errors import NotFoundError
from perkamo_core.service.store import CoreStore
from perkamo_core.service.wire import to_wire
from perkamo_core.storage.state import state_balance

READ_MODEL_EVENTS = 20
"""How many of a customer's latest events the read model lists."""


class ReadModel:
    """Reads of customers: the read model, balances, ledger sums."""

    def __init__(self, store: CoreStore) -> None:
        self._store = store

    def customer(self, space: str, user_id: str) -> dict[str, Any]:
        """The customer read model (``GET /v1/customer/{id}``) in the seed's key order."""
        e = st.events
        c = st.customers
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            program = self._store.program(conn, row.id)
            cust = conn.execute(
                select(c.c.id, c.c.traits, c.c.state)
                .where(c.c.space_id == row.id, c.c.user_id == user_id)
            ).first()
            if cust is None:
                raise NotFoundError(f"customer {user_id!r} does not exist in Space {row.slug!r}",
                                    field="user_id")
            latest = conn.execute(
                select(e.c.event, e.c.transaction_id, e.c.occurred_at, e.c.result)
                .where(e.c.space_id == row.id, e.c.customer_id == cust.id)
                .order_by(e.c.id.desc())
                .limit(READ_MODEL_EVENTS)
            ).all()
        state = CustomerState.from_json(cust.state)
        view = core_engine.customer_view(program, state, self._store.now(), row.zone)
        profile: dict[str, Any] = to_wire({
            "tenant": row.slug,
            "user_id": user_id,
            "traits": cust.traits,
            "wallets": view["wallets"],
            "level": view["level"],
            "perks": view["perks"],
            "next_perks": view["next_perks"],
            "achievements": view["achievements"],
            "flags": view["flags"],
            "events": [
                {"event": ev.event, "transaction_id": ev.transaction_id,
                 "occurred_at": core_engine.format_datetime(ev.occurred_at),
                 "delta": ev.result.get("delta", [])}
                for ev in latest
            ],
            "streaks": view["streaks"],
            "active_boosts": view["active_boosts"],
        })
        return profile

    def wallet_balances(
        self, space: str, wallet: str = "points", user_ids: Sequence[str] | None = None
    ) -> dict[str, Decimal]:
        """``user_id → balance`` of ``wallet`` (0 for a customer without movements)."""
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            return {
                user_id: state_balance(state, wallet)
                for user_id, state in self._store.bulk.state_documents(conn, row.id, user_ids)
            }

    def ledger_sums(self, space: str, user_id: str) -> dict[str, Decimal]:
        """``wallet → sum of the ledger`` of one customer (an audit of the materialized balance)."""
        c = st.customers
        lg = st.ledger
        e = st.events
        r = st.redemptions
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            customer_id = conn.execute(
                select(c.c.id).where(c.c.space_id == row.id, c.c.user_id == user_id)
            ).scalar()
            sums: dict[str, Decimal] = {}
            if customer_id is None:
                return sums
            # Through the customer's events and redemptions (the ledger is indexed by those).
            by_event = (
                select(lg.c.wallet, lg.c.amount).join(e, e.c.id == lg.c.event_id)
                .where(e.c.space_id == row.id, e.c.customer_id == customer_id)
            )
            by_redemption = (
                select(lg.c.wallet, lg.c.amount).join(r, r.c.id == lg.c.redemption_id)
                .where(r.c.customer_id == customer_id)
            )
            for query in (by_event, by_redemption):
                for wallet, amount in conn.execute(query):
                    sums[wallet] = sums.get(wallet, Decimal(0)) + amount
            return sums
