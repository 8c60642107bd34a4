"""Spaces and their server API keys: create, update, issue, revoke, authenticate.

Keys are stored as their sha256 (never the key) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from perkamo_core import storage as st
from perkamo_core.errors import AuthenticationError, NotFoundError, ValidationError
from perkamo_core.models import (
    ENVIRONMENTS,
    KEY_SCOPES,
    MAX_SPACE_SLUG,
    SERVER_SCOPES,
    ApiKeyInfo,
    CreatedKey,
    SpaceInfo,
)
from perkamo_core.service.store import CoreStore, Write, zone

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,127}$")


def _hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


class Spaces:
    """Spaces and API keys."""

    def __init__(self, store: CoreStore, write: Write) -> None:
        self._store = store
        self._write = write

    def ensure_space(self, slug: str, *, environment: str = "test", timezone: str = "UTC") -> SpaceInfo:
        """The Space ``slug``, created with ``environment``/``timezone`` if it does not exist."""
        if not isinstance(slug, str) or not _SLUG.match(slug) or len(slug) > MAX_SPACE_SLUG:
            raise ValidationError(
                f"Space slug {str(slug)[:40]!r} must be 1-128 lowercase letters, digits, '-' or '_'",
                field="space",
            )
        if environment not in ENVIRONMENTS:
            raise ValidationError("environment must be 'test' or 'live'", field="environment")
        zone(timezone)

        def run(conn: Connection) -> SpaceInfo:
            stmt = self._store.insert(st.spaces).values(
                slug=slug, environment=environment, timezone=timezone,
                require_signatures=False, created_at=self._store.now(),
            ).on_conflict_do_nothing(index_elements=["slug"])
            conn.execute(stmt)
            return self._store.space(conn, slug).info()

        return self._write(run)

    def get_space(self, slug: str) -> SpaceInfo:
        with self._store.read() as conn:
            return self._store.space(conn, slug).info()

    def update_space(
        self, slug: str, *, timezone: str | None = None, require_signatures: bool | None = None
    ) -> SpaceInfo:
        values: dict[str, Any] = {}
        if timezone is not None:
            zone(timezone)
            values["timezone"] = timezone
        if require_signatures is not None:
            values["require_signatures"] = bool(require_signatures)

        def run(conn: Connection) -> SpaceInfo:
            space = self._store.space(conn, slug)
            if values:
                conn.execute(update(st.spaces).where(st.spaces.c.id == space.id).values(**values))
            return self._store.space(conn, slug).info()

        return self._write(run)

    def create_api_key(self, space: str, scopes: Sequence[str] | None = None) -> CreatedKey:
        """A new server key for ``space`` (all four server scopes by default), stored hashed."""
        chosen = tuple(SERVER_SCOPES if not scopes else dict.fromkeys(scopes))
        for scope in chosen:
            if scope not in KEY_SCOPES:
                raise ValidationError(
                    f"unknown scope {scope!r}; expected one of {', '.join(KEY_SCOPES)}",
                    field="scopes",
                )

        def run(conn: Connection) -> CreatedKey:
            row = self._store.space(conn, space)
            plaintext = f"sk_{row.environment}_{secrets.token_hex(24)}"
            key_id = f"key_{secrets.token_hex(8)}"
            conn.execute(st.api_keys.insert().values(
                key_id=key_id, space_id=row.id, key_hash=_hash_key(plaintext),
                key_hint=f"{plaintext[:8]}…{plaintext[-4:]}", scopes=" ".join(chosen),
                environment=row.environment, created_at=self._store.now(), revoked_at=None,
            ))
            return CreatedKey(plaintext, key_id, row.slug, chosen, row.environment)

        return self._write(run)

    def revoke_api_key(self, key_id: str) -> None:
        def run(conn: Connection) -> None:
            result = conn.execute(
                update(st.api_keys)
                .where(st.api_keys.c.key_id == key_id, st.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._store.now())
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
        with self._store.read() as conn:
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

    def active_key(self, key_id: str) -> ApiKeyInfo | None:
        """The key ``key_id`` names, or ``None`` when it is unknown or revoked (a session made
        with a key ends when the key is revoked)."""
        with self._store.read() as conn:
            row = conn.execute(
                select(st.api_keys, st.spaces.c.slug)
                .join(st.spaces, st.spaces.c.id == st.api_keys.c.space_id)
                .where(st.api_keys.c.key_id == key_id, st.api_keys.c.revoked_at.is_(None))
            ).first()
        if row is None:
            return None
        return ApiKeyInfo(row.key_id, row.slug, frozenset(row.scopes.split()), row.environment)
