"""Where a page of identify calls and events goes: the embedded core (one transaction) or a remote Perkamo.

A ``Target`` delivers one page and then calls the pipeline's ``commit`` with a ``Connection`` on
the state database and the per-item outcomes, so the pipeline can write the cursor, the run
counters and the dead letters:

- ``EmbeddedTarget``: identifies, events, outcomes and ``commit`` share ONE database transaction
  (the core and the bridge state live in the same database) — exactly-once.
- ``RemoteTarget``: identifies and batches of ≤ 100 events go over HTTP through
  ``connectors.perkamo``; ``commit`` runs only after every item was acknowledged (a ``duplicate``
  counts) or rejected — at-least-once with stable ids, hence effectively-once.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sqlalchemy import Connection, Engine

from bridge.errors import TargetError

if TYPE_CHECKING:
    from mapping.types import IdentifyCall, PerkamoEvent
    from perkamo_core.service import CoreService

Status = Literal["applied", "duplicate", "rejected"]

WALLET = "points"
CONFLICT_ATTEMPTS = 5
"""How often the embedded target sends a page whose transaction hit a ``ConflictError``."""


@dataclass(frozen=True)
class Delivery:
    """The outcome of one identify call or event at the target."""

    status: Status
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


APPLIED = Delivery("applied")
DUPLICATE = Delivery("duplicate")

Commit = Callable[[Connection, Sequence[Delivery], Sequence[Delivery]], None]
"""``commit(conn, identify_outcomes, event_outcomes)`` writes the page's state."""


class Target(Protocol):
    """A Perkamo the pipeline delivers to."""

    kind: str

    def ensure_program(self) -> str:
        """Make sure the ``perkville.*`` rules are active; return a sentence saying what happened."""
        ...

    def deliver(
        self,
        identifies: Sequence[IdentifyCall],
        events: Sequence[PerkamoEvent],
        commit: Commit,
    ) -> None:
        """Deliver one page, then call ``commit`` (in the same transaction where possible)."""
        ...

    def balances(self, customer_ids: Sequence[str]) -> dict[str, Decimal]:
        """The ``points`` wallet of each customer (0 for an unknown customer)."""
        ...


_EVENT_INPUT_FIELDS = frozenset({"user_id", "event", "transaction_id", "context", "occurred_at"})


def _event_inputs(events: Sequence[Any]) -> list[Any]:
    """``EventInput``s of a page of mapped events, built without a second validation pass.

    The mapping already typed every field and the core validates each item; this is what
    ``EventInput.model_construct`` does, minus its per-field alias handling (the hot path).
    """
    from perkamo_core.models import EventInput

    new = EventInput.__new__
    setter = object.__setattr__
    out: list[Any] = []
    for event in events:
        made = new(EventInput)
        setter(made, "__dict__", {
            "user_id": event.user_id,
            "event": event.event,
            "transaction_id": event.transaction_id,
            "context": _jsonable(event.context),
            "occurred_at": event.occurred_at,
        })
        setter(made, "__pydantic_fields_set__", set(_EVENT_INPUT_FIELDS))
        setter(made, "__pydantic_extra__", None)
        setter(made, "__pydantic_private__", None)
        out.append(made)
    return out


def _jsonable(context: Mapping[str, Any]) -> dict[str, Any]:
    """Context values as the wire would carry them (Decimals that are whole become ints)."""
    for value in context.values():
        if isinstance(value, Decimal):
            break
    else:
        return dict(context)
    out: dict[str, Any] = {}
    for key, value in context.items():
        if isinstance(value, Decimal):
            out[key] = int(value) if value == value.to_integral_value() else value
        else:
            out[key] = value
    return out


CONFLICT_CODE = "transaction_id_conflict"
"""The core's code for a transaction_id reused with another payload (409; a dead letter here)."""


def echo_ids(events: Sequence[Any]) -> frozenset[str]:
    """The ids of a page's events that are write-backs coming home: a Perkville row with
    ``trans_source_id`` ``perkamo:{T}`` maps to the Perkamo id T, whose event Perkamo already holds
    in its own shape (another event name and context): a duplicate, not a conflict."""
    from mapping.ids import is_perkville_transaction_id

    return frozenset(e.transaction_id for e in events if not is_perkville_transaction_id(e.transaction_id))


def _outcome_from_result(result: Mapping[str, Any] | None) -> Delivery:
    if result is None:
        return Delivery("rejected", "rejected", "no result")
    error = result.get("error")
    if error:
        code = str(error.get("code") or "rejected") if isinstance(error, Mapping) else "rejected"
        message = str(error.get("message") or "") if isinstance(error, Mapping) else str(error)
        return Delivery("rejected", code, message)
    if result.get("duplicate"):
        return DUPLICATE
    return APPLIED


def ruled_events(modules: Mapping[str, Any]) -> set[str]:
    """The event names the ``events`` module of a program has rules for."""
    events = modules.get("events") or {}
    rules = events.get("rules") or [] if isinstance(events, Mapping) else []
    return {str(rule.get("event")) for rule in rules if isinstance(rule, Mapping) and rule.get("event")}


def program_has_migration_rules(blueprint: Any, modules: Mapping[str, Any] | None = None) -> bool:
    """Whether a program blueprint mentions every event the migration program has rules for."""
    if modules is None:
        from config.programs import load_migration_program

        modules = load_migration_program()
    text = json.dumps(blueprint, default=str)
    return all(f'"{name}"' in text for name in sorted(ruled_events(modules)))


def merge_program(
    active: Mapping[str, Mapping[str, Any]], migration: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``migration``'s modules merged into the Space's ``active`` ones, never dropping a rule.

    ``events``: the active rules plus every migration rule whose ``key`` (or event) is missing.
    ``wallets``: the active wallets plus migration wallets whose ``key`` is missing.  Any other
    module of ``migration`` is taken as it is when the Space has none.
    """
    merged: dict[str, dict[str, Any]] = {}
    for name, body in migration.items():
        current = active.get(name)
        if current is None:
            merged[name] = json.loads(json.dumps(body))
            continue
        if name in ("events", "wallets"):
            field = "rules" if name == "events" else "wallets"
            items = list(current.get(field) or [])
            seen = {str(item.get("key") or item.get("event")) for item in items if isinstance(item, Mapping)}
            for item in body.get(field) or []:
                ident = str(item.get("key") or item.get("event"))
                if ident not in seen:
                    items.append(dict(item))
            merged[name] = {**dict(current), field: items}
        else:
            merged[name] = dict(current)
    return merged


def tiers_active(active: Mapping[str, Mapping[str, Any]], modules: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the Space's ``active`` modules already hold the tier map's leveling and step rules."""
    if active.get("leveling") != modules.get("leveling"):
        return False
    have = {json.dumps(rule, sort_keys=True) for rule in (active.get("events") or {}).get("rules") or []}
    return all(
        json.dumps(rule, sort_keys=True) in have
        for rule in (modules.get("events") or {}).get("rules") or []
        if str(rule.get("event")) == "perkville.tier_migrated"
    )


class EmbeddedTarget:
    """The embedded core in the bridge's own database: one transaction per page."""

    kind = "embedded"

    def __init__(
        self,
        service: CoreService,
        engine: Engine,
        space: str,
        *,
        program_loader: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        outbox: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        tiers: Mapping[str, int] | None = None,
    ) -> None:
        self.service = service
        self._tiers = dict(tiers or {})
        self._sleep = sleep
        self.engine = engine
        self.space = space
        self._program_loader = program_loader
        # ``outbox=False``: events read from Perkville never go back there, so they need no
        # write-back outbox rows (with them, write-back reads and skips each one as
        # ``born_in_perkville``).  A core without the switch records them regardless.
        self._bulk_options: dict[str, Any] = (
            {"outbox": False} if not outbox and _accepts(service.ingest_bulk, "outbox") else {}
        )
        self._echo_option = _accepts(service.ingest_bulk, "echo_ids")

    def ensure_program(self) -> str:
        self.service.ensure_space(self.space)
        if self._program_loader is None:
            from config.programs import load_migration_program

            modules = load_migration_program()
        else:
            modules = dict(self._program_loader())
        if self._tiers:
            from bridge.tiers import with_tier_modules

            modules = with_tier_modules(modules, self._tiers)
        active = self._active_modules(set(modules))
        if program_has_migration_rules(self.service.program(self.space), modules) and (
            not self._tiers or tiers_active(active, modules)
        ):
            return f"migration program rules for perkville.* events already active in Space {self.space!r}"
        merged = merge_program(active, modules)
        if self._tiers:
            merged = with_tier_modules(merged, self._tiers)
        self.service.load_program(self.space, merged)
        names = ", ".join(sorted(modules))
        kept = " (merged with the Space's own rules)" if active else ""
        return f"loaded the migration program ({names}) for perkville.* events into Space {self.space!r}{kept}"

    def _active_modules(self, names: set[str]) -> dict[str, dict[str, Any]]:
        """The Space's active bodies of ``names`` (so loading the migration rules keeps the others)."""
        from sqlalchemy import select

        from perkamo_core.storage import program_modules, spaces

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(program_modules.c.module, program_modules.c.body)
                .join(spaces, spaces.c.id == program_modules.c.space_id)
                .where(spaces.c.slug == self.space, program_modules.c.active.is_(True))
                .order_by(program_modules.c.id)
            ).all()
        return {str(m): dict(b) for m, b in rows if m in names and isinstance(b, Mapping)}

    def deliver(
        self,
        identifies: Sequence[IdentifyCall],
        events: Sequence[PerkamoEvent],
        commit: Commit,
    ) -> None:
        """One transaction for the page; a ``ConflictError`` (a concurrent writer collided with it,
        PostgreSQL) rolls it back and the page is sent again with the same ids, a bounded number
        of times.  ``commit`` must therefore be safe to run again after a rollback."""
        from perkamo_core.errors import ConflictError

        inputs = _event_inputs(events) if events else []
        echoes = echo_ids(events)
        options = dict(self._bulk_options, echo_ids=echoes) if echoes and self._echo_option else self._bulk_options
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self._deliver_once(identifies, inputs, commit, options)
                return
            except ConflictError as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise TargetError(
                        f"the page kept conflicting with concurrent writers after {attempt} attempts "
                        f"(nothing of it was committed; run again): {exc.message}"
                    ) from exc
                self._sleep(min(0.05 * 2 ** (attempt - 1), 1.0))

    def _deliver_once(
        self, identifies: Sequence[IdentifyCall], inputs: Sequence[Any], commit: Commit,
        options: Mapping[str, Any],
    ) -> None:
        from perkamo_core.errors import ConflictError, CoreError

        with self.engine.begin() as conn:
            id_outcomes: list[Delivery] = []
            if identifies:
                items = [(call.user_id, dict(call.traits)) for call in identifies]
                try:
                    with conn.begin_nested():
                        self.service.identify_bulk(self.space, items, conn=conn)
                    id_outcomes = [APPLIED] * len(items)
                except ConflictError:
                    raise  # the whole transaction is spoiled: roll back, retry the page
                except CoreError:
                    # One bad item spoils the bulk call: redo them one by one to find it.
                    for item in items:
                        try:
                            with conn.begin_nested():
                                self.service.identify_bulk(self.space, [item], conn=conn)
                            id_outcomes.append(APPLIED)
                        except ConflictError:
                            raise
                        except CoreError as exc:
                            id_outcomes.append(Delivery("rejected", exc.code, exc.message))
            ev_outcomes: list[Delivery] = []
            if inputs:
                outcomes = self.service.ingest_bulk(self.space, inputs, conn=conn, **options)
                append = ev_outcomes.append
                for outcome in outcomes:
                    result = outcome.result
                    if outcome.error is not None:
                        append(Delivery("rejected", outcome.error.code, outcome.error.message))
                    elif result is not None and "error" not in result:  # the usual case, inline
                        append(DUPLICATE if result.get("duplicate") else APPLIED)
                    else:
                        append(_outcome_from_result(result))
            commit(conn, id_outcomes, ev_outcomes)

    def balances(self, customer_ids: Sequence[str]) -> dict[str, Decimal]:
        found = self.service.wallet_balances(self.space, WALLET, user_ids=list(customer_ids))
        return {cid: Decimal(found.get(cid, 0)) for cid in customer_ids}


class RemoteTarget:
    """A Perkamo v1 API through ``connectors.perkamo.PerkamoClient``; state commits after the acks."""

    kind = "remote"

    def __init__(
        self, client: Any, engine: Engine, *, batch_size: int = 100, max_in_flight: int = 4,
        tiers: Mapping[str, int] | None = None,
    ) -> None:
        if not 1 <= batch_size <= 100:
            raise ValueError("remote batches hold 1 to 100 events")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.client = client
        self.engine = engine
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self._tiers = dict(tiers or {})

    def ensure_program(self) -> str:
        try:
            blueprint = self.client.program()
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            return f"could not read the remote program ({_api_error_text(exc)}); make sure it has rules for perkville.* events"
        if self._tiers:
            from bridge.tiers import with_tier_modules
            from config.programs import load_migration_program

            wanted = with_tier_modules(load_migration_program(), self._tiers)
            if not program_has_migration_rules(blueprint, wanted) or "tier_points" not in json.dumps(blueprint):
                return (
                    "WARNING: [tiers] is set but the remote program shows no tier rules on tier_points; "
                    "load the output of `perkbridge program from-perkville` into the remote Space"
                )
        if program_has_migration_rules(blueprint):
            return "the remote program has rules for perkville.* events"
        return (
            "WARNING: the remote program shows no rules for perkville.* events; load "
            "config/programs/migration.json into the remote Space or balances will not match"
        )

    def deliver(
        self,
        identifies: Sequence[IdentifyCall],
        events: Sequence[PerkamoEvent],
        commit: Commit,
    ) -> None:
        # Up to ``max_in_flight`` calls at once, each member's calls in order in one lane; the
        # page's state commits only once every call of every lane is acknowledged.
        id_outcomes = in_lanes(
            identifies, lambda call: call.user_id, self._identify_all, self.max_in_flight
        )
        ev_outcomes = in_lanes(events, lambda event: event.user_id, self._send_all, self.max_in_flight)
        with self.engine.begin() as conn:
            commit(conn, id_outcomes, ev_outcomes)

    def _identify_all(self, calls: Sequence[IdentifyCall]) -> list[Delivery]:
        return [self._identify(call) for call in calls]

    def _send_all(self, events: Sequence[PerkamoEvent]) -> list[Delivery]:
        outcomes: list[Delivery] = []
        for start in range(0, len(events), self.batch_size):
            outcomes.extend(self._batch(events[start : start + self.batch_size]))
        return outcomes

    def _identify(self, call: IdentifyCall) -> Delivery:
        from connectors.perkamo.errors import PerkamoApiError, PerkamoError, PerkamoInputError

        try:
            self.client.identify(call.user_id, _jsonable(call.traits))
        except PerkamoInputError as exc:
            return Delivery("rejected", "invalid_request", str(exc))
        except PerkamoApiError as exc:
            if _is_record_error(exc):
                return Delivery("rejected", _api_code(exc), _api_error_text(exc))
            raise TargetError(f"identify {call.user_id} failed: {_api_error_text(exc)}") from exc
        except (PerkamoError, OSError) as exc:
            raise TargetError(f"identify {call.user_id} failed: {type(exc).__name__}: {exc}") from exc
        return APPLIED

    def _batch(self, chunk: Sequence[PerkamoEvent]) -> list[Delivery]:
        from connectors.perkamo.errors import PerkamoApiError, PerkamoError, PerkamoInputError

        payload = [_wire(e) for e in chunk]
        try:
            response = self.client.batch(payload)
        except PerkamoInputError as exc:
            # Checked before sending: find the offending items one by one.
            if len(chunk) > 1:
                return [d for e in chunk for d in self._batch([e])]
            return [Delivery("rejected", "invalid_request", str(exc))]
        except (PerkamoError, OSError) as exc:
            if not isinstance(exc, PerkamoApiError):
                raise TargetError(f"event batch failed: {type(exc).__name__}: {exc}") from exc
            return self._batch_error(chunk, exc)
        results = _results_of(response)
        if len(results) != len(chunk):
            raise TargetError(
                f"event batch answered {len(results)} results for {len(chunk)} events"
            )
        echoes = echo_ids(chunk)
        outcomes = [_outcome_from_result(r) for r in results]
        return [
            DUPLICATE if o.reason == CONFLICT_CODE and e.transaction_id in echoes else o
            for e, o in zip(chunk, outcomes, strict=True)
        ]

    def _batch_error(self, chunk: Sequence[PerkamoEvent], exc: Exception) -> list[Delivery]:
        """A refused batch: a 4xx blames the items (split to find them); anything else the target."""
        if _is_record_error(exc) and len(chunk) > 1:
            return [d for e in chunk for d in self._batch([e])]
        if _is_record_error(exc):
            return [Delivery("rejected", _api_code(exc), _api_error_text(exc))]
        raise TargetError(f"event batch failed: {_api_error_text(exc)}") from exc

    def balances(self, customer_ids: Sequence[str]) -> dict[str, Decimal]:
        from connectors.perkamo import PerkamoApiError

        out: dict[str, Decimal] = {}
        for cid in customer_ids:
            try:
                body = _as_mapping(self.client.customer(cid))
            except PerkamoApiError as exc:
                if getattr(exc, "status", None) == 404:
                    out[cid] = Decimal(0)
                    continue
                raise TargetError(f"customer {cid} could not be read: {_api_error_text(exc)}") from exc
            wallets = body.get("wallets") or {}
            value = wallets.get(WALLET, 0) if isinstance(wallets, Mapping) else 0
            if isinstance(value, Mapping):  # tolerate {"points": {"balance": n}}
                value = value.get("balance", 0)
            out[cid] = Decimal(str(value))
        return out


T = TypeVar("T")


def in_lanes(
    items: Sequence[T],
    member: Callable[[T], str],
    send: Callable[[Sequence[T]], list[Delivery]],
    lanes: int,
) -> list[Delivery]:
    """``send`` the items in up to ``lanes`` threads, one lane per member (by a stable hash), so
    each member's items keep their order; the outcomes come back in the items' order.

    Every lane is waited for; the first lane's error is raised after all have ended.
    """
    if lanes <= 1 or len(items) <= 1:
        return send(items)
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(zlib.crc32(member(item).encode("utf-8")) % lanes, []).append(index)
    if len(groups) == 1:
        return send(items)
    outcomes: list[Delivery | None] = [None] * len(items)
    with ThreadPoolExecutor(len(groups), thread_name_prefix="perkbridge-lane") as pool:
        futures = [(indexes, pool.submit(send, [items[i] for i in indexes])) for indexes in groups.values()]
        errors = [f.exception() for _, f in futures]
    for error in errors:
        if error is not None:
            raise error
    for indexes, future in futures:
        for index, outcome in zip(indexes, future.result(), strict=True):
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


def _accepts(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name``."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _wire(event: PerkamoEvent) -> dict[str, Any]:
    body = event.to_wire()
    body["context"] = _jsonable(body.get("context") or {})
    return body


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if hasattr(value, "model_dump"):
        dumped: Mapping[str, Any] = value.model_dump()
        return dumped
    if hasattr(value, "__dict__"):
        attributes: Mapping[str, Any] = vars(value)
        return attributes
    raise TargetError(f"unexpected response type {type(value).__name__}")


def _results_of(response: Any) -> list[Mapping[str, Any]]:
    if isinstance(response, Mapping):
        items: Iterable[Any] = response.get("results") or []
    elif isinstance(response, list):
        items = response
    else:
        items = getattr(response, "results", [])
    return [_as_mapping(item) for item in items]


def _is_record_error(exc: Exception) -> bool:
    """A 4xx other than auth/limits: the item is at fault, not the target."""
    status = getattr(exc, "status", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408, 429)


def _api_code(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and body.get("code"):
        return str(body["code"])
    return f"http_{getattr(exc, 'status', 'error')}"


def _api_error_text(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, Mapping) else None
    if status is not None:
        return f"HTTP {status}" + (f": {message}" if message else "")
    return type(exc).__name__
