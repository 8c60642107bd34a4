"""Records travelling through a page, and the pure mapping of raw Perkville rows into them.

Nothing here reads the source or the database: callers look up what a mapping needs (the staged
users, the id map, the external members) and pass it in.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from bridge.pipeline.options import Mode, PipelineConfig
from bridge.source_clock import to_stamp
from bridge.state import IdMapEntry
from mapping.events import to_events_many, to_opening_balance_event
from mapping.records import parse_connection
from mapping.tiers import next_tier_event, tier_level
from mapping.traits import to_identify
from mapping.types import IdentifyCall, MappingIssue, PerkamoEvent


@dataclass(slots=True)
class PageRecord:
    """One Perkville record travelling through a page: its id, raw JSON and what it became."""

    kind: str
    record_id: str
    raw: Mapping[str, Any]
    events: list[PerkamoEvent] = field(default_factory=list)
    identify: IdentifyCall | None = None
    skipped: bool = False
    problem: tuple[str, str] | None = None  # (reason, detail) → dead letter
    entry: IdMapEntry | None = None
    cursor_value: datetime | None = None


def traits_hash(traits: Mapping[str, Any]) -> str:
    """A stable digest of a trait set, so an unchanged member is not identified again."""
    canonical = json.dumps(traits, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def issue_reason(issue: MappingIssue) -> str:
    """A short dead-letter reason code from a mapping issue (``bad_classification``)."""
    return f"bad_{issue.field}" if issue.field else "unmappable"


def first_problem(issues: Sequence[MappingIssue], fallback: str) -> tuple[str, str]:
    """``(reason, detail)`` of the first error among ``issues`` (``fallback`` if none says more)."""
    for issue in issues:
        if issue.severity == "error":
            return issue_reason(issue), issue.reason
    return "unmappable", fallback


def trailing_id(value: Any) -> str | None:
    """``/v2/transactions/17/`` (or ``17``) → ``"17"``; ``None`` when there is no id."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().rstrip("/").rsplit("/", 1)[-1]
    return text if text.isdigit() else None


class DefaultCustomerIds(dict[str, str]):
    """The id map, answering ``perkville:{id}`` for users it does not hold (default strategy)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        found = super().get(key)
        return found if found is not None else f"perkville:{key}"


def customer_ids(known: Mapping[str, str], id_strategy: str) -> dict[str, str]:
    """Perkville user id → customer id from the id map (ids once assigned are kept).

    Under ``perkville_user`` a user missing from the map (no connection) gets the default id;
    under the other strategies such a row is an issue (identify the member first).
    """
    if id_strategy == "perkville_user":
        return DefaultCustomerIds(known)
    return dict(known)


def map_transaction_rows(
    rows: Sequence[Mapping[str, Any]],
    business: str,
    timezone: str,
    customer_ids: Mapping[str, str] | None,
    with_cursor: bool,
) -> list[PageRecord]:
    """Map raw transaction rows to records; ``with_cursor`` keeps each row's ``last_mod_dt``."""
    results = to_events_many(rows, business_id=business, timezone=timezone, customer_ids=customer_ids)
    records: list[PageRecord] = []
    for raw, result in zip(rows, results, strict=True):
        rid = raw.get("transaction_id", raw.get("id", "?")) if isinstance(raw, Mapping) else "?"
        record = PageRecord("transaction", str(rid), raw)
        records.append(record)
        if with_cursor:
            record.cursor_value = to_stamp(raw.get("last_mod_dt"), timezone)
        if result.issues and not result.ok:
            record.problem = first_problem(result.issues, "transaction unmappable")
        elif result.skipped and not result.events:
            record.skipped = True
        else:
            record.events = result.events
    return records


class ExternalMembers:
    """External member records (membership traits, ``external_member`` ids), by user id or email.

    Held in memory for the members phase: one record per member at most.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_key: dict[str, Mapping[str, Any]] = {}
        for raw in rows:
            user = raw.get("user_id") or raw.get("user")
            if user:
                self._by_key[f"user:{str(user).rstrip('/').rsplit('/', 1)[-1]}"] = raw
            email = raw.get("email")
            if isinstance(email, str) and email.strip():
                self._by_key.setdefault(f"email:{email.strip().lower()}", raw)

    def of(self, user_id: str, user: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The member record of a Perkville user: by user id, else by any of the user's emails."""
        if not self._by_key:
            return None
        found = self._by_key.get(f"user:{user_id}")
        if found is not None or user is None:
            return found
        for item in user.get("emails") or []:
            email = item.get("email") if isinstance(item, Mapping) else item
            if isinstance(email, str):
                found = self._by_key.get(f"email:{email.strip().lower()}")
                if found is not None:
                    return found
        return None


def map_connections(
    rows: Sequence[Mapping[str, Any]],
    *,
    config: PipelineConfig,
    users_of: Callable[[list[str]], Mapping[str, Mapping[str, Any]]],
    known_of: Callable[[list[str]], Mapping[str, IdMapEntry]],
    members: ExternalMembers,
    locations: Mapping[str, Any],
    mode: Mode,
    cutover: datetime | None,
    unknown_levels: Counter[str] | None = None,
) -> list[PageRecord]:
    """Connections → identify calls, id-map entries, (balance mode) opening-balance events and
    (with ``config.tiers``) ``perkville.tier_migrated`` events.

    ``users_of`` answers the staged users of a page's user ids, ``known_of`` their id-map
    entries (one lookup each per page). An unchanged member (same customer id and traits hash)
    gets no identify call. A member gets a tier event only when its Perkville level maps to a
    level above the one the id map says was migrated (``mapping.tiers.next_tier_event``);
    ``unknown_levels`` counts the level names the map lacks.
    """
    tiers = dict(config.tiers)
    business, tz = config.business, config.timezone
    parsed_rows = [parse_connection(raw, timezone=tz) for raw in rows]
    user_ids = [p.record.user_id for p in parsed_rows if p.record is not None]
    users, known = users_of(user_ids), known_of(user_ids)
    records: list[PageRecord] = []
    for raw, parsed in zip(rows, parsed_rows, strict=True):
        record = PageRecord("connection", str(raw.get("connection_id", raw.get("id", "?"))), raw)
        records.append(record)
        if parsed.record is None:
            record.problem = first_problem(parsed.issues, "unreadable connection")
            continue
        conn_rec = parsed.record
        user = users.get(conn_rec.user_id)
        result = to_identify(
            user,
            connection=conn_rec,  # parsed above (its issues travel with it)
            external_member=members.of(conn_rec.user_id, user),
            locations=locations,
            strategy=config.id_strategy,  # type: ignore[arg-type]
            allow=config.trait_allow,
            deny=config.trait_deny,
            timezone=tz,
        )
        if result.call is None or result.entry is None:
            record.problem = first_problem(result.issues, "connection could not be identified")
            continue
        call = result.call
        before = known.get(conn_rec.user_id)
        if before is not None and before.customer_id != call.user_id:
            # A customer id, once assigned, never changes (a member id that appears later or an
            # email that changes would otherwise split one member's history in two).
            call = call.model_copy(update={"user_id": before.customer_id})
        digest = traits_hash(call.traits)
        if before is None or before.traits_hash != digest or before.customer_id != call.user_id:
            record.identify = call
        record.entry = IdMapEntry(
            business=business,
            perkville_user_id=conn_rec.user_id,
            customer_id=call.user_id,
            strategy=config.id_strategy,
            connection_id=conn_rec.connection_id,
            connection_status=conn_rec.status,
            perkville_balance=conn_rec.point_balance,
            traits_hash=digest,
            tier_level=before.tier_level if before is not None else None,
        )
        if tiers:
            tier_event, migrated = next_tier_event(
                business_id=business,
                perkville_user_id=conn_rec.user_id,
                customer_id=call.user_id,
                perkville_level=conn_rec.level,
                tiers=tiers,
                migrated=record.entry.tier_level,
                occurred_at=to_stamp(raw.get("last_mod_dt"), tz),
            )
            if tier_event is not None:
                record.events.append(tier_event)
                record.entry = replace(record.entry, tier_level=migrated)
            elif unknown_levels is not None and conn_rec.level and tier_level(conn_rec.level, tiers) is None:
                unknown_levels[conn_rec.level.strip()] += 1
        if mode == "balance" and cutover is not None:
            opening = to_opening_balance_event(
                raw,
                business_id=business,
                cutover_at=cutover,
                timezone=tz,
                customer_ids={conn_rec.user_id: call.user_id},
            )
            if not opening.ok:
                record.problem = first_problem(opening.issues, "opening balance unmappable")
                continue
            record.events.extend(opening.events)
    return records
