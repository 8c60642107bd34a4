"""The sandbox's HTTP side: the server object and its handler (a Perkville-v2-compatible API, the
token endpoint, fault injection); the settings and ``/_sandbox/`` control routes are in ``controls``."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import random
import secrets
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from connectors.perkville.sandbox import answers
from connectors.perkville.sandbox.controls import Behaviour as Behaviour
from connectors.perkville.sandbox.controls import ControlRoutes
from connectors.perkville.sandbox.controls import Faults as Faults
from connectors.perkville.sandbox.controls import Stats as Stats
from connectors.perkville.sandbox.network import Network
from connectors.perkville.sandbox.rows import API_PREFIX, ID_FIELD, query, render, render_txn
from connectors.perkville.sandbox.schema import HIDEABLE, resource_schema, top_level
from connectors.perkville.sandbox.state import (
    ALL_SCOPES,
    Ledger,
    SandboxError,
    to_int,
)

TOKEN_PATH = "/api/token/"
CONTROL_PREFIX = "/_sandbox/"
DEFAULT_LIMIT = 20  # Tastypie's default page size
MAX_LIMIT = 1000  # Tastypie's default max_limit


class SandboxServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` holding the sandbox state; handler threads are daemons."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], ledger: Ledger, credentials: dict[str, str], seed: int
    ) -> None:
        super().__init__(address, _Handler)
        self.ledger = ledger
        self.credentials = credentials
        self.faults = Faults()
        self.behaviour = Behaviour()
        self.network = Network()
        self.stats = Stats()
        self.tokens: dict[str, frozenset[str]] = {}
        self.allowed_scopes = frozenset(ALL_SCOPES)
        self.fault_rng = random.Random(seed ^ 0x5EED)
        self.fault_lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Dropped connections are part of the job (fault injection, impatient clients).
        return

    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def issue_token(self, scopes: frozenset[str] | None = None) -> str:
        token = "sbx_" + secrets.token_urlsafe(24)
        with self.ledger.lock:
            self.tokens[token] = scopes if scopes is not None else self.allowed_scopes
        return token

    def pick_fault(self) -> tuple[str | None, bool]:
        with self.fault_lock:
            f = self.faults
            slow = f.rate_slow > 0 and self.fault_rng.random() < f.rate_slow
            roll = self.fault_rng.random()
            kind: str | None = None
            for name, rate in (
                ("429", f.rate_429),
                ("5xx", f.rate_5xx),
                ("drop", f.rate_drop),
                ("truncate", f.rate_truncate),
            ):
                if roll < rate:
                    kind = name
                    break
                roll -= rate
            for counted in (kind, "slow" if slow else None):
                if counted:
                    self.stats.faults[counted] = self.stats.faults.get(counted, 0) + 1
            return kind, slow

    def cached_query(self, key: tuple[Any, ...], compute: Callable[[], list[Any]]) -> list[Any]:
        full_key = (self.ledger.version, *key)
        with self.ledger.lock:
            rows = self._cache.get(full_key)
            if rows is not None:
                self._cache.move_to_end(full_key)
                return rows
            rows = compute()
            self._cache[full_key] = rows
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
            return rows


# ---------------------------------------------------------------------- the handler
class _Handler(ControlRoutes, BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    server_version = "PerkvilleSandbox/1.0"
    # TCP_NODELAY, as a production server sets it: the headers and the body go out as two writes,
    # and a small answer's body would otherwise wait for the client's delayed ACK (~40 ms), a
    # stall no real Perkville adds to every small page (bench/README.md, workers.py).
    disable_nagle_algorithm = True
    # When the request arrived (the network's clock), for token and API answers; None: not delayed.
    _arrived: float | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, from the sandbox's own (possibly offset) clock."""
        if timestamp is None:
            return format_datetime(self.server.ledger.now(), usegmt=True)
        return super().date_time_string(timestamp)

    # -- plumbing
    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        content_type = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in content_type:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        try:
            return json.loads(raw)
        except ValueError:
            raise SandboxError(
                400, "__all__", "pv_invalid_json", "The request body is not valid JSON."
            ) from None

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, *, truncate: bool = False
    ) -> None:
        data = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        if self._arrived is not None:
            self.server.network.delay(self._arrived)
        variant_short = False
        if truncate and data:
            with self.server.fault_lock:
                variant_short = self.server.fault_rng.random() < 0.5
            cut = data[: max(1, len(data) // 2)]
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if truncate and data:
            # Either a complete HTTP message with half a JSON body, or a body cut mid-stream.
            self.send_header("Content-Length", str(len(data) if variant_short else len(cut)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(cut)
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        params = parse_qsl(parts.query, keep_blank_values=True)
        self.server.stats.requests += 1
        network = self.server.network
        self._arrived = network.clock() if path == TOKEN_PATH or path.startswith(API_PREFIX) else None
        try:
            if path == TOKEN_PATH:
                if self.server.behaviour.faults_on_token and self._inject():
                    return
                self._token(method)
            elif path.startswith(CONTROL_PREFIX):
                self._control(method, path[len(CONTROL_PREFIX) :].strip("/"), params)
            elif path.startswith(API_PREFIX) and (wait := network.admit()) is not None:
                self._body()
                self._send(429, None, {"Retry-After": str(wait)})
            elif path.startswith(API_PREFIX):
                self._api(method, path[len(API_PREFIX) :].strip("/"), params)
            else:
                self._send(404, {"error": "not_found"})
        except SandboxError as exc:
            self._send(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a defect of the sandbox: answer as Django would, not hang up
            traceback.print_exc()
            self.close_connection = True
            self._send(500, {"error_message": f"sandbox error: {type(exc).__name__}: {exc}"})

    def _inject(self) -> bool:
        """Apply a seeded fault; True when the request was answered (or dropped) by the fault."""
        kind, slow = self.server.pick_fault()
        if slow:
            time.sleep(self.server.faults.slow_seconds)
        if kind == "429":
            self._body()
            headers = {}
            style = self.server.faults.retry_after
            seconds = self.server.faults.retry_after_seconds
            if style == "mixed":
                with self.server.fault_lock:
                    style = "seconds" if self.server.fault_rng.random() < 0.5 else "http-date"
            if style == "seconds":
                headers["Retry-After"] = str(seconds)
            elif style == "http-date":
                when = self.server.ledger.now() + timedelta(seconds=seconds)
                headers["Retry-After"] = format_datetime(when, usegmt=True)
            self._send(
                429,
                {
                    "error_type": "throttled",
                    "errors": {"__all__": [{"code": "pv_throttled", "message": "Too many requests."}]},
                },
                headers,
            )
            return True
        if kind == "5xx":
            self._body()
            with self.server.fault_lock:
                status = self.server.fault_rng.choice((500, 502, 503, 504))
            self._send(status, {"error": "server_error"})
            return True
        if kind == "drop":
            self._drop()
            return True
        self._truncate_next = kind == "truncate"
        return False

    # -- OAuth2 token endpoint (resource-owner password grant, HTTP Basic client auth)
    def _token(self, method: str) -> None:
        creds = self.server.credentials
        body = self._body()
        if method != "POST":
            self._send(405, {"error": "invalid_request", "error_description": "POST only"})
            return
        client_id, client_secret = None, None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
                client_id, _, client_secret = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id = None
        if client_id is None or not (
            hmac.compare_digest(client_id, creds["client_id"])
            and hmac.compare_digest(client_secret or "", creds["client_secret"])
        ):
            self._send(
                401,
                {"error": "invalid_client", "error_description": "Client authentication failed."},
                {"WWW-Authenticate": 'Basic realm="perkville"'},
            )
            return
        if not isinstance(body, dict) or body.get("grant_type") != "password":
            self._send(400, {"error": "unsupported_grant_type"})
            return
        if not (
            hmac.compare_digest(str(body.get("username", "")), creds["username"])
            and hmac.compare_digest(str(body.get("password", "")), creds["password"])
        ):
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid credentials given."})
            return
        requested = frozenset(str(body.get("scope") or "").split())
        if requested - self.server.allowed_scopes:
            self._send(400, {"error": "invalid_scope"})
            return
        granted = requested or self.server.allowed_scopes
        token = self.server.issue_token(granted)
        # Perkville's password-grant tokens do not expire: no expires_in, no refresh_token.
        self._send(
            200,
            {"access_token": token, "token_type": "Bearer", "scope": " ".join(sorted(granted))},
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _authorize(self) -> frozenset[str] | None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        with self.server.ledger.lock:
            scopes = self.server.tokens.get(token) if token else None
        if scopes is None:
            self._body()
            self._send(
                401,
                {
                    "error_type": "oauth_error",
                    "errors": {
                        "__all__": [
                            {"code": "invalid_token", "message": "The access token is invalid or revoked."}
                        ]
                    },
                },
                {"WWW-Authenticate": 'Bearer realm="perkville"'},
            )
        return scopes

    # -- the v2 API
    def _api(self, method: str, path: str, params: list[tuple[str, str]]) -> None:
        self._truncate_next = False
        if self._inject():
            return
        scopes = self._authorize()
        if scopes is None:
            return
        segments = path.split("/") if path else []
        resource = segments[0] if segments else ""
        detail = segments[1] if len(segments) > 1 else None
        ledger = self.server.ledger
        if method == "GET" and (not resource or detail == "schema") and self._discovery(resource, params):
            return
        if resource == "external-members" and not self.server.behaviour.external_members:
            self._body()
            self._send(404, {"error": "not_found"})
            return
        if resource not in ID_FIELD:
            self._body()
            self._send(404, {"error": "not_found"})
            return
        if method == "GET" and detail is None:
            self._list(resource, params)
            return
        if method == "GET":
            assert detail is not None
            record = self._detail(resource, detail)
            self._send(200, render(resource, record, self.server), truncate=self._truncate_next)
            return
        body = self._body()
        if not isinstance(body, dict):
            raise SandboxError(400, "__all__", "pv_invalid_body", "Expected a JSON object.")
        if resource == "transactions" and method == "POST" and detail is None:
            if "ADMIN_CUSTOMER_GRANT_POINTS" not in scopes:
                self._send(
                    403,
                    {
                        "error_type": "permission_denied",
                        "errors": {
                            "__all__": [
                                {
                                    "code": "pv_missing_scope",
                                    "message": "ADMIN_CUSTOMER_GRANT_POINTS is required.",
                                }
                            ]
                        },
                    },
                )
                return
            self._reply(*self._post_transaction(body))
            return
        if resource == "connections" and method == "PATCH" and detail is not None:
            record = ledger.set_connection_status(to_int(detail) or 0, str(body.get("status", "")))
            with ledger.lock:
                out = render("connections", record, self.server)
            self._reply(*answers.accepted(out, return_data=self.server.behaviour.return_data))
            return
        if resource == "external-members" and (
            method == "POST" and detail is None or method == "PATCH" and detail
        ):
            record, created = ledger.upsert_external_member(body, to_int(detail) if detail else None)
            with ledger.lock:
                out = render("external-members", record, self.server)
            return_data = self.server.behaviour.return_data
            if detail:
                self._reply(*answers.accepted(out, return_data=return_data, status=200))
            else:
                self._reply(*answers.created(201 if created else 200, out, return_data=return_data))
            return
        self._send(
            405,
            {
                "error_type": "method_not_allowed",
                "errors": {
                    "__all__": [
                        {"code": "pv_method_not_allowed", "message": f"{method} is not allowed here."}
                    ]
                },
            },
        )

    def _discovery(self, resource: str, params: list[tuple[str, str]]) -> bool:
        """Tastypie's ``GET /v2/`` and ``GET /v2/{resource}/schema/``; False: not one of them."""
        behaviour = self.server.behaviour
        hidden = [name for name in behaviour.hidden_transaction_fields if name in HIDEABLE]
        resources = [r for r in ID_FIELD if r != "external-members" or behaviour.external_members]
        if not behaviour.schema_endpoints or (resource and resource not in resources):
            self._send(404, {"error": "not_found"})
            return True
        limits = {"default_limit": DEFAULT_LIMIT, "max_limit": self._cap()}
        if not resource:
            full = dict(params).get("fullschema", "").lower() in ("1", "true")
            self._send(200, top_level(API_PREFIX, resources, dict(ID_FIELD), full=full, hidden=hidden, **limits))
        else:
            self._send(200, resource_schema(resource, ID_FIELD[resource], hidden=hidden, **limits))
        return True

    def _cap(self) -> int:
        cap = self.server.behaviour.cap_limit
        return MAX_LIMIT if cap is None else min(MAX_LIMIT, cap)

    def _post_transaction(self, body: dict[str, Any]) -> answers.Reply:
        """``POST /v2/transactions/``: a new row, or the configured answer to a repeated
        ``trans_source_id``; the customer may be named by ``external_member_id``."""
        ledger = self.server.ledger
        behaviour = self.server.behaviour
        business = to_int(body.get("business")) or self._business_of_perk(body.get("perk"))
        with ledger.lock:  # the duplicate check and the write are one step
            existing = answers.existing_row(ledger, business, body.get("trans_source_id"))
            if existing is not None:
                shown = render_txn(existing, self.server)
                reply = answers.duplicate_reply(
                    behaviour.duplicate_answer, shown, return_data=behaviour.return_data
                )
                if reply is not None:
                    return reply
            user = to_int(body.get("user"))
            named = body.get("external_member_id")
            if user is None and named is not None and not body.get("connection"):
                user = answers.customer_of_external_member(ledger, business, named)
            txn = ledger.add_transaction(
                business=business,
                perk=to_int(body.get("perk")) or 0,
                user=user,
                connection=to_int(body.get("connection")),
                email=body.get("user__emails__email") or body.get("email"),
                location=to_int(body.get("location")),
                quantity=int(body.get("quantity") or 1),
                points=body.get("points"),
                transaction_dt=body.get("transaction_dt"),
                trans_source_id=body.get("trans_source_id"),
                limit_to_once_per_calendar_day=bool(body.get("limit_to_once_per_calendar_day")),
            )
            return answers.created(201, render_txn(txn, self.server), return_data=behaviour.return_data)

    def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        self._send(status, payload, headers, truncate=self._truncate_next)

    def _business_of_perk(self, perk: Any) -> int:
        record = self.server.ledger.perks.get(to_int(perk) or 0)
        return int(record["business"]) if record else 0

    def _detail(self, resource: str, detail: str) -> Any:
        ledger = self.server.ledger
        if resource == "users" and detail == "me":
            return ledger.users[ledger.staff_user_id]
        key = to_int(detail)
        tables: dict[str, dict[int, Any]] = {
            "transactions": ledger.txns,
            "locations": ledger.locations,
            "perks": ledger.perks,
            "users": ledger.users,
            "connections": ledger.connections,
            "external-members": ledger.external_members,
            "businesses": {b.id: b.record for b in ledger.businesses.values()},
        }
        record = tables[resource].get(key) if key is not None else None
        if record is None:
            raise SandboxError(404, "__all__", "pv_not_found", "Not found.")
        return record

    def _list(self, resource: str, params: list[tuple[str, str]]) -> None:
        behaviour = self.server.behaviour
        values = dict(params)
        try:
            limit = int(values.get("limit", DEFAULT_LIMIT))
            offset = int(values.get("offset", 0))
        except ValueError:
            raise SandboxError(
                400, "limit", "pv_invalid_paging", "limit and offset must be integers."
            ) from None
        if limit < 0 or offset < 0:
            raise SandboxError(400, "limit", "pv_invalid_paging", "limit and offset must not be negative.")
        cap = self._cap()
        limit = cap if limit == 0 else min(limit, cap)
        rows = query(resource, params, self.server)
        total = len(rows)
        with self.server.ledger.lock:
            objects = [render(resource, row, self.server) for row in rows[offset : offset + limit]]
        meta: dict[str, Any] = {"limit": limit, "offset": offset, "total_count": total}
        if behaviour.next_links != "none":
            meta["previous"] = self._link(params, max(0, offset - limit), limit) if offset > 0 else None
            if behaviour.repeat_next:
                meta["next"] = self._link(params, limit, limit)
            else:
                meta["next"] = self._link(params, offset + limit, limit) if offset + limit < total else None
        self._send(200, {"meta": meta, "objects": objects}, truncate=self._truncate_next)

    def _link(self, params: list[tuple[str, str]], offset: int, limit: int) -> str:
        kept = [(k, v) for k, v in params if k not in ("limit", "offset")]
        kept += [("limit", str(limit)), ("offset", str(offset))]
        path = urlsplit(self.path).path
        link = f"{path}?{urlencode(kept)}"
        if self.server.behaviour.next_links == "absolute":
            return self.server.base_url() + link
        return link
