"""The customer read model (``GET /v1/customer/{id}``), wallet balances and ledger audits."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.engine import CustomerState
from perkamo_core.errors import NotFoundError, ValidationError
from perkamo_core.models import CustomerEvent
from perkamo_core.service.store import CoreStore
from perkamo_core.service.wire import to_wire
from perkamo_core.storage.state import state_balance

READ_MODEL_EVENTS = 20
"""How many of a customer's latest events the read model lists."""

MAX_EVENT_PAGE = 500
"""The most events one ``customer_events`` call returns."""


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

    def customer_events(
        self, space: str, user_id: str, *, limit: int = 50, before_seq: int | None = None
    ) -> list[CustomerEvent]:
        """The customer's events newest first, at most ``limit`` (``before_seq``: the page after)."""
        if not 1 <= limit <= MAX_EVENT_PAGE:
            raise ValidationError(f"limit must be between 1 and {MAX_EVENT_PAGE}", field="limit")
        e = st.events
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            customer_id = _customer_key(conn, row.id, user_id)
            if customer_id is None:
                raise NotFoundError(f"customer {user_id!r} does not exist in Space {row.slug!r}",
                                    field="user_id")
            stmt = (
                select(e.c.id, e.c.event, e.c.transaction_id, e.c.occurred_at, e.c.recorded_at, e.c.result)
                .where(e.c.space_id == row.id, e.c.customer_id == customer_id)
                .order_by(e.c.id.desc())
                .limit(limit)
            )
            if before_seq is not None:
                stmt = stmt.where(e.c.id < before_seq)
            rows = conn.execute(stmt).all()
        return [
            CustomerEvent(
                seq=int(ev.id), event=ev.event, transaction_id=ev.transaction_id,
                occurred_at=ev.occurred_at, recorded_at=ev.recorded_at,
                deltas=tuple(
                    (str(d.get("wallet")), Decimal(str(d.get("amount", 0))))
                    for d in (ev.result or {}).get("delta", []) if isinstance(d, dict)
                ),
            )
            for ev in rows
        ]

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
        lg = st.ledger
        e = st.events
        r = st.redemptions
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            customer_id = _customer_key(conn, row.id, user_id)
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


def _customer_key(conn: Connection, space_id: int, user_id: str) -> int | None:
    """The customer row's id of ``user_id`` in the Space, if it exists."""
    c = st.customers
    found = conn.execute(select(c.c.id).where(c.c.space_id == space_id, c.c.user_id == user_id)).scalar()
    return None if found is None else int(found)
