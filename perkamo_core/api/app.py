"""The Perkamo v1 HTTP API over the embedded core's service: ``create_app(service, ...)``.

One pure-ASGI gate in front of the routes gives every answer an ``x-perkamo-request-id`` and, for
``/v1/*``, checks in this order: the API key (401), the per-key rate limit (429), the body size
(400) and the request signature (401; verified over the raw body bytes whenever sent, and
mandatory for mutating requests when the server or the key's Space requires it; the SDKs sign
only requests with a body).  The routes then check the key's scope and any body
``tenant``/``space`` (403), validate the body strictly (400) and call the service, whose typed
errors become ``{"message", "code"}`` answers with their status.  No client input yields a 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from perkamo_core.api.ratelimit import FixedWindowLimiter, RateDecision
from perkamo_core.api.schemas import (
    MAX_USER_ID,
    BatchBody,
    ConfigBody,
    EventBody,
    IdentifyBody,
    RedeemBody,
)
from perkamo_core.api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from perkamo_core.errors import (
    AuthenticationError,
    CoreError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ValidationError,
)
from perkamo_core.models import ApiKeyInfo, EventInput, IngestOutcome

if TYPE_CHECKING:
    from perkamo_core.service import CoreService

API_KEY_HEADER = "x-perkamo-api-key"
REQUEST_ID_HEADER = "x-perkamo-request-id"
CONFIG_MODULES = ("events", "leveling", "wallets", "perks", "achievements", "boosts")
DEFAULT_MAX_BODY_BYTES = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger(__name__)
_EVENT_ADAPTER = TypeAdapter(EventBody)
_STATE_KEY = "perkamo_key"


# -- JSON --------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(payload: Any) -> bytes:
    """Compact JSON with Decimals as numbers and datetimes as ISO-8601 ``Z`` strings."""
    return json.dumps(
        payload, default=_json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class PerkamoJSONResponse(JSONResponse):
    """A JSON answer rendered with ``dumps``."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_body(error: CoreError) -> dict[str, Any]:
    """The wire body of an error: ``{"message", "code"}`` plus ``field``/``path`` when known."""
    return error.to_dict()


def batch_results(items: Sequence[IngestOutcome], transaction_ids: Sequence[str | None]) -> dict[str, Any]:
    """The ``POST /v1/events:batch`` answer: one entry per input item, in input order.

    A valid item's entry is its event result; an invalid one's is ``{"transaction_id", "error"}``.
    """
    results: list[dict[str, Any]] = []
    for outcome, transaction_id in zip(items, transaction_ids, strict=True):
        if outcome.error is not None or outcome.result is None:
            error = outcome.error or CoreError("the event was not processed")
            results.append({"transaction_id": transaction_id, "error": error_body(error)})
        else:
            results.append(outcome.result)
    return {"results": results}


# -- the gate ----------------------------------------------------------------------------------


class _AuthCache:
    """Successful key authentications and Space signature settings, remembered for ``ttl`` seconds.

    Keys are remembered by their SHA-256, never in clear.  A revocation or a Space setting change
    takes effect within ``ttl`` seconds (0 disables the cache: every request asks the service).
    """

    def __init__(self, service: CoreService, ttl: float) -> None:
        self._service = service
        self._ttl = ttl
        self._keys: dict[str, tuple[float, ApiKeyInfo]] = {}
        self._spaces: dict[str, tuple[float, bool]] = {}

    def authenticate(self, api_key: str) -> ApiKeyInfo:
        if self._ttl <= 0:
            return self._service.authenticate(api_key)
        digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        info = self._service.authenticate(api_key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now + self._ttl, info)
        return info

    def require_signatures(self, space: str) -> bool:
        now = time.monotonic()
        cached = self._spaces.get(space)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            required = bool(self._service.get_space(space).require_signatures)
        except NotFoundError:
            required = False
        if self._ttl > 0:
            self._spaces[space] = (now + self._ttl, required)
        return required


class _RequestIds:
    """``req_`` ids: a random per-process prefix and a counter (unique, cheap to make)."""

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(6)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


class _BodyTooLarge(ValidationError):
    default_code = "payload_too_large"


class _Gate:
    """Request ids, API-key authentication, rate limiting and signatures for every request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: CoreService,
        now: Callable[[], float],
        limiter: FixedWindowLimiter | None,
        require_signatures: bool,
        max_body_bytes: int,
        meter: _RequestMeter,
        auth_cache_seconds: float,
        fast_lane: Callable[[Scope, ApiKeyInfo, bytes], Awaitable[PerkamoJSONResponse | None]] | None,
    ) -> None:
        self.fast_lane = fast_lane
        self.app = app
        self.meter = meter
        self.auth = _AuthCache(service, auth_cache_seconds)
        self.request_ids = _RequestIds()
        self.now = now
        self.limiter = limiter
        self.require_signatures = require_signatures
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_ids.next()
        extra_headers: list[tuple[bytes, bytes]] = [(REQUEST_ID_HEADER.encode(), request_id.encode())]
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        try:
            if scope["path"].startswith("/v1/"):
                info, body = await self._admit(scope, receive, extra_headers)
                response = None if self.fast_lane is None else await self.fast_lane(scope, info, body)
                if response is not None:
                    await response(scope, receive, send_with_headers)
                    return
                receive = _replay(body)
            await self.app(scope, receive, send_with_headers)
        except CoreError as exc:
            if started:
                raise
            await _send_error(send_with_headers, exc)
        except Exception:
            _log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            await _send_error(send_with_headers, CoreError("internal server error; retry with the same transaction id"))

    async def _admit(
        self, scope: Scope, receive: Receive, extra_headers: list[tuple[bytes, bytes]]
    ) -> tuple[ApiKeyInfo, bytes]:
        headers = Headers(scope=scope)
        api_key = headers.get(API_KEY_HEADER)
        if not api_key:
            raise AuthenticationError(f"missing {API_KEY_HEADER} header", code="missing_api_key")
        info = self.auth.authenticate(api_key)
        self.meter.count(info.space)
        now = self.now()
        if self.limiter is not None:
            decision = self.limiter.hit(info.key_id, now)
            extra_headers.extend(decision.headers())
            if not decision.allowed:
                raise _rate_limited(decision)
        body = await _read_body(receive, headers, self.max_body_bytes)
        signature = headers.get(SIGNATURE_HEADER)
        mutating = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if signature is not None or (mutating and self._signatures_required(info)):
            verify_signature(
                api_key,
                timestamp=headers.get(TIMESTAMP_HEADER),
                signature=signature,
                method=scope["method"],
                path=_signed_path(scope),
                body=body,
                now=now,
            )
        scope.setdefault("state", {})[_STATE_KEY] = info
        return info, body

    def _signatures_required(self, info: ApiKeyInfo) -> bool:
        return self.require_signatures or self.auth.require_signatures(info.space)


def _rate_limited(decision: RateDecision) -> RateLimitedError:
    return RateLimitedError(
        f"Rate limit exceeded: {decision.limit} requests per minute for this API key",
        retry_after=decision.retry_after,
    )


def _signed_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.split(b"?", 1)[0].decode("latin-1")
    return str(scope["path"])


async def _read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send_error(send: Send, error: CoreError) -> None:
    response = _error_response(error)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _error_response(error: CoreError) -> PerkamoJSONResponse:
    headers: dict[str, str] = {}
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    status = error.status if 400 <= error.status < 600 else 500
    return PerkamoJSONResponse(error_body(error), status_code=status, headers=headers)


# -- usage: the requests meter -----------------------------------------------------------------


class _RequestMeter:
    """Counts authenticated requests per Space in memory and adds them to the ``requests`` usage
    meter at most every ``interval`` seconds (and before usage is read), not one write per call."""

    def __init__(self, service: CoreService, *, interval: float = 5.0) -> None:
        self._service = service
        self._interval = interval
        self._counts: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def count(self, space: str) -> None:
        self._counts[space] = self._counts.get(space, 0) + 1
        if time.monotonic() - self._last_flush >= self._interval:
            self.flush()

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        self._last_flush = time.monotonic()
        for space, count in counts.items():
            try:
                self._service.record_usage(space, "requests", count)
            except CoreError as exc:  # a Space removed meanwhile: its count is moot
                _log.warning("could not record %d requests for Space %s: %s", count, space, exc.message)


# -- group commit of single events ---------------------------------------------------------------


class _EventWriter:
    """Applies concurrent ``POST /v1/events`` calls together through ``ingest_bulk``.

    Requests that arrive while a bulk is being written wait for the next one, so an idle server
    writes each event at once and a busy one commits many events per transaction.  Results are
    exactly the per-event results, in arrival order per Space.
    """

    def __init__(self, service: CoreService, *, max_batch: int = 100) -> None:
        self._service = service
        self._max_batch = max_batch
        self._pending: list[tuple[str, EventInput, asyncio.Future[IngestOutcome]]] = []
        self._running = False
        self._executor: ThreadPoolExecutor | None = None

    async def ingest(self, space: str, event: EventInput) -> IngestOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestOutcome] = loop.create_future()
        self._pending.append((space, event, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perkamo-events")
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._apply, batch)
                except BaseException as exc:  # hand the failure to every waiting request
                    outcomes = [exc] * len(batch)
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._running = False

    def _apply(self, batch: list[tuple[str, EventInput, Any]]) -> list[IngestOutcome | BaseException]:
        """One ``ingest_bulk`` per Space; a Space whose bulk fails fails only its own events."""
        outcomes: list[IngestOutcome | BaseException] = [CoreError("the event was not processed")] * len(batch)
        by_space: dict[str, list[int]] = {}
        for index, (space, _, _) in enumerate(batch):
            by_space.setdefault(space, []).append(index)
        for space, indexes in by_space.items():
            try:
                results: Sequence[IngestOutcome | BaseException] = self._service.ingest_bulk(
                    space, [batch[i][1] for i in indexes]
                )
            except Exception as exc:
                results = [exc] * len(indexes)
            for index, outcome in zip(indexes, results, strict=True):
                outcomes[index] = outcome
        return outcomes

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


# -- routes ------------------------------------------------------------------------------------


class _Work:
    """What the hot routes do, shared by the FastAPI operations and the gate's fast lane."""

    def __init__(self, service: CoreService, writer: _EventWriter | None) -> None:
        self.service = service
        self.writer = writer

    async def event(self, info: ApiKeyInfo, body: EventBody) -> dict[str, Any]:
        check_space(info, body.tenant, body.space)
        event = event_input(body)
        if self.writer is None:
            return self.service.ingest(info.space, event)
        outcome = await self.writer.ingest(info.space, event)
        if outcome.error is not None or outcome.result is None:
            raise outcome.error or CoreError("the event was not processed")
        return outcome.result

    def customer(self, info: ApiKeyInfo, user_id: str) -> dict[str, Any]:
        return self.service.customer(info.space, user_id)

    async def fast_lane(self, scope: Scope, info: ApiKeyInfo, body: bytes) -> PerkamoJSONResponse | None:
        """Answer ``POST /v1/events`` and ``GET /v1/customer|profile/{id}`` without the router.

        Same checks in the same order as the FastAPI operations (scope, then body); anything
        else (including an over-long id, whose 400 the router words) returns ``None``.
        """
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/events":
            require_scope(info, "events:write")
            try:
                parsed = EventBody.model_validate_json(body or b"null")
            except PydanticValidationError as exc:
                raise _validation_error(exc.errors()) from None
            return PerkamoJSONResponse(await self.event(info, parsed))
        if method == "GET" and path.startswith(("/v1/customer/", "/v1/profile/")):
            user_id = path.split("/", 3)[3]
            if 0 < len(user_id) <= MAX_USER_ID:
                require_scope(info, "profile:read")
                return PerkamoJSONResponse(self.customer(info, user_id))
        return None


_api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Server API key (sk_test_… / sk_live_…)")


def _key_info(request: Request) -> ApiKeyInfo:
    info = request.scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(info, ApiKeyInfo):  # the gate admits every /v1/ request; this is a guard
        raise AuthenticationError(f"missing {API_KEY_HEADER} header", code="missing_api_key")
    return info


def require_scope(info: ApiKeyInfo, scope_name: str) -> None:
    """403 ``missing_scope`` unless the key has ``scope_name``."""
    if scope_name not in info.scopes:
        raise PermissionDeniedError(f"this API key lacks the {scope_name} scope", code="missing_scope")


def _scoped(scope_name: str) -> Callable[..., Awaitable[ApiKeyInfo]]:
    async def dependency(request: Request, _key: Annotated[str | None, Security(_api_key_scheme)] = None) -> ApiKeyInfo:
        info = _key_info(request)
        require_scope(info, scope_name)
        return info

    dependency.__name__ = f"requires_{scope_name.replace(':', '_')}"
    return dependency


def check_space(info: ApiKeyInfo, tenant: str | None, space: str | None) -> None:
    """403 unless the body's ``tenant``/``space`` (when given) is the key's Space."""
    for name, value in (("tenant", tenant), ("space", space)):
        if value is not None and value != info.space:
            raise PermissionDeniedError(
                f"{name} {value!r} is not the Space of this API key ({info.space!r})",
                code="space_mismatch",
                field=name,
            )


def event_input(body: EventBody) -> EventInput:
    """The service's ``EventInput`` for a validated event body."""
    return EventInput(
        user_id=body.user_id,
        event=body.event,
        transaction_id=body.transaction_id,
        context=dict(body.context or {}),
        occurred_at=body.occurred_at,
    )


def parse_batch_items(raw_items: Sequence[Any]) -> list[EventBody | CoreError]:
    """Validate each batch item on its own: a model, or the ``ValidationError`` that rejects it."""
    parsed: list[EventBody | CoreError] = []
    for index, raw in enumerate(raw_items):
        try:
            parsed.append(_EVENT_ADAPTER.validate_python(raw))
        except PydanticValidationError as exc:
            parsed.append(_validation_error(exc.errors(), prefix=f"events[{index}]"))
    return parsed


def _validation_error(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> ValidationError:
    if not errors:
        return ValidationError("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "malformed JSON")
        return ValidationError(f"request body is not valid JSON: {detail}", code="invalid_json")
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query", "header")]
    field = ".".join(location)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not field:
        message = "the request body must be a JSON object (content-type: application/json)"
    return ValidationError(f"{field}: {message}" if field else message, field=field or None)


def create_app(
    service: CoreService,
    *,
    rate_limit: int | None = None,
    clock: Callable[[], datetime] | None = None,
    require_signatures: bool = False,
    group_commit: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    auth_cache_seconds: float = 0.0,
    fast_lane: bool = True,
) -> FastAPI:
    """The v1 API over ``service``.

    ``rate_limit`` is requests per minute per API key (``None``: off).  ``clock`` (aware UTC
    datetimes) drives signature freshness and rate windows.  ``require_signatures`` makes
    signatures mandatory for every Space (a Space can also require them by itself).
    ``group_commit`` lets concurrent single-event requests share one transaction.
    ``auth_cache_seconds`` remembers successful key checks and Space signature settings that long
    (``perkbridge serve`` uses 1 s: a revocation then takes effect within a second).
    ``fast_lane`` answers the two hot routes (single events, customer reads) straight from the
    gate, with the same checks and answers, skipping the router's per-request overhead.
    """
    now_dt = clock or (lambda: datetime.now(UTC))
    writer = _EventWriter(service) if group_commit else None
    work = _Work(service, writer)
    meter = _RequestMeter(service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        meter.flush()
        if writer is not None:
            writer.close()

    app = FastAPI(
        title="Perkamo v1 API (perkbridge embedded core)",
        version="1.0.0",
        description="Perkamo-compatible v1 API served by `perkbridge serve` over the embedded core.",
        lifespan=lifespan,
        default_response_class=PerkamoJSONResponse,
        docs_url="/docs",
        redoc_url=None,
        strict_content_type=False,  # a body without content-type is still read as JSON
    )
    app.add_middleware(
        _Gate,  # type: ignore[arg-type]
        service=service,
        now=lambda: now_dt().timestamp(),
        limiter=FixedWindowLimiter(rate_limit) if rate_limit else None,
        require_signatures=require_signatures,
        max_body_bytes=max_body_bytes,
        meter=meter,
        auth_cache_seconds=auth_cache_seconds,
        fast_lane=work.fast_lane if fast_lane else None,
    )

    @app.exception_handler(CoreError)
    async def _core_error(_request: Request, exc: CoreError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400:
            detail = f"request body could not be read: {detail}"
        error = CoreError(detail, code=codes.get(exc.status_code, "http_error"))
        response = PerkamoJSONResponse(error_body(error), status_code=exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    writes = Depends(_scoped("events:write"))
    reads = Depends(_scoped("profile:read"))
    redeems = Depends(_scoped("rewards:redeem"))
    admin = Depends(_scoped("admin:config"))

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> PerkamoJSONResponse:
        """Liveness: the process answers."""
        return _ok({"status": "ok"})

    @app.post("/v1/identify", tags=["events"])
    async def identify(body: IdentifyBody, info: ApiKeyInfo = writes) -> PerkamoJSONResponse:
        """Create or update a customer's traits."""
        check_space(info, body.tenant, body.space)
        return _ok(service.identify(info.space, body.user_id, dict(body.traits or {})))

    @app.post("/v1/events", tags=["events"])
    async def events(body: EventBody, info: ApiKeyInfo = writes) -> PerkamoJSONResponse:
        """Ingest one activity event, idempotent on ``transaction_id``."""
        return _ok(await work.event(info, body))

    @app.post("/v1/events:batch", tags=["events"])
    async def events_batch(body: BatchBody, info: ApiKeyInfo = writes) -> PerkamoJSONResponse:
        """Ingest up to 100 events; results in input order, an invalid item fails alone."""
        check_space(info, body.tenant, body.space)
        for raw in body.events:
            if isinstance(raw, dict):
                check_space(info, _text_or_none(raw.get("tenant")), _text_or_none(raw.get("space")))
        parsed = parse_batch_items(body.events)
        valid = [(i, item) for i, item in enumerate(parsed) if isinstance(item, EventBody)]
        applied = service.ingest_bulk(info.space, [event_input(item) for _, item in valid]) if valid else []
        outcomes: list[IngestOutcome] = [
            IngestOutcome(None, item) if isinstance(item, CoreError) else IngestOutcome(None) for item in parsed
        ]
        for (index, _), outcome in zip(valid, applied, strict=True):
            outcomes[index] = outcome
        tx_ids = [_text_or_none(raw.get("transaction_id")) if isinstance(raw, dict) else None for raw in body.events]
        return _ok(batch_results(outcomes, tx_ids))

    @app.get("/v1/customer/{user_id:path}", tags=["customers"])
    async def customer(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_USER_ID)], info: ApiKeyInfo = reads
    ) -> PerkamoJSONResponse:
        """The server-authoritative customer."""
        return _ok(work.customer(info, user_id))

    @app.get("/v1/profile/{user_id:path}", tags=["customers"])
    async def profile(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_USER_ID)], info: ApiKeyInfo = reads
    ) -> PerkamoJSONResponse:
        """Legacy alias of ``GET /v1/customer/{user_id}`` (same body)."""
        return _ok(work.customer(info, user_id))

    @app.post("/v1/rewards/redeem", tags=["rewards"])
    async def redeem(body: RedeemBody, info: ApiKeyInfo = redeems) -> PerkamoJSONResponse:
        """Redeem a configured reward, idempotent on ``transaction_id``."""
        check_space(info, body.tenant, body.space)
        return _ok(service.redeem(info.space, body.user_id, body.reward_key, body.transaction_id))

    @app.get("/v1/program", tags=["program"])
    async def program(info: ApiKeyInfo = reads) -> PerkamoJSONResponse:
        """The Space's program blueprint, metrics and usage."""
        meter.flush()
        return _ok(service.program(info.space))

    @app.get("/v1/usage", tags=["program"])
    async def usage(info: ApiKeyInfo = reads) -> PerkamoJSONResponse:
        """Usage meters of the current billing period."""
        meter.flush()
        return _ok(service.usage(info.space))

    @app.post("/v1/admin/config/{module}", tags=["program"])
    async def admin_config(
        module: Annotated[str, Path(max_length=32)], body: ConfigBody, info: ApiKeyInfo = admin
    ) -> PerkamoJSONResponse:
        """Upload a versioned program module (events, leveling, wallets, perks, achievements, boosts)."""
        if module not in CONFIG_MODULES:
            raise ValidationError(
                f"unknown config module {module!r}: use one of {', '.join(CONFIG_MODULES)}",
                code="unknown_module",
                field="module",
            )
        return _ok(service.load_program_module(info.space, module, body.body, version=body.version, active=body.active))

    _document_errors(app)
    return app


def _ok(payload: Any) -> PerkamoJSONResponse:
    return PerkamoJSONResponse(payload)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["message", "code"],
    "properties": {"message": {"type": "string"}, "code": {"type": "string"}, "field": {"type": "string"}},
}


def _document_errors(app: FastAPI) -> None:
    """Replace FastAPI's 422 entries with this API's 400 and list the shared error answers."""
    schema = app.openapi()
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    statuses = {
        "400": "Invalid body or business rule",
        "401": "Missing or invalid API key, or a bad signature",
        "403": "API key does not match the Space or lacks the scope",
        "404": "Resource not found",
        "429": "Rate or usage limit exceeded",
    }
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if not path.startswith("/v1/"):
                continue
            for status, description in statuses.items():
                responses.setdefault(status, {"description": description, **error_ref})
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
