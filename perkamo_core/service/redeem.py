"""Redemptions: a reward's cost leaves its wallet, idempotent on ``transaction_id``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.errors import InsufficientBalanceError, NotFoundError, ValidationError
from perkamo_core.models import MAX_TRANSACTION_ID, MAX_USER_ID
from perkamo_core.service.checks import check_text
from perkamo_core.service.customers import Customers
from perkamo_core.service.fingerprint import transaction_id_conflict
from perkamo_core.service.outbox import lock_outbox
from perkamo_core.service.store import CoreStore, Write
from perkamo_core.service.usage import bump_usage
from perkamo_core.service.wire import as_duplicate, to_wire


class Redemptions:
    """``redeem``."""

    def __init__(self, store: CoreStore, write: Write, customers: Customers) -> None:
        self._store = store
        self._write = write
        self._customers = customers

    def redeem(self, space: str, user_id: str, reward_key: str, transaction_id: str) -> dict[str, Any]:
        """Redeem a reward: subtract its cost and return its effect; idempotent on ``transaction_id``.

        ``InsufficientBalanceError`` (nothing changed) when the wallet holds less than the cost.
        """
        check_text(user_id, "user_id", MAX_USER_ID)
        check_text(reward_key, "reward_key", 128)
        check_text(transaction_id, "transaction_id", MAX_TRANSACTION_ID)

        def run(conn: Connection) -> dict[str, Any]:
            row = self._store.space(conn, space)
            program = self._store.program(conn, row.id)
            customers = self._customers.load(conn, row.id, [user_id], create=False)
            # Before the id checks: an ingest of the same id either committed already (visible
            # below) or re-checks the redemptions once it holds this lock (see _ingest_page).
            lock_outbox(self._store, conn, row.id)
            r = st.redemptions
            previous = conn.execute(
                select(r.c.result, r.c.customer_id, r.c.reward_key)
                .where(r.c.space_id == row.id, r.c.transaction_id == transaction_id)
            ).first()
            cust = customers.get(user_id)
            if previous is not None:
                # A replay is the same customer redeeming the same reward; anything else reuses
                # the id for another action and learns nothing of the first.
                if cust is None or previous.customer_id != cust.id or previous.reward_key != reward_key:
                    raise transaction_id_conflict(transaction_id)
                return as_duplicate(previous.result)
            e = st.events
            event = conn.execute(
                select(e.c.id).where(e.c.space_id == row.id, e.c.transaction_id == transaction_id)
            ).first()
            if event is not None:
                # Transaction ids are unique per Space across events and redemptions.
                raise transaction_id_conflict(transaction_id)
            if cust is None:
                raise NotFoundError(f"customer {user_id!r} does not exist in Space {row.slug!r}",
                                    field="user_id")
            plan = core_engine.plan_redemption(program, cust.state, reward_key)
            if plan.status == "unknown_reward":
                raise NotFoundError(plan.message, code="unknown_reward", field="reward_key")
            if plan.status == "insufficient_balance":
                raise InsufficientBalanceError(plan.message, field="reward_key")
            if not plan.ok:
                raise ValidationError(plan.message, code=plan.status, field="reward_key")
            assert plan.wallet is not None
            cust.state = core_engine.apply_redemption(cust.state, plan)
            cust.dirty = True
            now = self._store.now()
            result: dict[str, Any] = to_wire({
                "applied": True,
                "duplicate": False,
                "transaction_id": transaction_id,
                "reward": {"key": reward_key, "name": plan.reward_name or reward_key},
                "effect": dict(plan.effect),
                "delta": [{"wallet": plan.wallet, "amount": -plan.cost}],
                "wallet_state": core_engine.wallet_state(program, cust.state.balances),
                "level": plan.level.to_json() if plan.level is not None else None,
            })
            redemption_id = self._store.bulk.allocate_ids(conn, r, "id", 1)[0]
            conn.execute(r.insert().values(
                id=redemption_id, space_id=row.id, customer_id=cust.id,
                transaction_id=transaction_id, reward_key=reward_key, wallet=plan.wallet,
                cost=plan.cost, result=result, created_at=now,
            ))
            conn.execute(st.ledger.insert().values(
                space_id=row.id, customer_id=cust.id, wallet=plan.wallet, amount=-plan.cost,
                event_id=None, redemption_id=redemption_id, created_at=now,
            ))
            self._customers.save(conn, row, program, [cust], {}, now)
            conn.execute(st.outbox.insert().values(
                space_id=row.id, kind="event", customer_id=cust.id, event_id=None,
                redemption_id=redemption_id, traits=None, created_at=now,
            ))
            bump_usage(self._store, conn, row.id, {"redemptions": 1})
            return result

        return self._write(run)
