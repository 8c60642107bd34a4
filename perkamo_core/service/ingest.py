"""Event ingest, one event or a page of any size, with work per page rather than per row.

A page loads its Space, program, customers and stored transaction ids once, evaluates every
event with the pure engine (``perkamo_core.engine``), and writes the events, ledger, perks,
customer states, outbox rows and usage in one transaction through ``storage.bulk``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.engine import EngineEvent
from perkamo_core.errors import CoreError, ValidationError
from perkamo_core.models import EventInput, IngestOutcome
from perkamo_core.service.checks import check_event
from perkamo_core.service.customers import Customer, Customers
from perkamo_core.service.fingerprint import payload_fingerprint, transaction_id_conflict
from perkamo_core.service.outbox import lock_outbox
from perkamo_core.service.store import CoreStore, RetryPage, Write
from perkamo_core.service.usage import bump_usage
from perkamo_core.service.wire import as_duplicate, wire_result
from perkamo_core.storage.bulk import StoredEvent

_log = logging.getLogger(__name__)


@contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for one page (reference counting still frees memory).

    A page allocates many short-lived containers, which trigger thousands of young-generation
    collections: about a tenth of the ingest's CPU time. The collector is switched back on
    afterwards if it was on (a thread that finds it paused leaves it to the thread that paused it).
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Event(NamedTuple):
    """A validated event of a page, with its position in the caller's list."""

    position: int
    user_id: str
    event: str
    transaction_id: str
    context: dict[str, Any]
    occurred_at: datetime


class Ingest:
    """``ingest`` and ``ingest_bulk``."""

    def __init__(self, store: CoreStore, write: Write, customers: Customers) -> None:
        self._store = store
        self._write = write
        self._customers = customers

    def ingest(self, space: str, event: EventInput) -> dict[str, Any]:
        """Ingest one event; the wire result ``{applied, duplicate, delta, …}`` or a typed error."""
        outcome = self.ingest_bulk(space, [event])[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    def ingest_bulk(
        self,
        space: str,
        events: Sequence[EventInput | Mapping[str, Any]],
        *,
        conn: Connection | None = None,
        outbox: bool = True,
        echo_ids: Collection[str] = (),
    ) -> list[IngestOutcome]:
        """Ingest a page of events (any size) with work per page, not per row; results in input order.

        A replayed ``transaction_id`` (stored, or earlier in the same page) with the same payload
        (:func:`payload_fingerprint`) answers with the first application's result,
        ``applied: false, duplicate: true``; with another payload, or when a redemption holds the
        id, the item gets a ``TransactionIdConflictError`` (409). An invalid item gets an
        ``IngestOutcome`` with the ``ValidationError`` (an amount its wallet cannot hold exactly:
        code ``amount_out_of_range``) and changes nothing. ``echo_ids`` are ids the page brings
        back from the system write-back sent them to (the bridge's Perkville rows whose
        ``trans_source_id`` is ``perkamo:{id}``): such an id, stored as an event or a redemption,
        is a duplicate whatever the payload, which that system records in its own shape. With ``conn`` the page
        runs inside the caller's transaction and is not committed here. ``outbox=False`` records
        no write-back outbox rows for the page (for events that came from the system write-back
        would send them to, such as the bridge's Perkville transactions).
        """
        with _paused_gc():
            return self._ingest_bulk(space, events, conn, outbox, echo_ids)

    def _ingest_bulk(
        self,
        space: str,
        events: Sequence[EventInput | Mapping[str, Any]],
        conn: Connection | None,
        outbox: bool,
        echo_ids: Collection[str],
    ) -> list[IngestOutcome]:
        now = self._store.now()
        outcomes: list[IngestOutcome | None] = [None] * len(events)
        valid: list[_Event] = []
        known_keys: set[str] = set()
        for index, item in enumerate(events):
            try:
                valid.append(self._validate_event(index, item, now, known_keys))
            except ValidationError as exc:
                outcomes[index] = IngestOutcome(None, exc)
        if valid:
            results = self._write(lambda c: self._ingest_page(c, space, valid, now, outbox, echo_ids), conn)
            for ev, result in zip(valid, results, strict=True):
                outcomes[ev.position] = (
                    IngestOutcome(None, result) if isinstance(result, CoreError) else IngestOutcome(result)
                )
        elif conn is None:
            with self._store.read() as c:  # an unknown Space is an error even for an all-invalid page
                self._store.space(c, space)
        return [o for o in outcomes if o is not None]

    def _validate_event(
        self, index: int, item: Any, now: datetime, known_keys: set[str] | None = None
    ) -> _Event:
        if isinstance(item, Mapping):
            try:
                item = EventInput.model_validate(item)
            except PydanticValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "event"
                raise ValidationError(f"{where}: {first['msg']}", field=where) from None
        if not isinstance(item, EventInput):
            raise ValidationError("event must be an EventInput object", field="event")
        checked = check_event(item.user_id, item.event, item.transaction_id, item.context,
                              item.occurred_at, known_keys=known_keys)
        at = checked.occurred_at
        return _Event(index, checked.user_id, checked.event, checked.transaction_id, checked.context,
                      now if at is None else at)

    def _existing_events(
        self, conn: Connection, space_id: int, txids: Sequence[str]
    ) -> dict[str, StoredEvent]:
        """The events stored under the given transaction ids: their result and fingerprint.

        A row from before migration 5 has no stored fingerprint: it is computed from the row's
        stored customer, event and context, so such rows are held to the same rule.
        """
        found = self._store.bulk.stored_events(conn, space_id, txids)
        legacy = [txid for txid, stored in found.items() if stored.fingerprint is None]
        for txid, user_id, event, context in self._store.bulk.event_payloads(conn, space_id, legacy):
            found[txid] = found[txid]._replace(fingerprint=payload_fingerprint(user_id, event, context))
        return found

    def _existing_redemptions(
        self, conn: Connection, space_id: int, txids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Redemptions among the given transaction ids, as the duplicate an event with that id gets.

        Transaction ids are unique per Space across events and redemptions: a written-back
        redemption that returns as an event (the next sync's ``perkville.points_redeemed``) must
        not move the wallet a second time.
        """
        return {
            txid: {"applied": True, "duplicate": False, "delta": first.get("delta", []),
                   "leveled_up": False, "unlocked": [],
                   "wallet_state": first.get("wallet_state", {}), "level": first.get("level")}
            for txid, first in self._store.bulk.redemption_results(conn, space_id, txids).items()
        }

    def _ingest_page(
        self, conn: Connection, space_slug: str, page: Sequence[_Event], now: datetime,
        outbox: bool = True, echo_ids: Collection[str] = (),
    ) -> list[dict[str, Any] | CoreError]:
        """The page's wire results in order; an event that cannot apply gets its error instead
        and records nothing (a reused ``transaction_id`` with another payload, an amount its
        wallet cannot hold exactly, an unexpected failure of that event alone)."""
        space = self._store.space(conn, space_slug)
        zone = space.zone
        program = self._store.program(conn, space.id)
        customers = self._customers.load(conn, space.id, [ev.user_id for ev in page], create=False)
        txids = sorted({ev.transaction_id for ev in page})
        stored: dict[str, StoredEvent] = self._existing_events(conn, space.id, txids)
        if len(stored) < len(txids):
            for txid, first in self._existing_redemptions(
                    conn, space.id, [t for t in txids if t not in stored]).items():
                stored[txid] = StoredEvent(first, None)  # a redemption holds the id
        # New customers are created only for events that may apply (a duplicate creates nobody).
        new_users = {ev.user_id for ev in page if ev.transaction_id not in stored} - customers.keys()
        created: set[str] = set()
        if new_users:
            customers.update(self._customers.load(conn, space.id, sorted(new_users), create=True,
                                                  created=created))

        results: list[dict[str, Any] | CoreError | None] = [None] * len(page)
        first_in_page: dict[str, tuple[int, str]] = {}  # txid -> (position, fingerprint)
        replays: list[tuple[int, int]] = []  # (position, position of the first in this page)
        duplicates = 0
        event_rows: list[tuple[Any, ...]] = []
        ledger_rows: list[tuple[Any, ...]] = []
        perk_rows: list[tuple[Any, ...]] = []
        touched: dict[int, Customer] = {}
        counts: dict[int, int] = {}
        bulk = self._store.bulk
        event_ids = iter(bulk.allocate_ids(
            conn, st.events, "id", len({ev.transaction_id for ev in page} - stored.keys())
        ))
        dbdt = bulk.dbdt
        db_now = dbdt(now)
        space_id = space.id
        evaluate = core_engine.evaluate
        apply_outcome = core_engine.apply_outcome
        dump = st.dump_json
        fingerprint_of = payload_fingerprint
        for pos, (_, user_id, name, txid, context, at) in enumerate(page):
            fingerprint = fingerprint_of(user_id, name, context)
            known = stored.get(txid)
            if known is not None:
                if known.fingerprint == fingerprint or txid in echo_ids:
                    # A replay; or an event born here coming home from the system write-back
                    # sent it to, in that system's shape.
                    results[pos] = as_duplicate(known.result)
                    duplicates += 1
                else:
                    results[pos] = transaction_id_conflict(txid)
                continue
            seen = first_in_page.get(txid)
            if seen is not None:
                if seen[1] == fingerprint:
                    duplicates += 1
                    replays.append((pos, seen[0]))  # answered with the first's result below
                else:
                    results[pos] = transaction_id_conflict(txid)
                continue
            cust = customers[user_id]
            try:
                outcome = evaluate(program, cust.state, EngineEvent(name, at, context, txid), zone,
                                   trace=False)  # no caller reads the trace of an ingest
            except Exception:  # a defect must fail only its own event, never the page
                _log.exception("evaluating event %s of Space %s failed", txid[:80], space.slug)
                results[pos] = CoreError("the event could not be evaluated; retry with the same transaction_id")
                continue
            if outcome.rejection is not None:
                results[pos] = ValidationError(
                    f"{outcome.rejection}; nothing was recorded", code="amount_out_of_range", field="context",
                )
                continue
            first_in_page[txid] = (pos, fingerprint)
            cust.state = apply_outcome(cust.state, outcome)
            cust.dirty = True
            if cust.latest is None or at > cust.latest:
                cust.latest = at
            cid = cust.id
            touched[cid] = cust
            counts[cid] = counts.get(cid, 0) + 1
            result = wire_result(outcome)
            results[pos] = result
            event_id = next(event_ids)
            event_rows.append((event_id, space_id, cid, txid, name, dump(context), dbdt(at),
                               db_now, dump(result), fingerprint))
            for d in outcome.deltas:
                if d.amount:
                    ledger_rows.append((space_id, cid, d.wallet, str(d.amount), event_id, db_now))
            for perk in outcome.new_perks:
                perk_rows.append((cid, perk.key, dbdt(perk.unlocked_at),
                                  dump(dict(perk.trigger))))
        for pos, first_pos in replays:
            applied = results[first_pos]
            assert isinstance(applied, dict)
            results[pos] = as_duplicate(applied)
        unused = [customers[u].id for u in created if customers[u].id not in touched]
        if unused:  # created here for events that were refused: a refused event records nothing
            bulk.delete_customers(conn, unused)

        if event_rows:
            bulk.insert_events(conn, event_rows)
            bulk.insert_ledger(conn, ledger_rows)
            bulk.insert_perks(conn, perk_rows)
            self._customers.save(conn, space, program, touched.values(), counts, now)
            if self._store.postgres:
                # A redeem takes this lock before it checks the event ids; after it, a redemption
                # committed meanwhile with one of this page's ids is visible: start over.
                lock_outbox(self._store, conn, space.id)
                if self._existing_redemptions(conn, space.id, [row[3] for row in event_rows]):
                    raise RetryPage()
            if outbox:
                bulk.insert_event_outbox(conn, [(space.id, row[2], row[0], db_now) for row in event_rows])
        bump_usage(self._store, conn, space.id, {"events": len(event_rows), "duplicates": duplicates})
        return [r for r in results if r is not None]
