"""The write-back outbox: applied events, redemptions and identify calls of a Space in commit
order (``seq``), for the bridge to send to the other system."""

from __future__ import annotations

from sqlalchemy import Connection, select, text

from perkamo_core import storage as st
from perkamo_core.models import OutboxItem
from perkamo_core.service.store import CoreStore
from perkamo_core.service.wire import to_wire, wire_number

REDEMPTION_EVENT = "reward.redeemed"
"""Event key under which a redemption appears in the outbox (context: reward_key, wallet, cost)."""


def lock_outbox(store: CoreStore, conn: Connection, space_id: int) -> None:
    """Outbox sequence numbers must become visible in order: on PostgreSQL, writers of one
    Space take this lock (after their customer locks) so seq order == commit order."""
    if store.postgres:
        conn.execute(text("SELECT pg_advisory_xact_lock(7415202, :s)"), {"s": space_id})


class Outbox:
    """Reads of the outbox."""

    def __init__(self, store: CoreStore) -> None:
        self._store = store

    def iter_outbox(self, space: str, *, after_seq: int = 0, limit: int = 500) -> list[OutboxItem]:
        """Applied events and identify calls with ``seq > after_seq``, in commit order."""
        o = st.outbox
        e = st.events
        c = st.customers
        r = st.redemptions
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            rows = conn.execute(
                select(o.c.seq, o.c.kind, o.c.traits, c.c.user_id, e.c.event, e.c.transaction_id,
                       e.c.context, e.c.occurred_at,
                       r.c.transaction_id.label("r_txid"), r.c.reward_key, r.c.wallet, r.c.cost,
                       r.c.created_at.label("r_at"))
                .select_from(
                    o.join(c, c.c.id == o.c.customer_id)
                    .outerjoin(e, e.c.id == o.c.event_id)
                    .outerjoin(r, r.c.id == o.c.redemption_id)
                )
                .where(o.c.space_id == row.id, o.c.seq > after_seq)
                .order_by(o.c.seq)
                .limit(max(1, min(limit, 10_000)))
            ).all()
        items = []
        for x in rows:
            if x.r_txid is not None:  # a redemption, written back like an event
                items.append(OutboxItem(
                    seq=int(x.seq), kind="event", user_id=x.user_id, event=REDEMPTION_EVENT,
                    transaction_id=x.r_txid,
                    context={"reward_key": x.reward_key, "wallet": x.wallet,
                             "cost": wire_number(x.cost)},
                    occurred_at=x.r_at, traits={},
                ))
                continue
            items.append(OutboxItem(
                seq=int(x.seq), kind=x.kind, user_id=x.user_id, event=x.event,
                transaction_id=x.transaction_id, context=to_wire(x.context or {}),
                occurred_at=x.occurred_at, traits=to_wire(x.traits or {}),
            ))
        return items
