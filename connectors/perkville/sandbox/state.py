"""The sandbox's in-memory Perkville: deterministic generated businesses and the points ledger."""

from __future__ import annotations

import random
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from connectors.perkville.datetimes import parse_perkville_datetime, to_tzinfo
from connectors.perkville.sandbox.limits import REDEMPTION_LIMIT_REACHED, redemption_limit_reached

CONNECTION_STATUSES = ("ACTIVE", "PENDING", "IMPORTED", "INACTIVE")
ALL_SCOPES = (
    "PUBLIC",
    "ADMIN_CUSTOMER_INFO",
    "ADMIN_CUSTOMER_REDEEM",
    "ADMIN_CUSTOMER_GRANT_POINTS",
    "ADMIN_CUSTOMER_REFERRAL",
    "ADMIN_PERK",
    "ADMIN_LOCATION",
)
# How redeemed points are shown: "negative" as Perkville's docs describe its ledger (N2: a
# redemption -250, its VOID_REF +250), or "positive" (a magnitude; VOID_REF rows negated), for tests.
REDEEM_SIGNS = ("negative", "positive")
# Generated history ends here (fixed, so every seed gives the same data whatever the date).
HISTORY_END = datetime(2026, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 730

_FIRST = (
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "Ana",
    "Björn",
    "Chloé",
    "Dmitrij",
    "Émile",
    "François",
    "Gül",
    "Hélène",
    "Ines",
    "Jürgen",
    "Kateřina",
    "Lætitia",
    "Mário",
    "Nuño",
    "Oğuz",
    "Paweł",
    "Renée",
    "Siân",
    "Tomáš",
    "Ümit",
    "Vólodymyr",
    "Wiesław",
    "Xóchitl",
    "Yaël",
    "Zdeněk",
    "Aoife",
    "Dana",
    "Sam",
    "陽菜",
    "Мария",
    "أحمد",
)
_LAST = (
    "Müller",
    "Nguyễn",
    "García",
    "Kowalski",
    "Øvergård",
    "O'Brien",
    "Dvořák",
    "Šimić",
    "Ångström",
    "Çelik",
    "Lefèvre",
    "Pérez",
    "Smith",
    "Żółć",
    "Ibáñez",
    "Håkansson",
    "Ólafsdóttir",
    "山田",
    "Иванова",
    "Example",
)
INTERVAL_CODES = {"DAY": 1, "WEEK": 2, "MONTH": 3, "YEAR": 4}  # use_integer_intervals
_MEMBERSHIP_TYPES = ("Monthly Unlimited", "Annual", "10-Class Pack", "Student", "Off-Peak")


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(ch for ch in folded.lower() if ch.isalnum())
    return cleaned or "member"


@dataclass(slots=True)
class Txn:
    """One ledger row; ``points`` is the per-unit magnitude, the sign comes from ``classification``."""

    id: int
    business_id: int
    user_id: int
    connection_id: int
    perk_id: int
    location_id: int
    classification: str
    points: int
    quantity: int
    dt: datetime
    last_mod: datetime
    status: str = "ACTIVE"
    trans_source_id: str | None = None
    voucher_id: int | None = None
    title: str = ""
    void_of: int | None = None

    @property
    def signed_total(self) -> int:
        """Balance effect of an ACTIVE row (earn +, redeem −)."""
        total = self.points * self.quantity
        return -total if self.classification == "REDEEM" else total


@dataclass
class Aggregate:
    """Per-connection figures derived from the ledger."""

    balance: int = 0
    lifetime: int = 0
    last_txn: datetime | None = None
    last_location: int | None = None


@dataclass
class SandboxError(Exception):
    """A request the sandbox refuses: HTTP status plus Perkville-style error body."""

    status: int
    field: str
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {
            "error_type": "validation_error",
            "errors": {self.field: [{"code": self.code, "message": self.message}]},
        }


@dataclass
class Business:
    id: int
    record: dict[str, Any]
    location_ids: list[int] = field(default_factory=list)
    perk_ids: list[int] = field(default_factory=list)
    connection_ids: list[int] = field(default_factory=list)
    txns: list[Txn] = field(default_factory=list)


class Ledger:
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

    # ------------------------------------------------------------------ generation
    def _generate_business(
        self, index: int, members: int, transactions: int, void_ratio: float, next_user: int
    ) -> int:
        rng = self.rng
        business_id = 25 + index
        start = HISTORY_END - timedelta(days=HISTORY_DAYS)
        business = Business(
            business_id,
            {
                "business_id": business_id,
                "name": f"Sandbox Fitness {index + 1}",
                "slug": f"sandbox-fitness-{index + 1}",
                "timezone": str(self.tz),
            },
        )
        self.businesses[business_id] = business
        self.source_ids[business_id] = set()
        for number, (name, external) in enumerate(
            (("Downtown Club", "CLUB-01"), ("Riverside Studio", "CLUB-02"), ("Online Store", None))
        ):
            location_id = 300 + index * 10 + number
            self.locations[location_id] = {
                "location_id": location_id,
                "business": business_id,
                "name": name,
                "street": f"{number + 1} Main St",
                "city": "Springfield",
                "state": "IL",
                "postal_code": "62701",
                "country": "US",
                "timezone": str(self.tz),
                "external_location_id": external,
                "is_primary": number == 0,
                "is_online": external is None,
            }
            business.location_ids.append(location_id)
        perk_specs = (
            # title, classification, points, once per day
            ("Gym Check-In", "EARN", 1, True),
            ("Purchase (per $10)", "EARN", 10, False),
            ("Birthday Bonus", "EARN", 25, False),
            ("Class Attended (challenge progress)", "EARN", 0, False),
            ("Free Smoothie", "REDEEM", 100, False),
            ("Guest Pass", "REDEEM", 250, False),
            ("Free Month", "REDEEM", 1000, False),
        )
        for number, (title, classification, points, once) in enumerate(perk_specs):
            perk_id = 7700 + index * 100 + number
            self.perks[perk_id] = {
                "perk_id": perk_id,
                "business": business_id,
                "title": title,
                "description": title,
                "classification": classification,
                "type": "CUSTOM",
                "status": "ACTIVE",
                "points": points,
                "from_date": None,
                "to_date": None,
                "eligible_at_all_locations": True,
                "admin_flagged_as_invisible_to_customers": points == 0,
                "completes_referral": False,
                "external_coupon_code": None,
                "external_reward_url": None,
                "fine_print": "",
                "picture_card": None,
                "redemption_limit_count": 1 if once else None,
                "redemption_limit_interval": "DAY" if once else None,
                "redemption_limit_interval_count": 1 if once else None,
            }
            business.perk_ids.append(perk_id)
        # Members: new users, plus (for later businesses) some users shared with the first one.
        user_ids: list[int] = []
        for number in range(members):
            shared = index > 0 and number % 10 == 0 and number // 10 < len(self.businesses[25].connection_ids)
            if shared:
                user_id = self.connections[self.businesses[25].connection_ids[number // 10]]["user"]
            else:
                user_id = next_user
                next_user += 1
                self._generate_user(user_id)
            user_ids.append(user_id)
            connection_id = self._next["conn"]
            self._next["conn"] += 1
            status = (
                CONNECTION_STATUSES[number]
                if number < 4
                else rng.choices(CONNECTION_STATUSES, weights=(80, 6, 8, 6))[0]
            )
            joined = start + timedelta(days=rng.randrange(HISTORY_DAYS))
            self.connections[connection_id] = {
                "connection_id": connection_id,
                "business": business_id,
                "user": user_id,
                "status": status,
                "level": rng.choice((None, "Silver", "Gold")),
                "home_location": rng.choice(business.location_ids[:2]),
                "referral_offer_url": f"https://sandbox.perkville.test/r/{connection_id:x}/",
                "external_membership_status": rng.choice(("ACTIVE", "INACTIVE", None)),
                "external_membership_type": rng.choice(_MEMBERSHIP_TYPES),
                "external_join_dt": joined.date().isoformat(),
                "external_cancel_dt": None,
                "last_mod_dt": joined,
            }
            self.conn_by_user[(business_id, user_id)] = connection_id
            self.aggregates[connection_id] = Aggregate()
            business.connection_ids.append(connection_id)
            self.users[user_id]["connections"].append(connection_id)
            if number % 2 == 0:
                self._generate_external_member(business_id, user_id, number, joined)
        self._generate_history(business, transactions, void_ratio, start)
        return next_user

    def _generate_user(self, user_id: int) -> None:
        rng = self.rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        count = rng.choice((0, 1, 1, 1, 1, 2, 2, 3))
        emails = []
        for number in range(count):
            address = (
                f"{_ascii(first)}.{_ascii(last)}{user_id}{'' if number == 0 else f'+{number}'}@example.com"
            )
            emails.append({"email": address})
            self.email_index[address.lower()] = user_id
        birthday = date(1950 + rng.randrange(55), 1 + rng.randrange(12), 1 + rng.randrange(28))
        self.users[user_id] = {
            "user_id": user_id,
            "first_name": first,
            "last_name": last,
            "phone_number": f"+1555555{user_id % 10000:04d}" if rng.random() < 0.7 else None,
            "birthday": birthday.isoformat() if rng.random() < 0.8 else None,
            "emails": emails,
            "connections": [],
            "last_mod_dt": HISTORY_END
            - timedelta(days=rng.randrange(HISTORY_DAYS), seconds=rng.randrange(86400)),
        }

    def _generate_external_member(
        self, business_id: int, user_id: int, number: int, joined: datetime
    ) -> None:
        ext_id = self._next["ext"]
        self._next["ext"] += 1
        active = self.rng.random() < 0.8
        emails = self.users[user_id]["emails"]
        member_id = f"M-{business_id}-{number:06d}"
        # ``id`` is the record's own key; ``external_member_id`` is, as in Perkville's wording, the
        # external system's member id (here the same as ``member_id``), not unique.
        self.external_members[ext_id] = {
            "id": ext_id,
            "external_member_id": member_id,
            "business": business_id,
            "email": emails[0]["email"] if emails else None,
            "system_id": "SANDBOX_POS",
            "member_id": member_id,
            "external_home_location_id": "CLUB-01" if number % 4 else "CLUB-02",
            "membership_type": self.rng.choice(_MEMBERSHIP_TYPES),
            "membership_status": "ACTIVE" if active else "INACTIVE",
            "join_dt": joined.date().isoformat(),
            "cancel_dt": None if active else (joined + timedelta(days=200)).date().isoformat(),
            "last_mod_dt": joined,
        }

    def _generate_history(self, business: Business, total: int, void_ratio: float, start: datetime) -> None:
        rng = self.rng
        if total <= 0 or not business.connection_ids:
            return
        voids = int(total * void_ratio) if total >= 10 else 0
        base = total - voids
        span = HISTORY_DAYS * 86400
        seconds = sorted(rng.randrange(span) for _ in range(base))
        conns = business.connection_ids
        n_conns = len(conns)
        perks = business.perk_ids
        checkin, purchase, bonus, activity = perks[0], perks[1], perks[2], perks[3]
        redeem_costs = [(self.perks[p]["points"], p) for p in perks[4:]]
        cheapest = redeem_costs[0][0]
        balances = dict.fromkeys(conns, 0)
        checked_in: set[tuple[int, int]] = set()
        locations = business.location_ids
        rows: list[Txn] = []
        for offset in seconds:
            connection_id = conns[int(n_conns * rng.random() ** 1.6)]
            dt = start + timedelta(seconds=offset)
            roll = rng.random()
            quantity = 1
            if roll < 0.08:
                perk_id = activity
                quantity = rng.randrange(1, 4)
            elif roll < 0.22 and balances[connection_id] >= cheapest:
                affordable = [p for cost, p in redeem_costs if cost <= balances[connection_id]]
                perk_id = rng.choice(affordable)
            elif roll < 0.55 and (connection_id, offset // 86400) not in checked_in:
                perk_id = checkin
                checked_in.add((connection_id, offset // 86400))
            elif roll < 0.58:
                perk_id = bonus
            else:
                perk_id = purchase
                quantity = rng.randrange(1, 6)
            perk = self.perks[perk_id]
            txn = Txn(
                id=0,
                business_id=business.id,
                user_id=self.connections[connection_id]["user"],
                connection_id=connection_id,
                perk_id=perk_id,
                location_id=rng.choice(locations),
                classification=perk["classification"],
                points=perk["points"],
                quantity=quantity,
                dt=dt,
                last_mod=dt + timedelta(seconds=rng.randrange(1, 30)),
                title=perk["title"],
            )
            balances[connection_id] += txn.signed_total
            rows.append(txn)
        for txn in rows:
            txn.id = self._next_id("txn")
            if txn.classification == "REDEEM":
                txn.voucher_id = self._next_id("voucher")
            elif txn.classification == "EARN" and txn.points and rng.random() < 0.3:
                external = self.locations[txn.location_id]["external_location_id"] or "WEB"
                txn.trans_source_id = f"pos:{external}:{txn.id}"
                self.source_ids[business.id].add(txn.trans_source_id)
            self._index(txn)
        # Voids: the original turns VOID and a reversing VOID_REF row is added.
        candidates = list(rows)
        rng.shuffle(candidates)
        planned: list[tuple[datetime, Txn]] = []
        for txn in candidates:
            if len(planned) >= voids:
                break
            if txn.classification == "EARN" and balances[txn.connection_id] < txn.signed_total:
                continue
            balances[txn.connection_id] -= txn.signed_total
            when = min(
                HISTORY_END - timedelta(seconds=1),
                txn.dt + timedelta(seconds=rng.randrange(3600, 30 * 86400)),
            )
            planned.append((when, txn))
        # Not enough voidable rows (tiny ledgers): pad with 0-point activities so the count stays exact.
        for number in range(voids - len(planned)):
            self._copy_as_activity(candidates[number % len(candidates)])
        for when, txn in sorted(planned, key=lambda item: (item[0], item[1].id)):
            self._void(txn, when)

    def _copy_as_activity(self, txn: Txn) -> Txn:
        """A 0-point activity row for the same customer and moment (pads tiny ledgers)."""
        activity = self.perks[self.businesses[txn.business_id].perk_ids[3]]
        copy = replace(
            txn,
            id=self._next_id("txn"),
            perk_id=activity["perk_id"],
            classification="EARN",
            points=0,
            quantity=1,
            status="ACTIVE",
            trans_source_id=None,
            voucher_id=None,
            title=activity["title"],
            void_of=None,
        )
        self._index(copy)
        return copy

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


def to_int(value: object) -> int | None:
    """``25``, ``"25"`` or ``"/v2/businesses/25/"`` → 25 (None when not an id)."""
    if value is None:
        return None
    text = str(value).rstrip("/").rsplit("/", 1)[-1]
    try:
        return int(text)
    except ValueError:
        return None
