"""The sandbox's generated data: businesses, locations, perks, members and their history, the same
for the same seed (a mixin of ``Ledger``, which holds the tables and the row bookkeeping)."""

from __future__ import annotations

import random
import unicodedata
from dataclasses import replace
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from connectors.perkville.sandbox.model import (
    CONNECTION_STATUSES,
    HISTORY_DAYS,
    HISTORY_END,
    Aggregate,
    Business,
    Txn,
)

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
_MEMBERSHIP_TYPES = ("Monthly Unlimited", "Annual", "10-Class Pack", "Student", "Off-Peak")


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(ch for ch in folded.lower() if ch.isalnum())
    return cleaned or "member"


class Generation:
    """Generation of ``Ledger``'s data; the tables and ``_index``/``_void``/``_next_id`` are the ledger's."""

    rng: random.Random
    tz: tzinfo
    businesses: dict[int, Business]
    locations: dict[int, dict[str, Any]]
    perks: dict[int, dict[str, Any]]
    users: dict[int, dict[str, Any]]
    connections: dict[int, dict[str, Any]]
    conn_by_user: dict[tuple[int, int], int]
    aggregates: dict[int, Aggregate]
    txns: dict[int, Txn]
    source_ids: dict[int, set[str]]
    external_members: dict[int, dict[str, Any]]
    email_index: dict[str, int]
    _next: dict[str, int]

    def _next_id(self, kind: str) -> int:
        raise NotImplementedError

    def _index(self, txn: Txn) -> None:
        raise NotImplementedError

    def _void(self, txn: Txn, when: datetime) -> Txn:
        raise NotImplementedError

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
