"""``perkbridge rollback --run ID``: compensating events that reverse exactly what one run applied.

The run's applied events come from the link ``bridge_run_events`` (written with each page); their
wallet movements from the core's ledger. Each event with a movement gets one compensating event
``perkbridge.rolled_back`` with the id ``{transaction_id}:rollback`` (``bridge.reissue``) whose
context carries the negated movement per wallet; rules ``perkbridge_rollback_{wallet}`` (merged
into the Space's program when missing) turn it into exactly those movements. Nothing is deleted.

The rollback is a run of its own (direction ``rollback``) under the business's import lease, in
batches that each commit their events, their link rows, the reissued generations and the run's
counters in one transaction: a ``kill -9`` loses nothing, and the next rollback of the same run
finds the batches already applied as duplicates.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select

from bridge.errors import BridgeError, ConfigurationError, RunFailedError
from bridge.leased import leased, recorded
from bridge.reissue import reissued_id, rollback_id
from bridge.state import LeaseKeeper, RunCounts, RunRecord, StateStore
from bridge.state.stores import read_connection
from bridge.targets import CONFLICT_ATTEMPTS, merge_program

EVENT = "perkbridge.rolled_back"
DIRECTION = "rollback"
IMPORT_DIRECTION = "import"
LEASE_DIRECTION = IMPORT_DIRECTION
"""A rollback takes the business's import lease: no backfill or sync runs meanwhile."""
BATCH = 200
CHUNK = 500


class RollbackRefusedError(BridgeError):
    """The rollback would not be exact or safe as asked; nothing was written (exit 1)."""


class UnknownRunError(BridgeError):
    """``--run`` names no run in the log (a usage error)."""


@dataclass(frozen=True)
class Reversal:
    """The compensating event of one applied event."""

    customer_id: str
    reverses: str
    """The id the core stored the original under."""
    mapped_id: str
    """The id the mapping gave it (differs from ``reverses`` when it was a reissue)."""
    transaction_id: str
    delta: dict[str, Decimal]
    """Per wallet, the movement the compensating event makes (the original's, negated)."""


@dataclass(frozen=True)
class Shortfall:
    """A wallet the pending reversals would take below zero."""

    customer_id: str
    wallet: str
    balance: Decimal
    reversal: Decimal

    @property
    def after(self) -> Decimal:
        return self.balance + self.reversal


@dataclass
class RollbackPlan:
    """What rolling back a run would do, read without writing."""

    run: RunRecord
    space: str
    events: int
    """Events the run applied (the link rows)."""
    reversals: list[Reversal]
    """Compensating events for every applied event with a wallet movement."""
    done: set[str]
    """Ids of compensating events already stored (an earlier, maybe interrupted, rollback)."""
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Applied events without a wallet movement: nothing to reverse."""
        return self.events - len(self.reversals)

    @property
    def pending(self) -> list[Reversal]:
        return [r for r in self.reversals if r.transaction_id not in self.done]

    def totals(self) -> dict[tuple[str, str], Decimal]:
        """``(customer, wallet) → movement`` of the pending reversals."""
        out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for r in self.pending:
            for wallet, amount in r.delta.items():
                out[(r.customer_id, wallet)] += amount
        return dict(out)

    def shortfalls(self) -> list[Shortfall]:
        """Wallets the reversal lowers below zero: points spent since the run."""
        out = []
        for (customer, wallet), amount in sorted(self.totals().items()):
            balance = self.balances.get((customer, wallet), Decimal(0))
            if amount < 0 and balance + amount < 0:
                out.append(Shortfall(customer, wallet, balance, amount))
        return out

    def wallets(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = defaultdict(Decimal)
        for (_, wallet), amount in self.totals().items():
            out[wallet] += amount
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        members: dict[str, dict[str, Any]] = {}
        for (customer, wallet), amount in sorted(self.totals().items()):
            balance = self.balances.get((customer, wallet), Decimal(0))
            members.setdefault(customer, {})[wallet] = {
                "reversal": number(amount), "balance": number(balance), "after": number(balance + amount),
            }
        return {
            "run_id": self.run.id,
            "space": self.space,
            "events": self.events,
            "reversals": len(self.reversals),
            "already_reversed": len(self.reversals) - len(self.pending),
            "skipped": self.skipped,
            "wallets": {w: number(a) for w, a in self.wallets().items()},
            "members": [{"customer_id": c, "wallets": w} for c, w in members.items()],
            "refusals": [
                {"customer_id": s.customer_id, "wallet": s.wallet, "balance": number(s.balance),
                 "reversal": number(s.reversal), "after": number(s.after)}
                for s in self.shortfalls()
            ],
        }


@dataclass
class RollbackSummary:
    """What a rollback run did; ``to_json`` is the backfill shape plus ``reversed``."""

    run_id: int
    status: str
    counts: RunCounts
    rolled_back: int
    wallets: dict[str, Decimal]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # one kind: the run's events

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            **self.counts.as_dict(),
            "reversed": {"run_id": self.rolled_back, "wallets": {w: number(a) for w, a in self.wallets.items()}},
            "seconds": round(self.seconds, 3),
        }


def number(value: Decimal) -> int | Decimal:
    """A whole Decimal as an int (JSON and contexts); others as they are."""
    return int(value) if value == value.to_integral_value() else value


def refusal_message(run_id: int, shortfalls: Sequence[Shortfall]) -> str:
    named = ", ".join(
        f"{s.customer_id} ({s.wallet} {number(s.balance)} → {number(s.after)})" for s in shortfalls[:20]
    )
    more = f" and {len(shortfalls) - 20} more" if len(shortfalls) > 20 else ""
    return (
        f"rolling back run {run_id} would take {len(shortfalls)} wallet(s) below zero (points spent "
        f"since): {named}{more}; nothing was written; pass --allow-negative to reverse anyway"
    )


# ------------------------------------------------------------------------------------------ plan


def check_run(state: StateStore, run_id: int) -> RunRecord:
    """The run to roll back, or the reason it cannot be."""
    run = state.runs.get(run_id)
    if run is None:
        raise UnknownRunError(f"run {run_id} is not in the run log; see perkbridge status")
    if run.direction == DIRECTION:
        raise RollbackRefusedError(
            f"run {run_id} is itself a rollback; run the backfill or sync again to re-apply what it reversed"
        )
    if run.direction != IMPORT_DIRECTION:
        raise RollbackRefusedError(
            f"run {run_id} is a {run.direction} run; only import runs (backfill, sync, retry) apply "
            "events to roll back"
        )
    if run.target not in (None, "embedded"):
        raise RollbackRefusedError(
            f"run {run_id} went to a {run.target} Perkamo; rollback reverses runs into the embedded core only"
        )
    if run.counts.applied and not state.run_events.count(run_id):
        raise RollbackRefusedError(
            f"run {run_id} applied {run.counts.applied} records but was recorded before perkbridge "
            "linked events to runs; it cannot be rolled back exactly"
        )
    return run


def plan_rollback(engine: Engine, state: StateStore, run: RunRecord, *, space: str | None = None) -> RollbackPlan:
    """Read the run's applied events, their movements, and the balances now (writes nothing)."""
    from perkamo_core.storage import balances, customers, events, ledger, spaces

    links = list(state.run_events.of_run(run.id))
    recorded_spaces = {link.space for link in links}
    if len(recorded_spaces) > 1 or None in recorded_spaces:
        raise RollbackRefusedError(f"run {run.id} applied events outside one embedded Space; it cannot be rolled back")
    chosen = next(iter(recorded_spaces), None) or space
    if space is not None and chosen != space:
        raise RollbackRefusedError(f"run {run.id} applied its events to Space {chosen!r}, not {space!r}")
    if chosen is None:
        raise ConfigurationError("no Space: pass --space")
    reversals: list[Reversal] = []
    done: set[str] = set()
    owners: dict[tuple[str, str], Decimal] = {}
    with read_connection(engine) as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == chosen)).scalar()
        if space_id is None:
            if links:
                raise RollbackRefusedError(f"Space {chosen!r} of run {run.id} does not exist")
            return RollbackPlan(run, chosen, 0, [], set())
        for chunk in _chunks(links):
            by_id = {link.transaction_id: link for link in chunk}
            stored = conn.execute(
                select(events.c.id, events.c.transaction_id, customers.c.user_id)
                .join(customers, customers.c.id == events.c.customer_id)
                .where(events.c.space_id == space_id, events.c.transaction_id.in_(list(by_id)))
            ).all()
            missing = by_id.keys() - {row[1] for row in stored}
            if missing:
                raise RollbackRefusedError(
                    f"run {run.id} names {len(missing)} event(s) the core does not hold "
                    f"(e.g. {sorted(missing)[0]!r}); it cannot be rolled back exactly"
                )
            moves: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
            for event_id, wallet, amount in conn.execute(
                select(ledger.c.event_id, ledger.c.wallet, ledger.c.amount)
                .where(ledger.c.event_id.in_([row[0] for row in stored]))
            ):
                moves[int(event_id)][str(wallet)] += Decimal(amount)
            order = {link.transaction_id: link.seq for link in chunk}
            for event_id, txid, user_id in sorted(stored, key=lambda row: order[row[1]]):
                delta = {w: -a for w, a in sorted(moves.get(int(event_id), {}).items()) if a}
                if delta:
                    link = by_id[txid]
                    reversals.append(Reversal(
                        customer_id=user_id, reverses=txid, mapped_id=link.mapped_id,
                        transaction_id=rollback_id(txid, run.business), delta=delta,
                    ))
        for start in range(0, len(reversals), CHUNK):
            ids = [r.transaction_id for r in reversals[start:start + CHUNK]]
            done.update(str(t) for (t,) in conn.execute(
                select(events.c.transaction_id).where(events.c.space_id == space_id, events.c.transaction_id.in_(ids))
            ))
        plan = RollbackPlan(run, chosen, len(links), reversals, done)
        users = sorted({c for c, _ in plan.totals()})
        for start in range(0, len(users), CHUNK):
            for user_id, wallet, balance in conn.execute(
                select(customers.c.user_id, balances.c.wallet, balances.c.balance)
                .join(balances, balances.c.customer_id == customers.c.id)
                .where(customers.c.space_id == space_id, customers.c.user_id.in_(users[start:start + CHUNK]))
            ):
                owners[(str(user_id), str(wallet))] = Decimal(balance or 0)
    plan.balances = owners
    return plan


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ------------------------------------------------------------------------------------------ run


def rollback_rules(wallets: Sequence[str]) -> list[dict[str, Any]]:
    """One rule per wallet: ``perkbridge.rolled_back`` moves it by ``context.delta.{wallet}``."""
    rules = []
    for wallet in wallets:
        if "." in wallet:
            raise RollbackRefusedError(f"wallet {wallet!r} has a '.' in its key, which a formula cannot name")
        rules.append({
            "event": EVENT, "key": f"perkbridge_rollback_{wallet}",
            "label": f"Rollback of a perkbridge run ({wallet})", "wallet": wallet,
            "formula": f"{{{{delta.{wallet}}}}}",
        })
    return rules


def ensure_rules(service: Any, engine: Engine, space: str, plan: RollbackPlan) -> str | None:
    """Merge the rollback rules the plan needs into the Space's program; refuse a boost that
    would multiply a reversal. A sentence when the program changed."""
    from perkamo_core.storage import program_modules, spaces

    with read_connection(engine) as conn:
        active = {
            str(m): dict(b) for m, b in conn.execute(
                select(program_modules.c.module, program_modules.c.body)
                .join(spaces, spaces.c.id == program_modules.c.space_id)
                .where(spaces.c.slug == space, program_modules.c.active.is_(True))
                .order_by(program_modules.c.id)
            ) if isinstance(b, Mapping)
        }
    wallets = sorted({w for r in plan.pending for w in r.delta})
    raising = {w for r in plan.pending for w, a in r.delta.items() if a > 0}
    for boost in (active.get("boosts") or {}).get("boosts") or []:
        named = boost.get("events")
        scoped = boost.get("wallets")
        if (named is None or EVENT in named) and (scoped is None or raising & set(scoped)):
            raise RollbackRefusedError(
                f"boost {boost.get('key')!r} would multiply the reversals of run {plan.run.id}; "
                f"limit its events (it must not match {EVENT}) and roll back again"
            )
    rules = rollback_rules(wallets)
    have = {str(rule.get("key")) for rule in (active.get("events") or {}).get("rules") or []}
    if all(rule["key"] in have for rule in rules):
        return None
    merged = merge_program({"events": active.get("events") or {"rules": []}}, {"events": {"rules": rules}})
    service.load_program(space, merged)
    return f"added the rollback rules for {', '.join(wallets)} to Space {space!r}"


def run_rollback(
    engine: Engine,
    state: StateStore,
    service: Any,
    run_id: int,
    *,
    lease_seconds: int,
    allow_negative: bool = False,
    wait: bool = False,
    stop: threading.Event | None = None,
    batch: int = BATCH,
    secrets: tuple[str, ...] = (),
    space: str | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RollbackSummary:
    """Roll back run ``run_id`` under the business's import lease, as a run of its own.

    ``on_start``: called with the rollback run's id once it is recorded, after every refusal
    (the lease, the run's state, a shortfall) could have been raised (the dashboard answers then
    and leaves the run going: ``bridge.dashboard.background``)."""
    original = check_run(state, run_id)
    stop = stop or threading.Event()
    with leased(state, original.business, LEASE_DIRECTION, lease_seconds=lease_seconds, wait=wait) as keeper:
        state.runs.interrupt_stale(original.business, DIRECTION)
        original = check_run(state, run_id)  # the lease marked a dead runner's run interrupted
        if original.status == "running":
            raise RollbackRefusedError(f"run {run_id} is still running; roll it back once it has ended")
        plan = plan_rollback(engine, state, original, space=space)
        shortfalls = plan.shortfalls()
        if shortfalls and not allow_negative:
            raise RollbackRefusedError(refusal_message(run_id, shortfalls))
        return _apply(
            engine, state, service, plan, keeper, stop=stop, batch=batch, secrets=secrets, on_start=on_start
        )


def _apply(
    engine: Engine, state: StateStore, service: Any, plan: RollbackPlan, keeper: LeaseKeeper, *,
    stop: threading.Event, batch: int, secrets: tuple[str, ...], on_start: Callable[[int], None] | None,
) -> RollbackSummary:
    started = time.monotonic()
    business = plan.run.business
    details: dict[str, Any] = {"rolls_back": plan.run.id, "space": plan.space}
    rid = state.runs.start(business, direction=DIRECTION, kind="rollback", target="embedded",
                           owner=keeper.owner, details=details)
    summary = RollbackSummary(rid, "running", RunCounts(), plan.run.id, plan.wallets())

    def finish(status: str, error: str | None) -> None:
        summary.status = status
        summary.seconds = time.monotonic() - started
        wallets = {w: str(a) for w, a in summary.wallets.items()}
        state.runs.finish(rid, status, error=error, secrets=secrets,
                          details={**details, "wallets": wallets, "notes": summary.notes})

    with recorded(rid, finish, what="rollback run", secrets=secrets):
        if on_start is not None:
            on_start(rid)
        if plan.skipped:
            with engine.begin() as conn:
                keeper.fence(conn)
                skipped = RunCounts()
                skipped.count("skipped", plan.skipped)
                state.runs.add(conn, rid, skipped)
            summary.counts.add(skipped)
        note = ensure_rules(service, engine, plan.space, plan) if plan.pending else None
        if note:
            summary.notes.append(note)
        for chunk in _chunks(plan.reversals, batch):
            if stop.is_set():
                break
            summary.counts.add(_with_retries(lambda: _apply_batch(engine, state, service, plan, rid, keeper, chunk)))
    finish("stopped" if stop.is_set() else "succeeded", None)
    return summary


def _with_retries(attempt: Callable[[], RunCounts], sleep: Callable[[float], None] = time.sleep) -> RunCounts:
    """A batch whose transaction a concurrent writer spoiled (PostgreSQL) is sent again, like a page."""
    from perkamo_core.errors import ConflictError

    for n in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return attempt()
        except ConflictError:
            if n == CONFLICT_ATTEMPTS:
                raise
            sleep(min(0.05 * 2 ** (n - 1), 1.0))
    raise AssertionError("unreachable")


def _apply_batch(
    engine: Engine, state: StateStore, service: Any, plan: RollbackPlan, rid: int, keeper: LeaseKeeper,
    chunk: Sequence[Reversal],
) -> RunCounts:
    """One batch: its compensating events, link rows, generations and counters in one transaction."""
    business = plan.run.business
    generations = state.run_events.generations(business, [r.mapped_id for r in chunk])
    items = [
        {"user_id": r.customer_id, "event": EVENT, "transaction_id": r.transaction_id,
         "context": {"source": "perkbridge", "run_id": plan.run.id, "reverses": r.reverses,
                     "delta": {w: number(a) for w, a in r.delta.items()}}}
        for r in chunk
    ]
    counts = RunCounts()
    with engine.begin() as conn:
        keeper.fence(conn)
        outcomes = service.ingest_bulk(plan.space, items, conn=conn, outbox=False)
        applied: list[Reversal] = []
        for reversal, outcome in zip(chunk, outcomes, strict=True):
            if outcome.error is not None:
                raise RunFailedError(
                    f"the core refused the reversal {reversal.transaction_id} of {reversal.reverses}: "
                    f"{outcome.error.code}: {outcome.error.message}; nothing of its batch was written"
                )
            if outcome.result.get("duplicate"):
                counts.count("duplicate")
            else:
                _check_exact(reversal, outcome.result)
                counts.count("applied")
                applied.append(reversal)
        state.run_events.record(conn, rid, business, plan.space, [(r.transaction_id, None) for r in applied])
        state.run_events.advance(conn, business, _next_generations(applied, generations, business), rid)
        state.runs.add(conn, rid, counts)
    return counts


def _check_exact(reversal: Reversal, result: Mapping[str, Any]) -> None:
    """The core moved exactly the reversal (a clamped wallet or a stray rule would not)."""
    moved: dict[str, Decimal] = defaultdict(Decimal)
    for item in result.get("delta") or []:
        moved[str(item["wallet"])] += Decimal(str(item["amount"]))
    if {w: a for w, a in moved.items() if a} != reversal.delta:
        shown = json.dumps({w: str(a) for w, a in moved.items()})
        raise RunFailedError(
            f"the reversal of {reversal.reverses} moved {shown}, not the run's movement negated "
            f"({json.dumps({w: str(a) for w, a in reversal.delta.items()})}): a wallet that does not "
            "allow negative balances clamps it; nothing of its batch was written"
        )


def _next_generations(applied: Sequence[Reversal], current: Mapping[str, int], business: str) -> dict[str, int]:
    """Each mapped id's generation once its application ``reverses`` was rolled back."""
    out: dict[str, int] = {}
    for r in applied:
        now = max(current.get(r.mapped_id, 0), out.get(r.mapped_id, 0))
        reversed_generation = next(
            (g for g in range(now + 1) if reissued_id(r.mapped_id, g, business) == r.reverses), now
        )
        out[r.mapped_id] = max(now, reversed_generation + 1)
    return out
