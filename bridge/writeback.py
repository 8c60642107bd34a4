"""Write-back: Perkamo activity that was not born in Perkville flows back to Perkville.

The embedded core's outbox lists every applied event and identify call of a Space in commit
order.  ``Writeback.run`` reads it from its own cursor (``bridge_cursors``, resource
``writeback:{space}``), batch by batch:

- an event is mapped by ``mapping.to_perkville_transaction`` through ``[writeback] event_perks``
  to a Perkville award with ``trans_source_id`` ``perkamo:{transaction_id}``; events whose id
  starts with ``perkville:`` (everything the bridge imported) are never sent back, and a pulled
  row whose ``trans_source_id`` starts with ``perkamo:`` maps back to the original Perkamo id,
  so the next sync sees it as a duplicate — loop-free by construction; the customer is the
  Perkville user of the id map, or, under ``[sync] id_strategy = "external_member"``, the
  customer id itself sent as the external system's member id (``external_member_id``; its wire
  name is ``[perkville] external_member_field``);
- an identify call becomes an external-member upsert (system ``PERKAMO``) when
  ``[writeback] external_members`` is on, and carries membership fields.

Nothing is marked done before Perkville confirms it: the cursor only moves past an item once
Perkville answered 2xx (or "duplicate ``trans_source_id``", the idempotent success: an
"already recorded" answer, or a refused or unanswered POST whose row the connector then read back
by ``trans_source_id``), or once the item was dead-lettered for a 4xx.  A retriable failure
(network, 429, 5xx after the connector's retry budget) or an auth failure ends the run with the
cursor before that item; it is sent again next time with the same ``trans_source_id``.  The cursor, the run counters and the
dead letters of a batch commit in one transaction, fenced by the ``writeback:{business}`` lease.
Counts balance: ``read = written_back + duplicate + skipped + dead_lettered``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from bridge.leased import Finish, leased, recorded
from bridge.redaction import redact_message
from bridge.sources import PerkvilleWriter, request_stats, stats_since
from bridge.state import LeaseKeeper, StateStore, utcnow
from mapping.writeback import to_perkville_transaction
from perkamo_core.service import REDEMPTION_EVENT  # the outbox's name for a redemption

DIRECTION = "writeback"
REDEMPTION_ECHO_EVENT = "perkbridge.redemption_written_back"
"""Zero-effect marker event that reserves a written-back redemption's id (see
``Writeback._guard_redemption_echo``)."""
EXTERNAL_SYSTEM_ID = "PERKAMO"
MEMBERSHIP_TRAITS: Mapping[str, str] = {
    "membership_status": "membership_status",
    "membership_type": "membership_type",
    "membership_join_date": "join_dt",
    "membership_cancel_date": "cancel_dt",
    "home_location_external_id": "external_home_location_id",
}
"""Perkamo trait → Perkville external-member field sent by identify write-back."""


class OutboxSource(Protocol):
    """What write-back reads: the embedded core's ``iter_outbox``."""

    def iter_outbox(self, space: str, *, after_seq: int = 0, limit: int = 500) -> list[Any]: ...


@dataclass(frozen=True)
class WritebackConfig:
    """Plain values write-back needs from the settings."""

    business: str
    space: str
    event_perks: Mapping[str, int | str] = field(default_factory=dict)
    external_members: bool = False
    batch_size: int = 100
    id_strategy: str = "perkville_user"
    """``external_member``: awards name customers by their id, the external system's member id."""
    timezone: str = "UTC"
    lease_seconds: int = 120
    secrets: tuple[str, ...] = ()

    @property
    def cursor_resource(self) -> str:
        return f"writeback:{self.space}"


@dataclass
class WritebackSummary:
    """What one write-back pass did; ``to_json`` adds to the ``sync --json`` shape."""

    run_id: int
    status: str = "running"
    read: int = 0
    written_back: int = 0
    duplicate: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    cursor: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def balanced(self) -> bool:
        return self.read == self.written_back + self.duplicate + self.skipped + self.dead_lettered

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "run_id": self.run_id,
            "status": self.status,
            "read": self.read,
            "written_back": self.written_back,
            "duplicate": self.duplicate,
            "skipped": self.skipped,
            "dead_lettered": self.dead_lettered,
            "cursor": self.cursor,
        }
        if self.skip_reasons:
            body["skip_reasons"] = dict(self.skip_reasons)
        if self.error:
            body["error"] = self.error
        return body


@dataclass
class _Batch:
    """What one batch changed, committed together with the cursor."""

    last_seq: int
    written_back: int = 0
    duplicate: int = 0
    skipped: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[tuple[str, str]] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return self.written_back + self.duplicate + self.skipped + len(self.dead_letters)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1


_REJECTED = object()
"""``_send``'s answer when Perkville refused the item with a 4xx (it was dead-lettered)."""


class _StopBatch(Exception):
    """A retriable or auth failure: commit what was confirmed, then fail the run."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


SKIP_CODES: Mapping[str, str] = {
    "born_in_perkville": "born_in_perkville",
    "migration_event": "born_in_perkville",
    "no_perk_for_event": "no_perk_for_event",
}
"""Mapping refusals that are normal (counted as skipped); every other refusal is dead-lettered."""


class Writeback:
    """One business's write-back from one Space of the embedded core to Perkville."""

    def __init__(
        self,
        *,
        state: StateStore,
        outbox: OutboxSource,
        client: PerkvilleWriter,
        config: WritebackConfig,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.state = state
        self.outbox = outbox
        self.client = client
        self.config = config
        self.stop = stop or threading.Event()
        self.clock = clock
        self._users: dict[str, str | None] = {}
        self._stats_before: dict[str, int] = {}

    # ------------------------------------------------------------------------------ entry

    def run(self, *, wait: bool = False) -> WritebackSummary:
        """One pass to the end of the outbox (or until stopped) under the write-back lease.

        Raises ``LeaseHeldError`` when another runner holds ``writeback:{business}`` and
        ``RunFailedError`` when Perkville could not be reached or refused the credentials (the
        cursor then stays before the first unconfirmed item).
        """
        config = self.config
        started = time.monotonic()
        with leased(
            self.state, config.business, DIRECTION, lease_seconds=config.lease_seconds, wait=wait
        ) as keeper:
            run_id = self.state.runs.start(
                config.business,
                direction=DIRECTION,
                kind="writeback",
                target="perkville",
                owner=keeper.owner,
                details={"space": config.space},
            )
            summary = WritebackSummary(run_id=run_id, cursor=self._cursor())
            self._stats_before = request_stats(self.client)
            self._learn_duplicate_answer()
            with recorded(run_id, self._finisher(summary, started), what="write-back run", secrets=config.secrets):
                self._run_batches(summary, keeper)
            self._finisher(summary, started)("stopped" if self.stop.is_set() else "succeeded", None)
            return summary

    def retry_dead_letters(
        self, *, reason: str | None = None, ids: list[int] | None = None, wait: bool = False
    ) -> WritebackSummary:
        """Send the open write-back dead letters again (same ``trans_source_id``s, so idempotent).

        Items Perkville now accepts become ``resolved``; a repeat failure bumps ``attempts``.
        The cursor does not move.
        """
        config = self.config
        started = time.monotonic()
        with leased(
            self.state, config.business, DIRECTION, lease_seconds=config.lease_seconds, wait=wait
        ) as keeper:
            run_id = self.state.runs.start(
                config.business, direction=DIRECTION, kind="writeback_retry",
                target="perkville", owner=keeper.owner, details={"reason": reason, "ids": ids or []},
            )
            summary = WritebackSummary(run_id=run_id, cursor=self._cursor())
            self._stats_before = request_stats(self.client)
            self._learn_duplicate_answer()
            letters = [
                letter
                for letter in self.state.dead_letters.list(config.business, reason=reason, ids=ids)
                if letter.kind in RETRYABLE_KINDS
            ]
            with recorded(
                run_id, self._finisher(summary, started), what="write-back retry run", secrets=config.secrets
            ):
                self._retry(letters, summary, keeper)
            self._finisher(summary, started)("succeeded", None)
            return summary

    def _learn_duplicate_answer(self) -> None:
        """Teach the client the duplicate answer ``perkbridge probe --write-test`` recorded for
        this business (the newest probe that made the test), if it has not got it yet."""
        from bridge.probe import recorded_duplicate_answer

        record = self.state.probes.latest_with(self.config.business, "write_test")
        answer = recorded_duplicate_answer(record.report) if record is not None else None
        if answer is not None and answer not in self.client.duplicate_answers:
            self.client.duplicate_answers = (*self.client.duplicate_answers, answer)

    def _retry(self, letters: list[Any], summary: WritebackSummary, keeper: LeaseKeeper) -> None:
        for start in range(0, len(letters), self.config.batch_size):
            batch = _Batch(last_seq=summary.cursor)
            failure: _StopBatch | None = None
            for letter in letters[start : start + self.config.batch_size]:
                before = len(batch.dead_letters), batch.written_back + batch.duplicate
                try:
                    self._write(_item_from_raw(letter.raw), batch)
                except _StopBatch as stop:
                    failure = stop
                    break
                if (len(batch.dead_letters), batch.written_back + batch.duplicate) == before:
                    # Skipped now (e.g. the event is no longer mapped): nothing to resend.
                    batch.resolved.append((letter.kind, letter.record_id))
            self._commit(batch, summary, keeper, move_cursor=False)
            if failure is not None:
                raise failure.cause

    def _finisher(self, summary: WritebackSummary, started: float) -> Finish:
        def finish(status: str, error: str | None) -> None:
            summary.status = status
            summary.error = error
            self._finish(summary, started)

        return finish

    def _cursor(self) -> int:
        value = self.state.cursors.get(self.config.business, self.config.cursor_resource)
        return int(value) if value else 0

    def _finish(self, summary: WritebackSummary, started: float) -> None:
        self.state.runs.finish(
            summary.run_id,
            summary.status,
            error=summary.error,
            secrets=self.config.secrets,
            details={
                "space": self.config.space,
                "written_back": summary.written_back,
                "cursor": summary.cursor,
                "skip_reasons": summary.skip_reasons,
                "seconds": round(time.monotonic() - started, 3),
                # This run's Perkville requests, 429s and answers by status class.
                "perkville": stats_since(self.client, self._stats_before),
            },
        )

    def _run_batches(self, summary: WritebackSummary, keeper: LeaseKeeper) -> None:
        while not self.stop.is_set():
            if keeper.lost.is_set():
                from bridge.errors import LeaseLostError

                raise LeaseLostError(
                    f"write-back lease of business {self.config.business} was taken over"
                )
            items = self.outbox.iter_outbox(
                self.config.space, after_seq=summary.cursor, limit=self.config.batch_size
            )
            if not items:
                return
            batch = _Batch(last_seq=summary.cursor)
            failure: _StopBatch | None = None
            for item in items:
                try:
                    self._write(item, batch)
                except _StopBatch as stop:
                    failure = stop
                    break
                batch.last_seq = int(item.seq)
            self._commit(batch, summary, keeper)
            if failure is not None:
                raise failure.cause
            if len(items) < self.config.batch_size:
                return

    def _commit(
        self,
        batch: _Batch,
        summary: WritebackSummary,
        keeper: LeaseKeeper,
        *,
        move_cursor: bool = True,
    ) -> None:
        if batch.last_seq == summary.cursor and not batch.read and not batch.resolved:
            return
        from bridge.state import RunCounts

        counts = RunCounts(
            read=batch.read,
            applied=batch.written_back,
            duplicate=batch.duplicate,
            skipped=batch.skipped,
            dead_lettered=len(batch.dead_letters),
        )
        business = self.config.business
        with self.state.engine.begin() as conn:
            keeper.fence(conn)
            for letter in batch.dead_letters:
                self.state.dead_letters.put(conn, business=business, run_id=summary.run_id, **letter)
            by_kind: dict[str, list[str]] = {}
            for kind, record_id in batch.resolved:
                by_kind.setdefault(kind, []).append(record_id)
            for kind, record_ids in by_kind.items():
                self.state.dead_letters.resolve(conn, business, kind, record_ids)
            if move_cursor:
                self.state.cursors.set(
                    conn, business, self.config.cursor_resource, str(batch.last_seq),
                    summary.run_id,
                )
            self.state.runs.add(conn, summary.run_id, counts)
        summary.cursor = batch.last_seq
        summary.read += batch.read
        summary.written_back += batch.written_back
        summary.duplicate += batch.duplicate
        summary.skipped += batch.skipped
        summary.dead_lettered += len(batch.dead_letters)
        for reason, n in batch.skip_reasons.items():
            summary.skip_reasons[reason] = summary.skip_reasons.get(reason, 0) + n

    # ------------------------------------------------------------------------------ items

    def _write(self, item: Any, batch: _Batch) -> None:
        if item.kind == "event":
            self._write_event(item, batch)
        elif item.kind == "identify":
            self._write_identify(item, batch)
        else:
            batch.skip("unknown_outbox_kind")

    def _perkville_user(self, customer_id: str) -> str | None:
        if customer_id not in self._users:
            with self.state.engine.connect() as conn:
                self._users[customer_id] = self.state.id_map.customer_owner(
                    self.config.business, customer_id, conn
                )
        return self._users[customer_id]

    def _send(
        self, batch: _Batch, kind: str, record_id: str, item: Any, call: Callable[[], Any]
    ) -> Any:
        """Call Perkville once (the connector retries inside its budget).

        A 4xx other than 401/403 dead-letters the item and returns ``_REJECTED`` (a refusal
        Perkville documents, e.g. too few points, under its own reason); anything else that fails
        stops the batch with the item unconfirmed.
        """
        from connectors.perkville.errors import DOCUMENTED_REFUSALS, PerkvilleHTTPError, documented_refusal

        try:
            return call()
        except PerkvilleHTTPError as exc:
            if exc.status in (401, 403):
                raise _StopBatch(exc) from exc
            detail = redact_message(str(exc), self.config.secrets)
            refusal = documented_refusal(exc.body)
            if refusal is not None:  # e.g. too few points: named, so the operator reads why
                name, words = DOCUMENTED_REFUSALS[refusal]
                words = f"Perkville refused: {words} ({detail})"
                batch.dead_letters.append(_letter(kind, record_id, item, f"perkville_{name}", words))
                return _REJECTED
            batch.dead_letters.append(_letter(kind, record_id, item, f"perkville_{exc.status}", detail))
            return _REJECTED
        except Exception as exc:  # retriable after the connector's budget, auth, network
            raise _StopBatch(exc) from exc

    def _external_member_id(self, customer_id: str) -> str | None:
        """The customer's external member id, under id strategy ``external_member``.

        There a customer id is the external system's member id, except the ``perkville:{id}``
        fallback of a member without one (``mapping.ids``), which is named by its Perkville user.
        """
        if self.config.id_strategy != "external_member" or not customer_id:
            return None
        return None if customer_id.startswith("perkville:") else customer_id

    def _guard_redemption_echo(self, item: Any) -> None:
        """Make the redemption's id known to the core as an *event* before Perkville sees it.

        The written-back row comes back on the next sync as a ``perkville.points_redeemed`` event
        with the redemption's transaction id; the core keeps event ids and redemption ids apart,
        so without this zero-effect marker that echo would deduct the points a second time.
        Idempotent (same transaction id); no program rule matches the marker's event.
        """
        ingest = getattr(self.outbox, "ingest", None)
        if ingest is None:
            return
        from perkamo_core.errors import TransactionIdConflictError
        from perkamo_core.models import EventInput

        context = item.context or {}
        marker = EventInput(
            user_id=item.user_id,
            event=REDEMPTION_ECHO_EVENT,
            transaction_id=item.transaction_id,
            context={
                "reward_key": context.get("reward_key"),
                "cost": context.get("cost"),
                "source": "perkbridge-writeback",
            },
            occurred_at=item.occurred_at,
        )
        try:
            ingest(self.config.space, marker)
        except TransactionIdConflictError:
            pass  # the core holds the id as a redemption (ids are unique across both): guarded

    def _event_perks(self, item: Any) -> Mapping[str, int | str]:
        """``event_perks``, with ``reward.redeemed:{reward_key}`` winning for that reward."""
        perks = self.config.event_perks
        if item.event == REDEMPTION_EVENT:
            reward = (item.context or {}).get("reward_key")
            specific = perks.get(f"{REDEMPTION_EVENT}:{reward}") if reward else None
            if specific is not None:
                return {**perks, REDEMPTION_EVENT: specific}
        return perks

    def _write_event(self, item: Any, batch: _Batch) -> None:
        transaction_id = str(item.transaction_id or "")
        if transaction_id.startswith("perkville:"):
            batch.skip("born_in_perkville")  # cheap path: most of the outbox after a backfill
            return
        member = self._external_member_id(item.user_id)
        decision = to_perkville_transaction(
            item,
            event_perks=self._event_perks(item),
            perkville_user_id=None if member else self._perkville_user(item.user_id),
            external_member_id=member,
            timezone=self.config.timezone,
        )
        if decision.payload is None:
            code = decision.code or "not_writable"
            if code in SKIP_CODES:
                batch.skip(SKIP_CODES[code])
            else:
                # E.g. a customer who exists only in Perkamo (``no_perkville_member``): kept, so a
                # retry after the member is linked in Perkville and synced still writes it.
                batch.dead_letters.append(
                    _letter("writeback_event", transaction_id or f"seq:{item.seq}", item, code,
                            decision.reason or code)
                )
            return
        payload = decision.payload
        if item.event == REDEMPTION_EVENT:
            self._guard_redemption_echo(item)
        result = self._send(
            batch, "writeback_event", transaction_id, item,
            lambda: self.client.award_points(
                perk=payload.perk_id,
                trans_source_id=payload.trans_source_id,
                user=payload.perkville_user_id,
                email=payload.email,
                external_member_id=payload.external_member_id,
                location=payload.location_id,
                business=self.config.business,
                quantity=payload.quantity,
                points=_redemption_points(item),
                transaction_dt=item.occurred_at,
                limit_to_once_per_calendar_day=payload.limit_to_once_per_calendar_day,
            ),
        )
        if result is _REJECTED:
            return
        if getattr(result, "limited", False):
            batch.dead_letters.append(
                _letter("writeback_event", transaction_id, item, "perkville_once_per_day",
                        "Perkville refused a second award of this perk today")
            )
        elif getattr(result, "duplicate", False):
            batch.duplicate += 1
            batch.resolved.append(("writeback_event", transaction_id))
        else:
            batch.written_back += 1
            batch.resolved.append(("writeback_event", transaction_id))

    def _write_identify(self, item: Any, batch: _Batch) -> None:
        if not self.config.external_members:
            batch.skip("external_members_disabled")
            return
        traits = dict(item.traits or {})
        member = to_external_member(item.user_id, traits, business=self.config.business)
        if member is None:
            batch.skip("no_membership_traits")
            return
        record_id = f"{item.user_id}@{item.seq}"
        result = self._send(
            batch, "writeback_identify", record_id, item,
            lambda: self.client.upsert_external_member(member),
        )
        if result is _REJECTED:
            return
        if result is None:
            batch.skip("external_members_unavailable")
        else:
            batch.written_back += 1


def to_external_member(
    customer_id: str, traits: Mapping[str, Any], *, business: str
) -> dict[str, Any] | None:
    """An identify's membership traits as a Perkville external-member upsert body, or ``None``.

    The record belongs to the system ``PERKAMO`` with the Perkamo customer id as member id, so it
    never overwrites the records Perkville's own integrations keep.
    """
    body: dict[str, Any] = {}
    for trait, name in MEMBERSHIP_TRAITS.items():
        value = traits.get(trait)
        if value is not None and value != "":
            body[name] = value
    status = body.get("membership_status")
    if isinstance(status, str):
        body["membership_status"] = status.upper()
    if not body:
        return None
    email = traits.get("email")
    if isinstance(email, str) and email:
        body["email"] = email
    return {
        "business": business,
        "system_id": EXTERNAL_SYSTEM_ID,
        "member_id": customer_id,
        **body,
    }


def _letter(kind: str, record_id: str, item: Any, reason: str, detail: str) -> dict[str, Any]:
    raw = {
        "seq": int(item.seq),
        "kind": item.kind,
        "user_id": item.user_id,
        "event": item.event,
        "transaction_id": item.transaction_id,
        "context": item.context,
        "occurred_at": item.occurred_at.isoformat() if item.occurred_at else None,
        "traits": item.traits,
    }
    return {
        "kind": kind,
        "record_id": record_id[:256],
        "raw": json.loads(json.dumps(raw, default=str)),
        "reason": reason,
        "detail": detail,
    }


def _redemption_points(item: Any) -> int | None:
    """A Perkamo redemption's cost, sent as the Perkville points so both sides deduct the same.

    Other events award the perk's own points (the outbox does not carry their delta).
    """
    if item.event != REDEMPTION_EVENT:
        return None
    cost = (item.context or {}).get("cost")
    try:
        value = Decimal(str(cost))
    except (InvalidOperation, ValueError):
        return None
    if value <= 0 or value != value.to_integral_value():
        return None
    return int(value)


RETRYABLE_KINDS = frozenset({"writeback_event", "writeback_identify"})
"""Dead-letter kinds this module owns (``perkbridge deadletters retry`` routes them here)."""


@dataclass(frozen=True)
class _RetriedItem:
    """An outbox item rebuilt from a dead letter's raw JSON."""

    seq: int
    kind: str
    user_id: str
    event: str | None
    transaction_id: str | None
    context: dict[str, Any]
    occurred_at: datetime | None
    traits: dict[str, Any]


def _item_from_raw(raw: Mapping[str, Any]) -> _RetriedItem:
    occurred = raw.get("occurred_at")
    return _RetriedItem(
        seq=int(raw.get("seq") or 0),
        kind=str(raw.get("kind")),
        user_id=str(raw.get("user_id")),
        event=raw.get("event"),
        transaction_id=raw.get("transaction_id"),
        context=dict(raw.get("context") or {}),
        occurred_at=datetime.fromisoformat(occurred) if isinstance(occurred, str) else None,
        traits=dict(raw.get("traits") or {}),
    )


def pending(state: StateStore, outbox: OutboxSource, config: WritebackConfig) -> int:
    """Outbox items after the write-back cursor (up to one batch; for status displays)."""
    value = state.cursors.get(config.business, config.cursor_resource)
    return len(outbox.iter_outbox(config.space, after_seq=int(value or 0), limit=config.batch_size))

