"""The write-back inverse: a Perkamo event → a Perkville transaction payload, or the reason it is not sent."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mapping import _coerce as c
from mapping.ids import PERKAMO_SOURCE_PREFIX, PERKVILLE_PREFIX, perkamo_origin_id
from mapping.records import Zone
from mapping.types import PerkvilleTransactionPayload, WritebackDecision

__all__ = ["to_perkville_transaction"]


def _get(event: object, name: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


def to_perkville_transaction(
    event: object,
    *,
    event_perks: Mapping[str, int | str],
    perkville_user_id: str | int | None = None,
    email: str | None = None,
    external_member_id: str | None = None,
    location_id: str | int | None = None,
    timezone: Zone = "UTC",
    limit_to_once_per_calendar_day: bool = False,
) -> WritebackDecision:
    """Map one Perkamo event (a ``PerkamoEvent``, an outbox item or its dict) to a Perkville award.

    The payload's ``trans_source_id`` is ``perkamo:{transaction_id}``, which maps back to the same
    Perkamo id when the row is read again, so the loop closes as a duplicate. Events born in
    Perkville (id ``perkville:…`` or event ``perkville.…``) and events without a perk in
    ``event_perks`` are not written back; the decision's ``reason`` says why. The Perkville user is
    ``perkville_user_id`` (from the id map), else derived from a ``perkville:{id}`` customer id, else
    ``email``; or, when ``external_member_id`` is given (id strategy ``external_member``), the
    customer is named by that alone. ``transaction_dt`` is written in ``timezone`` (Perkville's
    zone), without offset.
    """
    zone = c.resolve_timezone(timezone)
    transaction_id = _get(event, "transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id:
        return WritebackDecision(code="no_transaction_id",
                                 reason="event has no transaction_id; it cannot be written back idempotently")
    name = _get(event, "event")
    if transaction_id.startswith(PERKVILLE_PREFIX):
        return WritebackDecision(transaction_id=transaction_id,
                                 code="born_in_perkville",
                                 reason="born in Perkville (id starts with 'perkville:'): never written back")
    if not isinstance(name, str) or not name:
        return WritebackDecision(transaction_id=transaction_id, code="no_event_name", reason="event has no name")
    if name.startswith("perkville."):
        return WritebackDecision(transaction_id=transaction_id,
                                 code="migration_event",
                                 reason=f"event {name!r} is a Perkville migration event: never written back")
    if name not in event_perks:
        return WritebackDecision(transaction_id=transaction_id,
                                 code="no_perk_for_event",
                                 reason=f"no Perkville perk mapped for event {name!r} (writeback.event_perks)")
    try:
        perk_id = c.to_id(event_perks[name], "perks")
    except c.Invalid as exc:
        return WritebackDecision(transaction_id=transaction_id,
                                 code="bad_perk",
                                 reason=f"perk mapped for event {name!r} is unusable: {exc.reason}")
    trans_source_id = PERKAMO_SOURCE_PREFIX + transaction_id
    if perkamo_origin_id(trans_source_id) != transaction_id:
        return WritebackDecision(transaction_id=transaction_id,
                                 code="not_round_trippable",
                                 reason="transaction_id would not round-trip (too long or control characters)")
    user: str | None = None
    member = external_member_id.strip() if isinstance(external_member_id, str) else None
    if member:
        pass  # named by the external system's member id: no Perkville user, no email
    elif perkville_user_id is not None and str(perkville_user_id).strip():
        user = str(perkville_user_id).strip()
    else:
        customer = _get(event, "user_id")
        if isinstance(customer, str) and customer.startswith(PERKVILLE_PREFIX) and customer[len(PERKVILLE_PREFIX):]:
            user = customer[len(PERKVILLE_PREFIX):]
    address = email.strip() if isinstance(email, str) and email.strip() and not member else None
    if user is None and address is None and not member:
        return WritebackDecision(transaction_id=transaction_id,
                                 code="no_perkville_member",
                                 reason="no Perkville user known for this customer (id map has no entry)")
    occurred = _get(event, "occurred_at")
    transaction_dt: str | None = None
    if occurred is not None:
        try:
            moment: datetime = c.to_datetime(occurred, zone)
            transaction_dt = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        except (c.Invalid, OverflowError, ValueError):
            transaction_dt = None
    payload = PerkvilleTransactionPayload(
        perk_id=perk_id,
        trans_source_id=trans_source_id,
        perkville_user_id=user,
        email=None if user is not None else address,
        external_member_id=member or None,
        location_id=str(location_id) if location_id is not None else None,
        transaction_dt=transaction_dt,
        limit_to_once_per_calendar_day=limit_to_once_per_calendar_day,
    )
    return WritebackDecision(payload=payload, transaction_id=transaction_id)
