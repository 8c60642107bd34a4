"""The sandbox's controls: the settings tests switch (`Faults`, `Behaviour`), the counters they read
(`Stats`), and the ``/_sandbox/`` routes that switch and read them (and the clock, seeded or voided
transactions, true balances, token revocation) over HTTP, mixed into the server's handler."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from connectors.perkville.sandbox import answers
from connectors.perkville.sandbox.rows import fmt_dt, render_txn
from connectors.perkville.sandbox.state import SandboxError

if TYPE_CHECKING:
    from connectors.perkville.sandbox.server import SandboxServer


@dataclass
class Faults:
    """Seeded fault probabilities (0..1) applied to ``/v2/`` requests."""

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_slow: float = 0.0
    rate_drop: float = 0.0
    rate_truncate: float = 0.0
    slow_seconds: float = 0.05
    retry_after: str = "seconds"  # "seconds" | "http-date" | "mixed" | "none"
    retry_after_seconds: int = 0

    @classmethod
    def all_on(cls, rate: float = 0.05, **overrides: Any) -> Faults:
        values: dict[str, Any] = {
            "rate_429": rate,
            "rate_5xx": rate,
            "rate_slow": rate,
            "rate_drop": rate,
            "rate_truncate": rate,
            "retry_after": "mixed",
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class Behaviour:
    """Switchable server behaviours that real (or buggy) Perkville servers may show."""

    ignore_filters: bool = False
    ignore_order: bool = False
    cap_limit: int | None = None
    next_links: str = "relative"  # "relative" | "absolute" | "none"
    repeat_next: bool = False  # a broken server whose next link never advances
    datetime_style: str = "space"  # "space" | "t" | "offset"
    external_members: bool = True  # False: the endpoint answers 404
    faults_on_token: bool = False
    schema_endpoints: bool = True  # False: ``/v2/`` and ``/v2/{resource}/schema/`` answer 404
    unknown_filters: str = "reject"  # "reject" (400) | "ignore" (Tastypie: silently unfiltered)
    staff_locations: list[int] | None = None  # a staff account limited to these locations
    hidden_transaction_fields: list[str] = field(default_factory=list)  # e.g. ["last_mod_dt"]
    return_data: bool = False  # Tastypie's always_return_data: False answers writes with empty bodies
    duplicate_answer: str = "field"  # a repeated trans_source_id: see ``answers.DUPLICATE_ANSWERS``

    def __post_init__(self) -> None:
        answers.check_duplicate_answer(self.duplicate_answer)


@dataclass
class Stats:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class _Plumbing(Protocol):
    """What the routes use of the handler they are mixed into (``server._Handler``)."""

    @property
    def server(self) -> SandboxServer: ...

    def _body(self) -> Any: ...

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, *, truncate: bool = False
    ) -> None: ...


class ControlRoutes:
    """The handler's ``/_sandbox/`` routes, mixed into ``server._Handler``."""

    # -- control routes for subprocess tests
    def _control(self: _Plumbing, method: str, path: str, params: list[tuple[str, str]]) -> None:
        server = self.server
        ledger = server.ledger
        body = self._body() if method in ("POST", "PATCH", "PUT") else {}
        values = dict(params)
        if path == "faults" and method == "POST":
            server.faults = _update(Faults() if body.pop("reset", False) else server.faults, body)
            self._send(200, asdict(server.faults))
        elif path == "faults" and method == "GET":
            self._send(200, asdict(server.faults))
        elif path == "clock" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    offset = float(body.get("offset_seconds", 0)) if isinstance(body, dict) else None
                except (TypeError, ValueError):
                    offset = None
                if offset is None or offset != offset or abs(offset) == float("inf"):
                    raise SandboxError(400, "offset_seconds", "invalid", "offset_seconds must be a number.")
                with ledger.lock:
                    ledger.clock_offset = timedelta(seconds=offset)
            self._send(200, {"offset_seconds": ledger.clock_offset.total_seconds(),
                             "now": fmt_dt(ledger.now(), server)})
        elif path == "behaviour" and method == "POST":
            server.behaviour = _update(server.behaviour, body)
            self._send(200, asdict(server.behaviour))
        elif path == "transactions" and method == "POST":
            txn = ledger.add_transaction(
                business=int(body.get("business") or next(iter(ledger.businesses))),
                perk=int(body["perk"]),
                user=body.get("user"),
                connection=body.get("connection"),
                email=body.get("email"),
                location=body.get("location"),
                quantity=int(body.get("quantity", 1)),
                points=body.get("points"),
                transaction_dt=body.get("transaction_dt"),
                trans_source_id=body.get("trans_source_id"),
                limit_to_once_per_calendar_day=bool(body.get("limit_to_once_per_calendar_day")),
            )
            with ledger.lock:
                self._send(201, render_txn(txn, server))
        elif path.startswith("transactions/") and path.endswith("/void") and method == "POST":
            reversal = ledger.void_transaction(int(path.split("/")[1]), body.get("at"))
            with ledger.lock:
                self._send(200, render_txn(reversal, server))
        elif path == "balances" and method == "GET":
            business = int(values.get("business") or next(iter(ledger.businesses)))
            self._send(200, {str(k): v for k, v in ledger.true_balances(business).items()})
        elif path == "revoke" and method == "POST":
            with ledger.lock:
                server.tokens.clear()
            self._send(200, {"revoked": True})
        elif path == "stats" and method == "GET":
            network = server.network.stats
            self._send(
                200,
                {
                    "requests": server.stats.requests,
                    "faults": dict(server.stats.faults),
                    "accepted": network.accepted,
                    "throttled": network.throttled,
                },
            )
        else:
            self._send(404, {"error": "not_found"})


def _update(current: Any, changes: Any) -> Any:
    if not isinstance(changes, dict):
        raise SandboxError(400, "__all__", "pv_invalid_body", "Expected a JSON object.")
    known = {f.name for f in fields(current)}
    unknown = set(changes) - known
    if unknown:
        raise SandboxError(400, sorted(unknown)[0], "unknown_setting", f"Unknown settings: {sorted(unknown)}")
    values = asdict(current)
    values.update(changes)
    try:
        return type(current)(**values)
    except (TypeError, ValueError) as exc:
        raise SandboxError(400, "__all__", "unknown_setting", str(exc)) from None
