"""A local Perkville v2 sandbox on loopback: generated businesses, password grant, faults, true balances."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from connectors.perkville.sandbox.network import Network
from connectors.perkville.sandbox.rows import API_PREFIX, render, render_txn
from connectors.perkville.sandbox.server import TOKEN_PATH, Behaviour, Faults, SandboxServer
from connectors.perkville.sandbox.state import ALL_SCOPES, REDEEM_SIGNS, Ledger, SandboxError

__all__ = ["ALL_SCOPES", "REDEEM_SIGNS", "Behaviour", "Faults", "Sandbox", "SandboxError"]


class Sandbox:
    """A Perkville-v2-compatible API served from memory on a loopback port.

    ``Sandbox(seed=0, businesses=1, members=200, transactions=2000)`` generates the same data for
    the same arguments. ``timezone`` is the zone its naive datetimes are shown (and its filters
    read) in; ``clock_offset`` sets its own clock that many seconds ahead of the real one
    (negative: behind), like a Perkville whose server clock is off. ``redeem_sign="negative"``
    (the default, as Perkville's docs describe its ledger) shows a redemption as ``-N`` points and
    its ``VOID_REF`` as ``+N``; ``"positive"`` shows redemptions as magnitudes and every ``VOID_REF``
    negated. ``tiered_levels=True`` gives connections levels by lifetime points (``sandbox/tiers.py``).
    ``start()`` returns the base URL once the server listens; ``api_url`` and
    ``token_url`` are what a ``PerkvilleClient`` needs, ``credentials`` the password-grant test
    credentials. Faults and behaviours can be switched from Python or over HTTP (``/_sandbox/``).
    """

    def __init__(
        self,
        seed: int = 0,
        businesses: int = 1,
        members: int = 200,
        transactions: int = 2000,
        *,
        timezone: str = "UTC",
        redeem_sign: str = REDEEM_SIGNS[0],
        void_ratio: float = 0.02,
        now: Callable[[], datetime] | None = None,
        clock_offset: float = 0.0,
        tiered_levels: bool = False,
    ) -> None:
        if businesses < 1 or members < 1 or transactions < 0:
            raise ValueError("need at least one business and one member, and transactions >= 0")
        self.seed = seed
        self.ledger = Ledger(
            seed=seed,
            businesses=businesses,
            members=members,
            transactions=transactions,
            timezone_name=timezone,
            redeem_sign=redeem_sign,
            void_ratio=void_ratio,
            now=now,
            clock_offset=clock_offset,
        )
        if tiered_levels:  # levels by lifetime points (sandbox/tiers.py); no random draw
            from connectors.perkville.sandbox.tiers import level_connections_by_lifetime

            level_connections_by_lifetime(self.ledger)
        rng = random.Random(f"credentials-{seed}")
        self.credentials: dict[str, str] = {
            "client_id": f"sandbox-client-{seed}",
            "client_secret": "sbx-secret-"
            + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(20)),
            "username": "staff@sandbox.perkville.test",
            "password": "sbx-pass-"
            + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(16)),
        }
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None
        self._pending_faults = Faults()
        self._pending_behaviour = Behaviour()
        self._network = Network()

    def __repr__(self) -> str:
        state = self.base_url if self._server else "stopped"
        return f"Sandbox(seed={self.seed}, {state})"

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) in a daemon thread; returns the base URL."""
        if self._server is not None:
            return self.base_url
        server = SandboxServer((host, port), self.ledger, self.credentials, self.seed)
        server.faults = self._pending_faults
        server.behaviour = self._pending_behaviour
        server.network = self._network
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="perkville-sandbox", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> SandboxServer:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.base_url()

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def business_ids(self) -> list[int]:
        return sorted(self.ledger.businesses)

    def describe(self) -> dict[str, Any]:
        """What a user needs to point a client at this sandbox (test credentials only)."""
        return {
            "base_url": self.base_url,
            "api_url": self.api_url,
            "token_url": self.token_url,
            "business_ids": self.business_ids,
            "control_url": self.base_url + "/_sandbox/",
            **self.credentials,
        }

    def client_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for ``PerkvilleClient`` pointing at this sandbox."""
        return {"api_url": self.api_url, "token_url": self.token_url, **self.credentials}

    # ------------------------------------------------------------------ switches
    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace (``faults``) or change (keywords) the fault probabilities; returns the new setting."""
        current = faults or (self._server.faults if self._server else self._pending_faults)
        values = asdict(current)
        values.update(changes)
        new = Faults(**values)
        self._pending_faults = new
        if self._server is not None:
            self._server.faults = new
        return new

    def set_behaviour(self, **changes: Any) -> Behaviour:
        """Change server behaviours (ignore_filters, ignore_order, cap_limit, next_links, ...)."""
        current = self._server.behaviour if self._server else self._pending_behaviour
        values = asdict(current)
        values.update(changes)
        new = Behaviour(**values)
        self._pending_behaviour = new
        if self._server is not None:
            self._server.behaviour = new
        return new

    def set_network(self, *, latency_ms: float = 0.0, rate_limit: int | None = None) -> Network:
        """Answer every token and API request ``latency_ms`` after it arrived, and throttle the API
        past ``rate_limit`` requests in any second (429 + ``Retry-After``); 0 and None: off."""
        network = Network(latency=latency_ms / 1000.0, rate_limit=rate_limit or None)
        self._network = network
        if self._server is not None:
            self._server.network = network
        return network

    def set_clock(self, offset_seconds: float) -> None:
        """Set the sandbox's clock ``offset_seconds`` from the real one (negative = behind)."""
        with self.ledger.lock:
            self.ledger.clock_offset = timedelta(seconds=offset_seconds)

    def issue_token(self, scopes: list[str] | None = None) -> str:
        """A valid bearer token without the password grant (for ``access_token=`` tests)."""
        return self.server.issue_token(frozenset(scopes) if scopes is not None else None)

    def revoke_tokens(self, token: str | None = None) -> None:
        """Invalidate one token, or every token issued so far (the next API call answers 401)."""
        with self.ledger.lock:
            if token is None:
                self.server.tokens.clear()
            else:
                self.server.tokens.pop(token, None)

    def set_password(self, password: str) -> None:
        """Change the staff password (so a re-authentication after ``revoke_tokens`` fails)."""
        self.credentials["password"] = password

    def stats(self) -> dict[str, Any]:
        network = self.server.network.stats
        return {
            "requests": self.server.stats.requests,
            "faults": dict(self.server.stats.faults),
            "throttled": network.throttled,
            "accepted": network.accepted,
        }

    # ------------------------------------------------------------------ ledger
    def add_transaction(self, **kwargs: Any) -> dict[str, Any]:
        """Record new activity (same arguments and checks as ``POST /v2/transactions/``)."""
        kwargs.setdefault("business", self.business_ids[0])
        txn = self.ledger.add_transaction(**kwargs)
        with self.ledger.lock:
            return render_txn(txn, self._server or _Renderer(self.ledger))  # type: ignore[arg-type]

    def void_transaction(self, transaction_id: int, at: datetime | str | None = None) -> dict[str, Any]:
        """Void an ACTIVE row later; returns the new VOID_REF row."""
        reversal = self.ledger.void_transaction(transaction_id, at)
        with self.ledger.lock:
            return render_txn(reversal, self._server or _Renderer(self.ledger))  # type: ignore[arg-type]

    def update_user(self, user_id: int, **changes: Any) -> dict[str, Any]:
        """Edit a user's profile (its ``last_mod_dt`` moves to the sandbox's now)."""
        record = self.ledger.update_user(user_id, **changes)
        with self.ledger.lock:
            return render("users", record, self._server or _Renderer(self.ledger))  # type: ignore[arg-type]

    def true_balances(self, business_id: int | None = None) -> dict[int, int]:
        """``{user_id: balance}`` for a business, computed from the sandbox's own ledger."""
        return self.ledger.true_balances(business_id if business_id is not None else self.business_ids[0])

    def transaction_ids(self, business_id: int | None = None) -> list[int]:
        """Every transaction id of a business (VOID and VOID_REF rows included), ascending."""
        return self.ledger.transaction_ids(business_id if business_id is not None else self.business_ids[0])


class _Renderer:
    """Enough of a server for ``render_txn`` before ``start()``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.behaviour = Behaviour()
