"""The embedded Perkamo core's service: the only API the rest of the project uses for Spaces, keys,
programs, identify, event ingest (one or a page), redemptions, the customer read model and usage.

:class:`CoreService` is a façade over one module per reason to change:

- ``spaces``: Spaces and server API keys (authentication);
- ``programs``: program module versions and the blueprint; ``usage``: the usage meters;
- ``customers``: loading, creating and saving customers, ``identify``;
- ``ingest``: one event or a page; ``redeem``: redemptions;
- ``readmodel``: the customer read model, balances, ledger sums; ``outbox``: the write-back outbox;
- ``store``: what they share (transactions with bounded retries, the Space and program lookups);
  ``checks``, ``fingerprint`` and ``wire``: input checks, payload fingerprints, wire values.

Every write runs in one database transaction: a failure leaves nothing half-written. Writers of
one customer are serialized (``SELECT … FOR UPDATE`` in customer-id order on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and serialization/deadlock failures are retried a bounded number
of times. The pure engine (``perkamo_core.engine``) computes outcomes; the service loads state,
persists the outcome, the ledger and the outbox (through ``perkamo_core.storage``), and shapes
the wire results.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from perkamo_core import storage as st
from perkamo_core.models import (
    ApiKeyInfo,
    CreatedKey,
    CustomerEvent,
    EventInput,
    IngestOutcome,
    OutboxItem,
    SpaceInfo,
)
from perkamo_core.service.checks import (
    CheckedEvent,
    check_event,
    parse_occurred_at,
    storable,
    validate_context,
    validate_traits,
)
from perkamo_core.service.customers import PRUNE_ABOVE_KEYS, STATE_PRUNE_MARGIN_DAYS, Customers
from perkamo_core.service.fingerprint import payload_fingerprint, transaction_id_conflict
from perkamo_core.service.ingest import Ingest
from perkamo_core.service.outbox import REDEMPTION_EVENT, Outbox
from perkamo_core.service.programs import Programs
from perkamo_core.service.readmodel import READ_MODEL_EVENTS, ReadModel
from perkamo_core.service.redeem import Redemptions
from perkamo_core.service.spaces import Spaces
from perkamo_core.service.store import CoreStore, run_write
from perkamo_core.service.usage import USAGE_METERS, UsageMeters
from perkamo_core.service.wire import wire_number
from perkamo_core.storage.state import decode_state, encode_state

__all__ = [
    "MAX_WRITE_ATTEMPTS",
    "PRUNE_ABOVE_KEYS",
    "READ_MODEL_EVENTS",
    "REDEMPTION_EVENT",
    "STATE_PRUNE_MARGIN_DAYS",
    "USAGE_METERS",
    "CheckedEvent",
    "CoreService",
    "check_event",
    "decode_state",
    "encode_state",
    "parse_occurred_at",
    "payload_fingerprint",
    "storable",
    "transaction_id_conflict",
    "validate_context",
    "validate_traits",
    "wire_number",
]

T = TypeVar("T")

MAX_WRITE_ATTEMPTS = 6
"""A write transaction that hits a serialization failure, deadlock or lock timeout is retried."""


class CoreService:
    """Spaces, keys, programs, ingest, redeem and read models over one SQLAlchemy engine."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        store = CoreStore(engine, clock)

        def write(fn: Callable[[Connection], T], conn: Connection | None = None) -> T:
            # Through ``self._write`` at each call: every write of every part takes the same
            # path (tests replace it on an instance to make writes collide).
            return self._write(fn, conn)

        customers = Customers(store, write)
        self._store = store
        self._spaces = Spaces(store, write)
        self._programs = Programs(store, write)
        self._usage = UsageMeters(store, write)
        self._customers = customers
        self._ingest = Ingest(store, write, customers)
        self._redemptions = Redemptions(store, write, customers)
        self._reads = ReadModel(store)
        self._outbox = Outbox(store)

    @property
    def engine(self) -> Engine:
        return self._store.engine

    def migrate(self) -> None:
        """Apply the missing ``perkamo_core`` migrations."""
        st.migrate_core(self._store.engine)

    def _write(self, fn: Callable[[Connection], T], conn: Connection | None = None) -> T:
        """Run ``fn`` in a write transaction (or the caller's), retrying transient conflicts."""
        return run_write(self._store.engine, fn, conn, MAX_WRITE_ATTEMPTS)

    # --- Spaces and keys ----------------------------------------------------------------------

    def ensure_space(self, slug: str, *, environment: str = "test", timezone: str = "UTC") -> SpaceInfo:
        """The Space ``slug``, created with ``environment``/``timezone`` if it does not exist."""
        return self._spaces.ensure_space(slug, environment=environment, timezone=timezone)

    def get_space(self, slug: str) -> SpaceInfo:
        return self._spaces.get_space(slug)

    def update_space(
        self, slug: str, *, timezone: str | None = None, require_signatures: bool | None = None
    ) -> SpaceInfo:
        return self._spaces.update_space(slug, timezone=timezone, require_signatures=require_signatures)

    def create_api_key(self, space: str, scopes: Sequence[str] | None = None) -> CreatedKey:
        """A new server key for ``space`` (all four server scopes by default), stored hashed."""
        return self._spaces.create_api_key(space, scopes)

    def revoke_api_key(self, key_id: str) -> None:
        self._spaces.revoke_api_key(key_id)

    def authenticate(self, api_key: str) -> ApiKeyInfo:
        """The key's Space and scopes; ``AuthenticationError`` for a missing/unknown/revoked key."""
        return self._spaces.authenticate(api_key)

    def active_key(self, key_id: str) -> ApiKeyInfo | None:
        """The unrevoked key ``key_id``, else ``None``."""
        return self._spaces.active_key(key_id)

    # --- program and usage -----------------------------------------------------------------------

    def load_program_module(
        self,
        space: str,
        module: str,
        body: Mapping[str, Any],
        *,
        version: str | None = None,
        active: bool = True,
    ) -> dict[str, Any]:
        """Store ``body`` as a new version of ``module`` (the active one unless ``active=False``)."""
        return self._programs.load_program_module(space, module, body, version=version, active=active)

    def load_program(
        self, space: str, modules: Mapping[str, Mapping[str, Any]], *, version: str | None = None
    ) -> None:
        """Store and activate several modules at once: all of them, or none when one is invalid."""
        self._programs.load_program(space, modules, version=version)

    def active_modules(self, space: str) -> dict[str, dict[str, Any]]:
        """The active module bodies of ``space`` as uploaded, by module name."""
        return self._programs.active_modules(space)

    def program_versions(self, space: str) -> list[dict[str, Any]]:
        """Every stored module version, oldest first: ``{module, version, active, created_at}``."""
        return self._programs.program_versions(space)

    def program(self, space: str) -> dict[str, Any]:
        """The Space blueprint (``GET /v1/program``): active modules merged into one view."""
        return self._programs.program(space)

    def usage(self, space: str) -> dict[str, Any]:
        """Current billing-period meters (``GET /v1/usage``)."""
        return self._usage.usage(space)

    def record_usage(self, space: str, meter: str = "requests", count: int = 1) -> None:
        """Add ``count`` to a usage meter of the current period (the API counts ``requests``)."""
        self._usage.record_usage(space, meter, count)

    # --- customers, events, redemptions ----------------------------------------------------------

    def identify(self, space: str, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create the customer or shallow-merge ``traits`` into its traits; returns ``{user_id, traits}``."""
        return self._customers.identify(space, user_id, traits)

    def identify_bulk(
        self,
        space: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        conn: Connection | None = None,
    ) -> None:
        """``identify`` for a page of ``(user_id, traits)``; in the caller's transaction with ``conn``."""
        self._customers.identify_bulk(space, items, conn=conn)

    def ingest(self, space: str, event: EventInput) -> dict[str, Any]:
        """Ingest one event; the wire result ``{applied, duplicate, delta, …}`` or a typed error."""
        return self._ingest.ingest(space, event)

    def ingest_bulk(
        self,
        space: str,
        events: Sequence[EventInput | Mapping[str, Any]],
        *,
        conn: Connection | None = None,
        outbox: bool = True,
        echo_ids: Collection[str] = (),
    ) -> list[IngestOutcome]:
        """Ingest a page of events (any size); results in input order (see
        :meth:`perkamo_core.service.ingest.Ingest.ingest_bulk` for duplicates, conflicts,
        ``conn``, ``outbox`` and ``echo_ids``)."""
        return self._ingest.ingest_bulk(space, events, conn=conn, outbox=outbox, echo_ids=echo_ids)

    def redeem(self, space: str, user_id: str, reward_key: str, transaction_id: str) -> dict[str, Any]:
        """Redeem a reward: subtract its cost and return its effect; idempotent on ``transaction_id``.

        ``InsufficientBalanceError`` (nothing changed) when the wallet holds less than the cost.
        """
        return self._redemptions.redeem(space, user_id, reward_key, transaction_id)

    # --- reads ------------------------------------------------------------------------------------

    def customer(self, space: str, user_id: str) -> dict[str, Any]:
        """The customer read model (``GET /v1/customer/{id}``) in the seed's key order."""
        return self._reads.customer(space, user_id)

    def customer_events(
        self, space: str, user_id: str, *, limit: int = 50, before_seq: int | None = None
    ) -> list[CustomerEvent]:
        """The customer's events with their transaction ids, newest first, at most ``limit`` (1–500);
        ``before_seq``: the events older than that one. ``NotFoundError`` for an unknown customer."""
        return self._reads.customer_events(space, user_id, limit=limit, before_seq=before_seq)

    def wallet_balances(
        self, space: str, wallet: str = "points", user_ids: Sequence[str] | None = None
    ) -> dict[str, Decimal]:
        """``user_id → balance`` of ``wallet`` (0 for a customer without movements)."""
        return self._reads.wallet_balances(space, wallet, user_ids)

    def ledger_sums(self, space: str, user_id: str) -> dict[str, Decimal]:
        """``wallet → sum of the ledger`` of one customer (an audit of the materialized balance)."""
        return self._reads.ledger_sums(space, user_id)

    def iter_outbox(self, space: str, *, after_seq: int = 0, limit: int = 500) -> list[OutboxItem]:
        """Applied events and identify calls with ``seq > after_seq``, in commit order."""
        return self._outbox.iter_outbox(space, after_seq=after_seq, limit=limit)
