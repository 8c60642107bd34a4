"""Shared set-up for the v1 API tests: the seed's program, a migrated core with keys, signed requests."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from perkamo_core.models import SERVER_SCOPES
from perkamo_core.service import CoreService

SPACE = "commerce-test"
OTHER_SPACE = "other-space"
START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)

SEED_PROGRAM: dict[str, dict[str, Any]] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points", "precision": 0}]},
    "events": {
        "rules": [
            {"event": "purchase.completed", "label": "Purchase", "wallet": "points", "amount": 50},
            {"event": "page.viewed", "label": "Page view", "wallet": "points", "amount": 1},
        ]
    },
    "leveling": {"wallet": "points", "basis": "lifetime", "thresholds": [0, 100]},
    "perks": {
        "perks": [
            {
                "key": "welcome_member",
                "name": "Welcome member",
                "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30},
            },
            {
                "key": "active_user",
                "name": "Active user",
                "description": "Daily habit perk for apps like progress trackers or banking.",
                "trigger": {"type": "points_threshold", "wallet": "points", "amount": 1000},
            },
        ],
        "rewards": [
            {
                "key": "free_shipping",
                "name": "Free shipping",
                "wallet": "points",
                "cost": 40,
                "effect": {"type": "free_shipping"},
            }
        ],
    },
}
"""Reproduces seed 002's event example: a purchase gives 50 points, unlocks ``welcome_member``
and reaches level 1 at progress 0.5 of 100."""


@dataclass
class Keys:
    """Plaintext server keys of one test core."""

    full: str
    revoked: str
    other_space: str
    by_scope: dict[str, str]
    """One key per scope that has every scope except that one."""


class MutableClock:
    """An aware UTC clock the test can move."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def make_core(engine: Engine, clock: MutableClock | None = None) -> tuple[CoreService, Keys]:
    """A migrated core with the seed program in ``commerce-test`` and keys for every auth case."""
    service = CoreService(engine, clock=clock) if clock is not None else CoreService(engine)
    service.migrate()
    service.ensure_space(SPACE)
    service.ensure_space(OTHER_SPACE)
    service.load_program(SPACE, SEED_PROGRAM)
    full = service.create_api_key(SPACE).key
    revoked_key = service.create_api_key(SPACE)
    service.revoke_api_key(revoked_key.key_id)
    other = service.create_api_key(OTHER_SPACE).key
    lacking = {
        scope: service.create_api_key(SPACE, [s for s in SERVER_SCOPES if s != scope]).key for scope in SERVER_SCOPES
    }
    return service, Keys(full=full, revoked=revoked_key.key, other_space=other, by_scope=lacking)


def sign_headers(api_key: str, timestamp: int, method: str, path: str, body: bytes) -> dict[str, str]:
    """Signing headers computed independently of both implementations (perkamo-api.md §3)."""
    body_hash = hashlib.sha256(body).hexdigest() if body else ""
    message = f"v1.{timestamp}.{method}.{path}.{body_hash}".encode()
    digest = hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest()
    return {"x-perkamo-timestamp": str(timestamp), "x-perkamo-signature": f"v1={digest}"}


def body_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
