"""The sandbox's in-memory Perkville: deterministic generated businesses and the points ledger."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from connectors.perkville.datetimes import parse_perkville_datetime, to_tzinfo
from connectors.perkville.sandbox.generate import Generation
from connectors.perkville.sandbox.limits import REDEMPTION_LIMIT_REACHED, redemption_limit_reached
from connectors.perkville.sandbox.model import (
    ALL_SCOPES,
    CONNECTION_STATUSES,
    HISTORY_DAYS,
    HISTORY_END,
    INTERVAL_CODES,
    REDEEM_SIGNS,
    Aggregate,
    Business,
    SandboxError,
    Txn,
    to_int,
)

__all__ = [
    "ALL_SCOPES",
    "CONNECTION_STATUSES",
    "HISTORY_END",
    "REDEEM_SIGNS",
    "Ledger",
    "SandboxError",
    "Txn",
    "to_int",
]

class Ledger(Generation):
    """Everything the sandbox serves, generated deterministically from ``seed``; thread-safe via ``lock``."""

    def __init__(
        self,
        *,
        seed: int = 0,
        businesses: int = 1,
        members: int = 200,
        transactions: int = 2000,
        timezone_name: str = "UTC",
        redeem_sign: str = REDEEM_SIGNS[0],
        void_ratio: float = 0.02,
        now: Callable[[], datetime] | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        if redeem_sign not in REDEEM_SIGNS:
            raise ValueError("redeem_sign must be 'negative' or 'positive'")
        self.lock = threading.RLock()
        self.tz: tzinfo = to_tzinfo(timezone_name)
        self.redeem_sign = redeem_sign
        self._now = now or (lambda: datetime.now(UTC))
        self.clock_offset = timedelta(seconds=clock_offset)
        """How far the sandbox's own clock is from the real one (negative = behind): every time it
        stamps (``last_mod_dt``, new rows' ``transaction_dt``, voids, the HTTP ``Date``) uses it."""
        self.version = 0
        self.rng = random.Random(seed)
        self.businesses: dict[int, Business] = {}
        self.locations: dict[int, dict[str, Any]] = {}
        self.perks: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.connections: dict[int, dict[str, Any]] = {}
        self.conn_by_user: dict[tuple[int, int], int] = {}
        self.aggregates: dict[int, Aggregate] = {}
        self.txns: dict[int, Txn] = {}
        self.source_ids: dict[int, set[str]] = {}
        self.external_members: dict[int, dict[str, Any]] = {}
        self.email_index: dict[str, int] = {}
        self._next = {"txn": 10_000_001, "voucher": 700_001, "conn": 900_001, "ext": 50_001}
        staff_id = 1
        self.users[staff_id] = {
            "user_id": staff_id,
            "first_name": "Sandbox",
            "last_name": "Staff",
            "phone_number": None,
            "birthday": None,
            "emails": [{"email": "staff@sandbox.perkville.test"}],
            "connections": [],
            "last_mod_dt": HISTORY_END - timedelta(days=HISTORY_DAYS + 1),
        }
        self.staff_user_id = staff_id
        next_user = 3_100_001
        for index in range(businesses):
            next_user = self._generate_business(index, members, transactions, void_ratio, next_user)

    def _next_id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] += 1
        return value

    def _index(self, txn: Txn) -> None:
        self.txns[txn.id] = txn
        self.businesses[txn.business_id].txns.append(txn)
        aggregate = self.aggregates[txn.connection_id]
        if txn.status == "ACTIVE":
            aggregate.balance += txn.signed_total
            if txn.classification == "EARN":
                aggregate.lifetime += txn.points * txn.quantity
        if aggregate.last_txn is None or txn.dt >= aggregate.last_txn:
            aggregate.last_txn = txn.dt
            aggregate.last_location = txn.location_id
        connection = self.connections[txn.connection_id]
        connection["last_mod_dt"] = max(connection["last_mod_dt"], txn.last_mod)
        self.version += 1

    def _void(self, txn: Txn, when: datetime) -> Txn:
        txn.status = "VOID"
        txn.last_mod = when
        aggregate = self.aggregates[txn.connection_id]
        aggregate.balance -= txn.signed_total
        if txn.classification == "EARN":
            aggregate.lifetime -= txn.points * txn.quantity
        reversal = replace(
            txn,
            id=self._next_id("txn"),
            dt=when,
            last_mod=when,
            status="VOID_REF",
            trans_source_id=None,
            voucher_id=None,
            void_of=txn.id,
        )
        self._index(reversal)
        return reversal

    # ------------------------------------------------------------------ mutations (API and control)
    def now(self) -> datetime:
        """The sandbox's own clock (``clock_offset`` from the real one) in whole seconds: Perkville
        shows datetimes without a fraction, so the sandbox stores them that way too (its order and
        filters then agree with what it shows; equal times are ordered by id)."""
        return (self._now() + self.clock_offset).astimezone(UTC).replace(microsecond=0)

    def add_transaction(
        self,
        *,
        business: int,
        perk: int,
        user: int | None = None,
        connection: int | None = None,
        email: str | None = None,
        location: int | None = None,
        quantity: int = 1,
        points: int | None = None,
        transaction_dt: datetime | str | None = None,
        trans_source_id: str | None = None,
        limit_to_once_per_calendar_day: bool = False,
    ) -> Txn:
        """Record activity the way ``POST /v2/transactions/`` would (raises ``SandboxError``)."""
        with self.lock:
            if business not in self.businesses:
                raise SandboxError(
                    400, "business", "pv_business_not_found", f"Business {business} does not exist."
                )
            perk_record = self.perks.get(perk)
            if perk_record is None or perk_record["business"] != business:
                raise SandboxError(
                    400, "perk", "pv_perk_not_in_business", "The perk does not exist in this business."
                )
            user_id = user
            if connection is not None:
                record = self.connections.get(connection)
                if record is None or record["business"] != business:
                    raise SandboxError(400, "connection", "pv_connection_not_found", "Connection not found.")
                user_id = record["user"]
            if user_id is None and email is not None:
                user_id = self.email_index.get(email.lower())
                if user_id is None:
                    raise SandboxError(
                        400, "user__emails__email", "pv_user_not_found", "No user has this email."
                    )
            if user_id is None or user_id not in self.users:
                raise SandboxError(400, "user", "pv_user_not_found", "The user does not exist.")
            if trans_source_id is not None:
                if trans_source_id in self.source_ids[business]:
                    raise SandboxError(
                        400,
                        "trans_source_id",
                        "pv_duplicate_trans_source_id",
                        "A transaction with this trans_source_id already exists for this business.",
                    )
            connection_id = self._ensure_connection(business, user_id)
            if location is None:
                location = self.businesses[business].location_ids[0]
            elif self.locations.get(location, {}).get("business") != business:
                raise SandboxError(
                    400, "location", "pv_location_not_in_business", "Location not in business."
                )
            when = self._parse_dt(transaction_dt) if transaction_dt is not None else self.now()
            per_unit = perk_record["points"] if points is None else int(points)
            if quantity < 1 or per_unit < 0:
                raise SandboxError(
                    400, "quantity", "pv_invalid_quantity", "Quantity and points must be positive."
                )
            if limit_to_once_per_calendar_day:
                day = when.astimezone(self.tz).date()
                for other in self.businesses[business].txns:
                    if (
                        other.connection_id == connection_id
                        and other.perk_id == perk
                        and other.status == "ACTIVE"
                        and other.dt.astimezone(self.tz).date() == day
                    ):
                        raise SandboxError(
                            400,
                            "limit_to_once_per_calendar_day",
                            "pv_once_per_calendar_day",
                            "This perk was already awarded to this customer today.",
                        )
            refused = redemption_limit_reached(
                perk_record, self.businesses[business].txns, connection_id=connection_id, when=when,
                quantity=quantity,
            )
            if refused is not None:
                raise SandboxError(400, "perk", REDEMPTION_LIMIT_REACHED, refused)
            if (
                perk_record["classification"] == "REDEEM"
                and self.aggregates[connection_id].balance < per_unit * quantity
            ):
                raise SandboxError(
                    400, "points", "pv_txn_insufficient_points", "Not enough points to redeem."
                )
            now = self.now()
            txn = Txn(
                id=self._next_id("txn"),
                business_id=business,
                user_id=user_id,
                connection_id=connection_id,
                perk_id=perk,
                location_id=location,
                classification=perk_record["classification"],
                points=per_unit,
                quantity=quantity,
                dt=when,
                last_mod=now,  # the moment of the change on the server's clock, however it is dated
                trans_source_id=trans_source_id,
                title=perk_record["title"],
                voucher_id=self._next_id("voucher") if perk_record["classification"] == "REDEEM" else None,
            )
            if trans_source_id is not None:
                self.source_ids[business].add(trans_source_id)
            self._index(txn)
            return txn

    def void_transaction(self, transaction_id: int, at: datetime | str | None = None) -> Txn:
        """Void an ACTIVE row later: it turns VOID and a VOID_REF row is added (``last_mod_dt`` moves)."""
        with self.lock:
            txn = self.txns.get(transaction_id)
            if txn is None:
                raise SandboxError(404, "transaction", "pv_not_found", "Transaction not found.")
            if txn.status != "ACTIVE":
                raise SandboxError(
                    400, "transaction_status", "pv_not_active", "Only ACTIVE rows can be voided."
                )
            when = self._parse_dt(at) if at is not None else self.now()
            return self._void(txn, when)

    def update_user(self, user_id: int, **changes: Any) -> dict[str, Any]:
        """Edit a user's profile fields (``first_name``, ``phone_number``, ...) as a member would."""
        with self.lock:
            record = self.users.get(user_id)
            if record is None:
                raise SandboxError(404, "user", "pv_not_found", "User not found.")
            unknown = set(changes) - (set(record) - {"user_id", "connections", "last_mod_dt"})
            if unknown:
                raise SandboxError(400, sorted(unknown)[0], "pv_invalid_field", "Not an editable field.")
            record.update(changes)
            record["last_mod_dt"] = self.now()
            self.version += 1
            return record

    def set_connection_status(self, connection_id: int, status: str) -> dict[str, Any]:
        with self.lock:
            record = self.connections.get(connection_id)
            if record is None:
                raise SandboxError(404, "connection", "pv_not_found", "Connection not found.")
            if status not in ("ACTIVE", "INACTIVE"):
                raise SandboxError(400, "status", "pv_invalid_status", "status must be ACTIVE or INACTIVE.")
            record["status"] = status
            record["last_mod_dt"] = self.now()
            self.version += 1
            return record

    def use_integer_intervals(self) -> None:
        """Serve each perk's ``redemption_limit_interval`` as an integer code, the type K1 declares
        (the variant of the default ``"DAY"``). What Perkville's codes mean is unknown; these are
        the codes ``mapping.perk_limits.DEFAULT_INTERVAL_CODES`` guesses."""
        with self.lock:
            for perk in self.perks.values():
                name = perk["redemption_limit_interval"]
                perk["redemption_limit_interval"] = INTERVAL_CODES.get(name, name)
            self.version += 1

    def upsert_external_member(
        self, body: Mapping[str, Any], ext_id: int | None = None
    ) -> tuple[dict[str, Any], bool]:
        """POST (create or update on business+system_id+member_id) or PATCH by the record's ``id``;
        returns (record, created).  Without ``business`` the POST means the only business there is."""
        with self.lock:
            fields = (
                "external_member_id",
                "email",
                "system_id",
                "member_id",
                "external_home_location_id",
                "membership_type",
                "membership_status",
                "join_dt",
                "cancel_dt",
            )
            if ext_id is not None:
                record = self.external_members.get(ext_id)
                if record is None:
                    raise SandboxError(404, "external_member", "pv_not_found", "External member not found.")
                created = False
            else:
                business = to_int(body.get("business"))
                if "business" not in body:
                    if len(self.businesses) > 1:
                        raise SandboxError(
                            400, "business", "pv_business_required",
                            "business is required when the staff account manages several businesses.",
                        )
                    business = next(iter(self.businesses))
                if business not in self.businesses:
                    raise SandboxError(400, "business", "pv_business_not_found", "Unknown business.")
                for name in ("system_id", "member_id"):
                    if not body.get(name):
                        raise SandboxError(400, name, "pv_required", f"{name} is required.")
                record = next(
                    (
                        r
                        for r in self.external_members.values()
                        if r["business"] == business
                        and r["system_id"] == body["system_id"]
                        and r["member_id"] == body["member_id"]
                    ),
                    None,
                )
                created = record is None
                if record is None:
                    new_id = self._next_id("ext")
                    record = {"id": new_id, "business": business}
                    record.update(dict.fromkeys(fields))
                    record["external_member_id"] = body["member_id"]
                    self.external_members[new_id] = record
            status = body.get("membership_status")
            if status is not None and status not in ("ACTIVE", "INACTIVE"):
                raise SandboxError(400, "membership_status", "pv_invalid_status", "ACTIVE or INACTIVE.")
            for name in fields:
                if name in body:
                    record[name] = body[name]
            record["last_mod_dt"] = self.now()
            self.version += 1
            return record, created

    def _ensure_connection(self, business: int, user_id: int) -> int:
        existing = self.conn_by_user.get((business, user_id))
        if existing is not None:
            return existing
        connection_id = self._next_id("conn")
        now = self.now()
        self.connections[connection_id] = {
            "connection_id": connection_id,
            "business": business,
            "user": user_id,
            "status": "IMPORTED",
            "level": None,
            "home_location": self.businesses[business].location_ids[0],
            "referral_offer_url": None,
            "external_membership_status": None,
            "external_membership_type": None,
            "external_join_dt": None,
            "external_cancel_dt": None,
            "last_mod_dt": now,
        }
        self.conn_by_user[(business, user_id)] = connection_id
        self.aggregates[connection_id] = Aggregate()
        self.businesses[business].connection_ids.append(connection_id)
        self.users[user_id]["connections"].append(connection_id)
        return connection_id

    def _parse_dt(self, value: datetime | str) -> datetime:
        try:
            parsed = parse_perkville_datetime(value, self.tz)
        except ValueError:
            parsed = None
        if parsed is None:
            raise SandboxError(400, "transaction_dt", "pv_invalid_datetime", "Invalid datetime.")
        return parsed.replace(microsecond=0)  # stored as shown (see ``now``)

    # ------------------------------------------------------------------ truth
    def true_balances(self, business_id: int) -> dict[int, int]:
        """``{user_id: balance}`` recomputed from the ledger rows (not from the running aggregates)."""
        with self.lock:
            totals = {self.connections[c]["user"]: 0 for c in self.businesses[business_id].connection_ids}
            for txn in self.businesses[business_id].txns:
                if txn.status == "ACTIVE":
                    totals[txn.user_id] += txn.signed_total
            return totals

    def transaction_ids(self, business_id: int) -> list[int]:
        with self.lock:
            return sorted(txn.id for txn in self.businesses[business_id].txns)
