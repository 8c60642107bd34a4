"""The embedded Perkamo core's service: the only API the rest of the project uses for Spaces, keys,
programs, identify, event ingest (one or a page), redemptions, the customer read model and usage.

Every write runs in one database transaction: a failure leaves nothing half-written. Writers of
one customer are serialized (``SELECT … FOR UPDATE`` in customer-id order on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and serialization/deadlock failures are retried a bounded number
of times. The pure engine (``perkamo_core.engine``) computes outcomes; this module loads state,
persists the outcome, the ledger and the outbox, and shapes the wire results.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.engine import CustomerState, EngineEvent
from perkamo_core.errors import (
    AuthenticationError,
    ConflictError,
    CoreError,
    InsufficientBalanceError,
    NotFoundError,
    ProgramValidationError,
    ValidationError,
)
from perkamo_core.models import (
    ENVIRONMENTS,
    MAX_SPACE_SLUG,
    MAX_TRANSACTION_ID,
    MAX_USER_ID,
    SERVER_SCOPES,
    ApiKeyInfo,
    CreatedKey,
    EventInput,
    IngestOutcome,
    OutboxItem,
    SpaceInfo,
)
from perkamo_core.program import MODULE_NAMES, Program
from perkamo_core.service.checks import (
    CheckedEvent,
    _check_text,
    check_event,
    parse_occurred_at,
    storable,
    validate_context,
    validate_traits,
)
from perkamo_core.service.fingerprint import payload_fingerprint, transaction_id_conflict
from perkamo_core.service.wire import _as_duplicate, _jsonable, _wire, _wire_result, wire_number
from perkamo_core.storage.bulk import BulkStore, StoredEvent
from perkamo_core.storage.state import _state_balance, decode_state, encode_state

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
_log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 6
"""A write transaction that hits a serialization failure, deadlock or lock timeout is retried."""

STATE_PRUNE_MARGIN_DAYS = 60
"""Day/week limit counters older than a customer's latest event minus this margin are dropped.

The bridge re-reads a 45-day look-back window, so a late event inside that window still sees its
day's counters; the state document of a customer stays bounded however long the history.
"""

PRUNE_ABOVE_KEYS = 64
"""Prune a state document only once it holds more period keys than this (pruning has a cost)."""

REDEMPTION_EVENT = "reward.redeemed"
"""Event key under which a redemption appears in the outbox (context: reward_key, wallet, cost)."""

READ_MODEL_EVENTS = 20

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,127}$")
_PG_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})

USAGE_METERS: tuple[str, ...] = (
    "events", "duplicates", "identify_calls", "redemptions", "requests",
)



def _hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _period(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {name!r}", field="timezone") from None


def _is_retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _PG_RETRY_SQLSTATES:
        return True
    if isinstance(exc, IntegrityError):
        # Two writers created the same customer/event row at once: the retry sees the winner's row.
        return True
    if isinstance(exc, OperationalError) and "locked" in str(orig).lower():
        return True
    return False


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


class _RetryPage(Exception):
    """A concurrent writer took one of the page's transaction ids: retry the whole transaction."""


@dataclass(frozen=True)
class _Space:
    id: int
    slug: str
    environment: str
    timezone: str
    require_signatures: bool
    created_at: datetime

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def info(self) -> SpaceInfo:
        return SpaceInfo(self.slug, self.environment, self.timezone, self.require_signatures,
                         self.created_at)




class _Event(NamedTuple):
    """A validated event of a page, with its position in the caller's list."""

    position: int
    user_id: str
    event: str
    transaction_id: str
    context: dict[str, Any]
    occurred_at: datetime


@dataclass(slots=True)
class _Customer:
    id: int
    user_id: str
    traits: dict[str, Any]
    state: CustomerState
    dirty: bool = False
    latest: datetime | None = None  # the latest occurred_at applied in this page


# --- the service --------------------------------------------------------------------------------


class CoreService:
    """Spaces, keys, programs, ingest, redeem and read models over one SQLAlchemy engine."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self._postgres = engine.dialect.name == "postgresql"
        self._bulk = BulkStore(engine.dialect.name)
        self._programs: dict[tuple[int, tuple[tuple[str, int], ...]], Program] = {}

    @property
    def engine(self) -> Engine:
        return self._engine

    def migrate(self) -> None:
        """Apply the missing ``perkamo_core`` migrations."""
        st.migrate_core(self._engine)

    # --- plumbing ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def _insert(self, table: Any) -> Any:
        return pg_dialect.insert(table) if self._postgres else sqlite_dialect.insert(table)

    def _write(self, fn: Callable[[Connection], T], conn: Connection | None = None) -> T:
        """Run ``fn`` in a write transaction (or the caller's), retrying transient conflicts."""
        if conn is not None:
            try:
                return fn(conn)
            except _RetryPage as exc:
                raise ConflictError(
                    "a concurrent redemption used one of the page's transaction ids; roll back "
                    "and retry the page with the same transaction ids"
                ) from exc
            except DBAPIError as exc:
                if _is_retryable(exc):
                    # The caller's transaction is spoiled: it must roll back and retry the page.
                    raise ConflictError(
                        "a concurrent writer touched the same rows; roll back and retry the page "
                        "with the same transaction ids"
                    ) from exc
                raise
        delay = 0.01
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                with self._engine.begin() as own:
                    return fn(own)
            except (DBAPIError, _RetryPage) as exc:
                if isinstance(exc, DBAPIError) and not _is_retryable(exc):
                    raise
                if attempt == MAX_WRITE_ATTEMPTS:
                    raise ConflictError(
                        f"the write kept conflicting with concurrent writers after {attempt} "
                        "attempts; retry with the same transaction_id"
                    ) from exc
                time.sleep(delay + secrets.randbelow(10) / 1000)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if not self._postgres:
                conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn

    def _space_row(self, conn: Connection, slug: str) -> _Space:
        row = conn.execute(select(st.spaces).where(st.spaces.c.slug == slug)).first()
        if row is None:
            raise NotFoundError(f"Space {slug!r} does not exist", field="space")
        return _Space(row.id, row.slug, row.environment, row.timezone, row.require_signatures,
                      row.created_at)

    def _program_for(self, conn: Connection, space_id: int) -> Program:
        rows = conn.execute(
            select(st.program_modules.c.module, st.program_modules.c.id)
            .where(st.program_modules.c.space_id == space_id, st.program_modules.c.active.is_(True))
            .order_by(st.program_modules.c.module)
        ).all()
        cache_key = (space_id, tuple((r.module, r.id) for r in rows))
        cached = self._programs.get(cache_key)
        if cached is not None:
            return cached
        bodies = {
            r.module: r.body
            for r in conn.execute(
                select(st.program_modules.c.module, st.program_modules.c.body).where(
                    st.program_modules.c.id.in_([r.id for r in rows])
                )
            )
        }
        program = Program.from_modules(bodies)
        if len(self._programs) > 32:
            self._programs.clear()
        self._programs[cache_key] = program
        return program

    def _bump_usage(self, conn: Connection, space_id: int, counts: Mapping[str, int]) -> None:
        rows = [
            {"space_id": space_id, "period": _period(self._now()), "meter": meter, "count": n}
            for meter, n in sorted(counts.items())
            if n
        ]
        if not rows:
            return
        stmt = self._insert(st.usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=["space_id", "period", "meter"],
            set_={"count": st.usage.c.count + stmt.excluded.count},
        )
        conn.execute(stmt, rows)

    def _lock_outbox(self, conn: Connection, space_id: int) -> None:
        # Outbox sequence numbers must become visible in order: on PostgreSQL, writers of one
        # Space take this lock (after their customer locks) so seq order == commit order.
        if self._postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(7415202, :s)"), {"s": space_id})

    # --- Spaces and keys ----------------------------------------------------------------------

    def ensure_space(self, slug: str, *, environment: str = "test", timezone: str = "UTC") -> SpaceInfo:
        """The Space ``slug``, created with ``environment``/``timezone`` if it does not exist."""
        if not isinstance(slug, str) or not _SLUG.match(slug) or len(slug) > MAX_SPACE_SLUG:
            raise ValidationError(
                f"Space slug {str(slug)[:40]!r} must be 1-128 lowercase letters, digits, '-' or '_'",
                field="space",
            )
        if environment not in ENVIRONMENTS:
            raise ValidationError("environment must be 'test' or 'live'", field="environment")
        _zone(timezone)

        def run(conn: Connection) -> SpaceInfo:
            stmt = self._insert(st.spaces).values(
                slug=slug, environment=environment, timezone=timezone,
                require_signatures=False, created_at=self._now(),
            ).on_conflict_do_nothing(index_elements=["slug"])
            conn.execute(stmt)
            return self._space_row(conn, slug).info()

        return self._write(run)

    def get_space(self, slug: str) -> SpaceInfo:
        with self._read() as conn:
            return self._space_row(conn, slug).info()

    def update_space(
        self, slug: str, *, timezone: str | None = None, require_signatures: bool | None = None
    ) -> SpaceInfo:
        values: dict[str, Any] = {}
        if timezone is not None:
            _zone(timezone)
            values["timezone"] = timezone
        if require_signatures is not None:
            values["require_signatures"] = bool(require_signatures)

        def run(conn: Connection) -> SpaceInfo:
            space = self._space_row(conn, slug)
            if values:
                conn.execute(update(st.spaces).where(st.spaces.c.id == space.id).values(**values))
            return self._space_row(conn, slug).info()

        return self._write(run)

    def create_api_key(self, space: str, scopes: Sequence[str] | None = None) -> CreatedKey:
        """A new server key for ``space`` (all four server scopes by default), stored hashed."""
        chosen = tuple(SERVER_SCOPES if not scopes else dict.fromkeys(scopes))
        for scope in chosen:
            if scope not in SERVER_SCOPES:
                raise ValidationError(
                    f"unknown scope {scope!r}; expected one of {', '.join(SERVER_SCOPES)}",
                    field="scopes",
                )

        def run(conn: Connection) -> CreatedKey:
            row = self._space_row(conn, space)
            plaintext = f"sk_{row.environment}_{secrets.token_hex(24)}"
            key_id = f"key_{secrets.token_hex(8)}"
            conn.execute(st.api_keys.insert().values(
                key_id=key_id, space_id=row.id, key_hash=_hash_key(plaintext),
                key_hint=f"{plaintext[:8]}…{plaintext[-4:]}", scopes=" ".join(chosen),
                environment=row.environment, created_at=self._now(), revoked_at=None,
            ))
            return CreatedKey(plaintext, key_id, row.slug, chosen, row.environment)

        return self._write(run)

    def revoke_api_key(self, key_id: str) -> None:
        def run(conn: Connection) -> None:
            result = conn.execute(
                update(st.api_keys)
                .where(st.api_keys.c.key_id == key_id, st.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            if result.rowcount == 0:
                exists = conn.execute(
                    select(st.api_keys.c.id).where(st.api_keys.c.key_id == key_id)
                ).first()
                if exists is None:
                    raise NotFoundError(f"API key {key_id!r} does not exist", field="key_id")

        self._write(run)

    def authenticate(self, api_key: str) -> ApiKeyInfo:
        """The key's Space and scopes; ``AuthenticationError`` for a missing/unknown/revoked key."""
        if not isinstance(api_key, str) or not api_key.startswith(("sk_test_", "sk_live_")):
            raise AuthenticationError("missing or malformed server API key (sk_test_… / sk_live_…)")
        digest = _hash_key(api_key)
        with self._read() as conn:
            row = conn.execute(
                select(st.api_keys, st.spaces.c.slug)
                .join(st.spaces, st.spaces.c.id == st.api_keys.c.space_id)
                .where(st.api_keys.c.key_hash == digest)
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise AuthenticationError("unknown server API key; check the key configured for this Space")
        if row.revoked_at is not None:
            raise AuthenticationError(f"API key {row.key_id} was revoked; create a new one")
        if not api_key.startswith(f"sk_{row.environment}_"):
            raise AuthenticationError("API key prefix does not match its Space environment")
        return ApiKeyInfo(row.key_id, row.slug, frozenset(row.scopes.split()), row.environment)

    # --- program ----------------------------------------------------------------------------------

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
        if module not in MODULE_NAMES:
            raise ProgramValidationError(
                f"unknown module {module!r}; expected one of {', '.join(MODULE_NAMES)}", path=module
            )

        def run(conn: Connection) -> dict[str, Any]:
            row = self._space_row(conn, space)
            # Validates the body and its references against the Space's other active modules.
            self._program_for(conn, row.id).with_module(module, body)
            return self._store_module(conn, row.id, module, body, version, active)

        return self._write(run)

    def load_program(
        self, space: str, modules: Mapping[str, Mapping[str, Any]], *, version: str | None = None
    ) -> None:
        """Store and activate several modules at once: all of them, or none when one is invalid."""
        if not isinstance(modules, Mapping) or not modules:
            raise ProgramValidationError("a program needs at least one module", path="")
        for name in modules:
            if name not in MODULE_NAMES:
                raise ProgramValidationError(
                    f"unknown module {name!r}; expected one of {', '.join(MODULE_NAMES)}", path=name
                )

        def run(conn: Connection) -> None:
            row = self._space_row(conn, space)
            merged = self._program_for(conn, row.id).to_modules()
            merged.update({k: dict(v) for k, v in modules.items()})
            Program.from_modules(merged)
            for name in MODULE_NAMES:
                if name in modules:
                    self._store_module(conn, row.id, name, modules[name], version, True)

        self._write(run)

    def _store_module(
        self, conn: Connection, space_id: int, module: str, body: Mapping[str, Any],
        version: str | None, active: bool,
    ) -> dict[str, Any]:
        pm = st.program_modules
        count = conn.execute(
            select(func.count()).select_from(pm).where(pm.c.space_id == space_id, pm.c.module == module)
        ).scalar_one()
        label = version if version else f"v{count + 1}"
        if len(label) > 128:
            raise ValidationError("version is longer than 128 characters", field="version")
        clash = conn.execute(
            select(pm.c.id).where(pm.c.space_id == space_id, pm.c.module == module, pm.c.version == label)
        ).first()
        if clash is not None:
            raise ValidationError(
                f"module {module!r} already has a version {label!r}; choose another", field="version"
            )
        now = self._now()
        if active:
            conn.execute(
                update(pm).where(pm.c.space_id == space_id, pm.c.module == module, pm.c.active.is_(True))
                .values(active=False)
            )
        conn.execute(pm.insert().values(
            space_id=space_id, module=module, version=label, body=dict(body), active=active,
            created_at=now,
        ))
        return {"module": module, "version": label, "active": active,
                "created_at": core_engine.format_datetime(now)}

    def active_modules(self, space: str) -> dict[str, dict[str, Any]]:
        """The active module bodies of ``space`` as uploaded, by module name."""
        pm = st.program_modules
        with self._read() as conn:
            row = self._space_row(conn, space)
            rows = conn.execute(
                select(pm.c.module, pm.c.body)
                .where(pm.c.space_id == row.id, pm.c.active.is_(True))
            ).all()
        return {r.module: r.body for r in rows}

    def program_versions(self, space: str) -> list[dict[str, Any]]:
        """Every stored module version, oldest first: ``{module, version, active, created_at}``."""
        pm = st.program_modules
        with self._read() as conn:
            row = self._space_row(conn, space)
            rows = conn.execute(
                select(pm.c.module, pm.c.version, pm.c.active, pm.c.created_at)
                .where(pm.c.space_id == row.id).order_by(pm.c.id)
            ).all()
        return [
            {"module": r.module, "version": r.version, "active": r.active,
             "created_at": core_engine.format_datetime(r.created_at)}
            for r in rows
        ]

    def program(self, space: str) -> dict[str, Any]:
        """The Space blueprint (``GET /v1/program``): active modules merged into one view."""
        pm = st.program_modules
        with self._read() as conn:
            row = self._space_row(conn, space)
            program = self._program_for(conn, row.id)
            versions = conn.execute(
                select(pm.c.module, pm.c.version, pm.c.created_at)
                .where(pm.c.space_id == row.id, pm.c.active.is_(True))
            ).all()
            customers = conn.execute(
                select(func.count(), func.coalesce(func.sum(st.customers.c.event_count), 0))
                .where(st.customers.c.space_id == row.id)
            ).one()
            usage = self._usage(conn, row)
        modules = program.to_modules()
        earning = []
        for rule in program.events.rules:
            item = rule.model_dump(mode="python", exclude_none=True)
            earning.append(item)
        blueprint = {
            "wallets": [w.model_dump(mode="python", exclude_none=True)
                        for w in program.wallet_defs.values()],
            "earningRules": earning,
            "leveling": modules.get("leveling"),
            "perks": modules.get("perks", {}).get("perks", []),
            "rewards": modules.get("perks", {}).get("rewards", []),
            "achievements": modules.get("achievements", {}).get("achievements", []),
            "streaks": modules.get("achievements", {}).get("streaks", []),
            "boosts": modules.get("boosts", {}).get("boosts", []),
        }
        blueprint_body: dict[str, Any] = _wire(_jsonable({
            "tenant": row.slug,
            "environment": row.environment,
            "timezone": row.timezone,
            "blueprint": blueprint,
            "modules": {
                v.module: {"version": v.version, "created_at": core_engine.format_datetime(v.created_at)}
                for v in versions
            },
            "integration": {"embedded": True, "require_signatures": row.require_signatures},
            "metrics": {"customers": int(customers[0]), "events": int(customers[1])},
            "usage": usage,
        }))
        return blueprint_body

    # --- usage -----------------------------------------------------------------------------------

    def usage(self, space: str) -> dict[str, Any]:
        """Current billing-period meters (``GET /v1/usage``)."""
        with self._read() as conn:
            return self._usage(conn, self._space_row(conn, space))

    def _usage(self, conn: Connection, space: _Space) -> dict[str, Any]:
        now = self._now()
        period = _period(now)
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
        meters = dict.fromkeys(USAGE_METERS, 0)
        for meter, value in conn.execute(
            select(st.usage.c.meter, st.usage.c.count)
            .where(st.usage.c.space_id == space.id, st.usage.c.period == period)
        ):
            meters[meter] = int(value)
        return {
            "tenant": space.slug,
            "period": period,
            "period_start": core_engine.format_datetime(start),
            "period_end": core_engine.format_datetime(end),
            "meters": meters,
        }

    def record_usage(self, space: str, meter: str = "requests", count: int = 1) -> None:
        """Add ``count`` to a usage meter of the current period (the API counts ``requests``)."""
        if meter not in USAGE_METERS:
            raise ValidationError(f"unknown usage meter {meter!r}", field="meter")

        def run(conn: Connection) -> None:
            self._bump_usage(conn, self._space_row(conn, space).id, {meter: count})

        self._write(run)

    # --- customers: get-or-create and lock ---------------------------------------------------------

    def _load_customers(
        self,
        conn: Connection,
        space_id: int,
        user_ids: Sequence[str],
        *,
        create: bool,
        traits: bool = False,
        created: set[str] | None = None,
    ) -> dict[str, _Customer]:
        """Customers by user id, locked for this transaction; missing ones created when ``create``
        (the user ids this transaction inserted are added to ``created``).

        PostgreSQL: ids are resolved first, then the rows are locked ``FOR UPDATE`` in ascending id
        order, so two writers of overlapping customer sets always lock in the same order.
        """
        bulk = self._bulk
        wanted = sorted(set(user_ids))
        if not self._postgres and not traits:
            found = {c.user_id: c for c in bulk.customers_by_user(conn, space_id, wanted)}
            missing = [u for u in wanted if u not in found]
            if missing and create:
                inserted = bulk.create_customers(conn, space_id, missing, self._now())
                if created is not None:
                    created.update(inserted)
                found.update((c.user_id, c) for c in bulk.customers_by_user(conn, space_id, missing))
            return {u: _Customer(c.id, u, c.traits, c.state) for u, c in found.items()}
        ids = bulk.customer_ids(conn, space_id, wanted)
        missing = [u for u in wanted if u not in ids]
        if missing and create:
            inserted = bulk.create_customers(conn, space_id, missing, self._now())
            if created is not None:
                created.update(inserted)
            ids.update(bulk.customer_ids(conn, space_id, missing))
        return {
            c.user_id: _Customer(c.id, c.user_id, c.traits, c.state)
            for c in bulk.customers_by_id(conn, list(ids.values()), traits=traits)
        }

    # --- identify ------------------------------------------------------------------------------------

    def identify(self, space: str, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create the customer or shallow-merge ``traits`` into its traits; returns ``{user_id, traits}``."""
        _check_text(user_id, "user_id", MAX_USER_ID)
        clean = validate_traits(traits)

        def run(conn: Connection) -> dict[str, Any]:
            row = self._space_row(conn, space)
            merged = self._identify_page(conn, row, [(user_id, clean)])
            return {"tenant": row.slug, "user_id": user_id, "traits": _wire(merged[user_id])}

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
                _check_text(user_id, "user_id", MAX_USER_ID)
                clean.append((user_id, validate_traits(traits)))
            except ValidationError as exc:
                raise ValidationError(f"item {i}: {exc.message}", field=exc.field) from None
        if not clean:
            return

        def run(c: Connection) -> None:
            self._identify_page(c, self._space_row(c, space), clean)

        self._write(run, conn)

    def _identify_page(
        self, conn: Connection, space: _Space, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        customers = self._load_customers(conn, space.id, [u for u, _ in items], create=True, traits=True)
        for user_id, traits in items:
            customers[user_id].traits = {**customers[user_id].traits, **traits}
        now = self._now()
        touched = {u for u, _ in items}
        conn.execute(
            update(st.customers)
            .where(st.customers.c.id == _bind("b_id"))
            .values(traits=_bind("b_traits"), updated_at=_bind("b_now")),
            [{"b_id": customers[u].id, "b_traits": st.dump_json(customers[u].traits), "b_now": now}
             for u in sorted(touched)],
        )
        self._lock_outbox(conn, space.id)
        conn.execute(st.outbox.insert(), [
            {"space_id": space.id, "kind": "identify", "customer_id": customers[u].id,
             "event_id": None, "traits": st.dump_json(customers[u].traits), "created_at": now}
            for u, _ in items
        ])
        self._bump_usage(conn, space.id, {"identify_calls": len(items)})
        return {u: customers[u].traits for u in touched}

    # --- ingest ----------------------------------------------------------------------------------------

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
        events: Sequence[EventInput | CheckedEvent | Mapping[str, Any]],
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
        would send them to, such as the bridge's Perkville transactions). A :class:`CheckedEvent`
        (from :func:`check_event`) is taken as already validated.
        """
        with _paused_gc():
            return self._ingest_bulk(space, events, conn, outbox, echo_ids)

    def _ingest_bulk(
        self,
        space: str,
        events: Sequence[EventInput | CheckedEvent | Mapping[str, Any]],
        conn: Connection | None,
        outbox: bool,
        echo_ids: Collection[str],
    ) -> list[IngestOutcome]:
        now = self._now()
        outcomes: list[IngestOutcome | None] = [None] * len(events)
        valid: list[_Event] = []
        known_keys: set[str] = set()
        make = tuple.__new__
        for index, item in enumerate(events):
            if type(item) is CheckedEvent:
                user_id, name, txid, context, at = item
                valid.append(make(_Event, (index, user_id, name, txid, context, now if at is None else at)))
                continue
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
            self.get_space(space)  # an unknown Space is an error even for an all-invalid page
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
        found = self._bulk.stored_events(conn, space_id, txids)
        legacy = [txid for txid, stored in found.items() if stored.fingerprint is None]
        for txid, user_id, event, context in self._bulk.event_payloads(conn, space_id, legacy):
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
            for txid, first in self._bulk.redemption_results(conn, space_id, txids).items()
        }

    def _ingest_page(
        self, conn: Connection, space_slug: str, page: Sequence[_Event], now: datetime,
        outbox: bool = True, echo_ids: Collection[str] = (),
    ) -> list[dict[str, Any] | CoreError]:
        """The page's wire results in order; an event that cannot apply gets its error instead
        and records nothing (a reused ``transaction_id`` with another payload, an amount its
        wallet cannot hold exactly, an unexpected failure of that event alone)."""
        space = self._space_row(conn, space_slug)
        zone = space.zone
        program = self._program_for(conn, space.id)
        customers = self._load_customers(conn, space.id, [ev.user_id for ev in page], create=False)
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
            customers.update(self._load_customers(conn, space.id, sorted(new_users), create=True,
                                                  created=created))

        results: list[dict[str, Any] | CoreError | None] = [None] * len(page)
        first_in_page: dict[str, tuple[int, str]] = {}  # txid -> (position, fingerprint)
        replays: list[tuple[int, int]] = []  # (position, position of the first in this page)
        duplicates = 0
        event_rows: list[tuple[Any, ...]] = []
        ledger_rows: list[tuple[Any, ...]] = []
        perk_rows: list[tuple[Any, ...]] = []
        touched: dict[int, _Customer] = {}
        counts: dict[int, int] = {}
        bulk = self._bulk
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
                    results[pos] = _as_duplicate(known.result)
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
            result = _wire_result(outcome)
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
            results[pos] = _as_duplicate(applied)
        unused = [customers[u].id for u in created if customers[u].id not in touched]
        if unused:  # created here for events that were refused: a refused event records nothing
            bulk.delete_customers(conn, unused)

        if event_rows:
            bulk.insert_events(conn, event_rows)
            bulk.insert_ledger(conn, ledger_rows)
            bulk.insert_perks(conn, perk_rows)
            self._save_customers(conn, space, program, touched.values(), counts, now)
            if self._postgres:
                # A redeem takes this lock before it checks the event ids; after it, a redemption
                # committed meanwhile with one of this page's ids is visible: start over.
                self._lock_outbox(conn, space.id)
                if self._existing_redemptions(conn, space.id, [row[3] for row in event_rows]):
                    raise _RetryPage()
            if outbox:
                bulk.insert_event_outbox(conn, [(space.id, row[2], row[0], db_now) for row in event_rows])
        self._bump_usage(conn, space.id, {"events": len(event_rows), "duplicates": duplicates})
        return [r for r in results if r is not None]

    def _save_customers(
        self,
        conn: Connection,
        space: _Space,
        program: Program,
        customers: Iterable[_Customer],
        event_counts: Mapping[int, int],
        now: datetime,
    ) -> None:
        """Write back the state document (balances, lifetime totals and the rest) of every changed
        customer; a balance is read from it (and audited against the ledger)."""
        states: list[tuple[str, int, Any, int]] = []
        db_now = self._bulk.dbdt(now)
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
        self._bulk.update_states(conn, states)

    # --- redeem -----------------------------------------------------------------------------------------

    def redeem(self, space: str, user_id: str, reward_key: str, transaction_id: str) -> dict[str, Any]:
        """Redeem a reward: subtract its cost and return its effect; idempotent on ``transaction_id``.

        ``InsufficientBalanceError`` (nothing changed) when the wallet holds less than the cost.
        """
        _check_text(user_id, "user_id", MAX_USER_ID)
        _check_text(reward_key, "reward_key", 128)
        _check_text(transaction_id, "transaction_id", MAX_TRANSACTION_ID)

        def run(conn: Connection) -> dict[str, Any]:
            row = self._space_row(conn, space)
            program = self._program_for(conn, row.id)
            customers = self._load_customers(conn, row.id, [user_id], create=False)
            # Before the id checks: an ingest of the same id either committed already (visible
            # below) or re-checks the redemptions once it holds this lock (see _ingest_page).
            self._lock_outbox(conn, row.id)
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
                return _as_duplicate(previous.result)
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
            now = self._now()
            result: dict[str, Any] = _wire({
                "applied": True,
                "duplicate": False,
                "transaction_id": transaction_id,
                "reward": {"key": reward_key, "name": plan.reward_name or reward_key},
                "effect": dict(plan.effect),
                "delta": [{"wallet": plan.wallet, "amount": -plan.cost}],
                "wallet_state": core_engine.wallet_state(program, cust.state.balances),
                "level": plan.level.to_json() if plan.level is not None else None,
            })
            redemption_id = self._bulk.allocate_ids(conn, r, "id", 1)[0]
            conn.execute(r.insert().values(
                id=redemption_id, space_id=row.id, customer_id=cust.id,
                transaction_id=transaction_id, reward_key=reward_key, wallet=plan.wallet,
                cost=plan.cost, result=result, created_at=now,
            ))
            conn.execute(st.ledger.insert().values(
                space_id=row.id, customer_id=cust.id, wallet=plan.wallet, amount=-plan.cost,
                event_id=None, redemption_id=redemption_id, created_at=now,
            ))
            self._save_customers(conn, row, program, [cust], {}, now)
            conn.execute(st.outbox.insert().values(
                space_id=row.id, kind="event", customer_id=cust.id, event_id=None,
                redemption_id=redemption_id, traits=None, created_at=now,
            ))
            self._bump_usage(conn, row.id, {"redemptions": 1})
            return result

        return self._write(run)

    # --- reads ------------------------------------------------------------------------------------------

    def customer(self, space: str, user_id: str) -> dict[str, Any]:
        """The customer read model (``GET /v1/customer/{id}``) in the seed's key order."""
        e = st.events
        c = st.customers
        with self._read() as conn:
            row = self._space_row(conn, space)
            program = self._program_for(conn, row.id)
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
        view = core_engine.customer_view(program, state, self._now(), row.zone)
        profile: dict[str, Any] = _wire({
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
        with self._read() as conn:
            row = self._space_row(conn, space)
            return {
                user_id: _state_balance(state, wallet)
                for user_id, state in self._bulk.state_documents(conn, row.id, user_ids)
            }

    def ledger_sums(self, space: str, user_id: str) -> dict[str, Decimal]:
        """``wallet → sum of the ledger`` of one customer (an audit of the materialized balance)."""
        c = st.customers
        lg = st.ledger
        e = st.events
        r = st.redemptions
        with self._read() as conn:
            row = self._space_row(conn, space)
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

    def iter_outbox(self, space: str, *, after_seq: int = 0, limit: int = 500) -> list[OutboxItem]:
        """Applied events and identify calls with ``seq > after_seq``, in commit order."""
        o = st.outbox
        e = st.events
        c = st.customers
        r = st.redemptions
        with self._read() as conn:
            row = self._space_row(conn, space)
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
                transaction_id=x.transaction_id, context=_wire(x.context or {}),
                occurred_at=x.occurred_at, traits=_wire(x.traits or {}),
            ))
        return items


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)
