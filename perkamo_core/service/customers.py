"""Customers: loaded (and locked) or created a page at a time, their state documents written
back after a page, and ``identify`` (traits, shallow-merged)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, update

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.engine import CustomerState
from perkamo_core.errors import ValidationError
from perkamo_core.models import MAX_USER_ID
from perkamo_core.program import Program
from perkamo_core.service.checks import check_text, validate_traits
from perkamo_core.service.outbox import lock_outbox
from perkamo_core.service.store import CoreStore, Space, Write
from perkamo_core.service.usage import bump_usage
from perkamo_core.service.wire import to_wire
from perkamo_core.storage.state import encode_state

STATE_PRUNE_MARGIN_DAYS = 60
"""Day/week limit counters older than a customer's latest event minus this margin are dropped.

The bridge re-reads a 45-day look-back window, so a late event inside that window still sees its
day's counters; the state document of a customer stays bounded however long the history.
"""

PRUNE_ABOVE_KEYS = 64
"""Prune a state document only once it holds more period keys than this (pruning has a cost)."""


@dataclass(slots=True)
class Customer:
    """A customer while a write transaction works on it."""

    id: int
    user_id: str
    traits: dict[str, Any]
    state: CustomerState
    dirty: bool = False
    latest: datetime | None = None  # the latest occurred_at applied in this page


class Customers:
    """Loading, creating and saving customers; ``identify``."""

    def __init__(self, store: CoreStore, write: Write) -> None:
        self._store = store
        self._write = write

    def load(
        self,
        conn: Connection,
        space_id: int,
        user_ids: Sequence[str],
        *,
        create: bool,
        traits: bool = False,
        created: set[str] | None = None,
    ) -> dict[str, Customer]:
        """Customers by user id, locked for this transaction; missing ones created when ``create``
        (the user ids this transaction inserted are added to ``created``).

        PostgreSQL: ids are resolved first, then the rows are locked ``FOR UPDATE`` in ascending id
        order, so two writers of overlapping customer sets always lock in the same order.
        """
        bulk = self._store.bulk
        wanted = sorted(set(user_ids))
        if not self._store.postgres and not traits:
            found = {c.user_id: c for c in bulk.customers_by_user(conn, space_id, wanted)}
            missing = [u for u in wanted if u not in found]
            if missing and create:
                inserted = bulk.create_customers(conn, space_id, missing, self._store.now())
                if created is not None:
                    created.update(inserted)
                found.update((c.user_id, c) for c in bulk.customers_by_user(conn, space_id, missing))
            return {u: Customer(c.id, u, c.traits, c.state) for u, c in found.items()}
        ids = bulk.customer_ids(conn, space_id, wanted)
        missing = [u for u in wanted if u not in ids]
        if missing and create:
            inserted = bulk.create_customers(conn, space_id, missing, self._store.now())
            if created is not None:
                created.update(inserted)
            ids.update(bulk.customer_ids(conn, space_id, missing))
        return {
            c.user_id: Customer(c.id, c.user_id, c.traits, c.state)
            for c in bulk.customers_by_id(conn, list(ids.values()), traits=traits)
        }

    def save(
        self,
        conn: Connection,
        space: Space,
        program: Program,
        customers: Iterable[Customer],
        event_counts: Mapping[int, int],
        now: datetime,
    ) -> None:
        """Write back the state document (balances, lifetime totals and the rest) of every changed
        customer; a balance is read from it (and audited against the ledger)."""
        states: list[tuple[str, int, Any, int]] = []
        db_now = self._store.bulk.dbdt(now)
        for cust in customers:
            if not cust.dirty:
                continue
            if cust.latest is not None and (
                len(cust.state.counters) > PRUNE_ABOVE_KEYS
                or sum(len(d) for d in cust.state.achievement_days.values()) > PRUNE_ABOVE_KEYS
            ):
                cust.state = core_engine.prune_state(
                    program, cust.state,
                    cust.latest.astimezone(space.zone).date() - timedelta(days=STATE_PRUNE_MARGIN_DAYS)
                )
            states.append((encode_state(cust.state), event_counts.get(cust.id, 0), db_now, cust.id))
            cust.dirty = False
        self._store.bulk.update_states(conn, states)

    def identify(self, space: str, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create the customer or shallow-merge ``traits`` into its traits; returns ``{user_id, traits}``."""
        check_text(user_id, "user_id", MAX_USER_ID)
        clean = validate_traits(traits)

        def run(conn: Connection) -> dict[str, Any]:
            row = self._store.space(conn, space)
            merged = self._identify_page(conn, row, [(user_id, clean)])
            return {"tenant": row.slug, "user_id": user_id, "traits": to_wire(merged[user_id])}

        return self._write(run)

    def identify_bulk(
        self,
        space: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        conn: Connection | None = None,
    ) -> None:
        """``identify`` for a page of ``(user_id, traits)``; in the caller's transaction with ``conn``."""
        clean: list[tuple[str, dict[str, Any]]] = []
        for i, (user_id, traits) in enumerate(items):
            try:
                check_text(user_id, "user_id", MAX_USER_ID)
                clean.append((user_id, validate_traits(traits)))
            except ValidationError as exc:
                raise ValidationError(f"item {i}: {exc.message}", field=exc.field) from None
        if not clean:
            return

        def run(c: Connection) -> None:
            self._identify_page(c, self._store.space(c, space), clean)

        self._write(run, conn)

    def _identify_page(
        self, conn: Connection, space: Space, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        customers = self.load(conn, space.id, [u for u, _ in items], create=True, traits=True)
        for user_id, traits in items:
            customers[user_id].traits = {**customers[user_id].traits, **traits}
        now = self._store.now()
        touched = {u for u, _ in items}
        conn.execute(
            update(st.customers)
            .where(st.customers.c.id == bindparam("b_id"))
            .values(traits=bindparam("b_traits"), updated_at=bindparam("b_now")),
            [{"b_id": customers[u].id, "b_traits": st.dump_json(customers[u].traits), "b_now": now}
             for u in sorted(touched)],
        )
        lock_outbox(self._store, conn, space.id)
        conn.execute(st.outbox.insert(), [
            {"space_id": space.id, "kind": "identify", "customer_id": customers[u].id,
             "event_id": None, "traits": st.dump_json(customers[u].traits), "created_at": now}
            for u, _ in items
        ])
        bump_usage(self._store, conn, space.id, {"identify_calls": len(items)})
        return {u: customers[u].traits for u in touched}
