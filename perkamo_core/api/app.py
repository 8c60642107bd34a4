"""The Perkamo v1 HTTP API over the embedded core's service: ``create_app(service, ...)``.

One pure-ASGI gate (``gate.py``) in front of the routes gives every answer an
``x-perkamo-request-id`` and, for ``/v1/*``, checks in this order: the API key (401), the per-key rate limit (429), the body size
(400) and the request signature (401; verified over the raw body bytes whenever sent, and
mandatory for mutating requests when the server or the key's Space requires it; the SDKs sign
only requests with a body).  The routes then check the key's scope and any body
``tenant``/``space`` (403), validate the body strictly (400) and call the service, whose typed
errors become ``{"message", "code"}`` answers with their status.  No client input yields a 5xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from perkamo_core.api.gate import API_KEY_HEADER, DEFAULT_MAX_BODY_BYTES, STATE_KEY, Gate, RequestMeter
from perkamo_core.api.ratelimit import FixedWindowLimiter
from perkamo_core.api.responses import (
    PerkamoJSONResponse,
    Scope,
    error_body,
    error_response,
    validation_error,
)
from perkamo_core.api.schemas import (
    BatchBody,
    ConfigBody,
    EventBody,
    IdentifyBody,
    RedeemBody,
    check_text,
)
from perkamo_core.api.writer import EventWriter
from perkamo_core.errors import (
    AuthenticationError,
    CoreError,
    PermissionDeniedError,
    ValidationError,
)
from perkamo_core.models import MAX_USER_ID, ApiKeyInfo, EventInput, IngestOutcome

if TYPE_CHECKING:
    from perkamo_core.service import CoreService

CONFIG_MODULES = ("events", "leveling", "wallets", "perks", "achievements", "boosts")

_EVENT_ADAPTER = TypeAdapter(EventBody)


def batch_results(items: Sequence[IngestOutcome], transaction_ids: Sequence[str | None]) -> dict[str, Any]:
    """The ``POST /v1/events:batch`` answer: one entry per input item, in input order.

    A valid item's entry is its event result.  A refused one's is a full event result that
    changed nothing (``applied: false``, ``duplicate: false``, empty ``delta``/``unlocked``,
    ``wallet_state: {}``, ``level: null``: the official SDKs parse every item as a result) plus
    its ``transaction_id`` and ``error: {"message", "code", "field"?}``; it reveals no state.
    """
    results: list[dict[str, Any]] = []
    for outcome, transaction_id in zip(items, transaction_ids, strict=True):
        if outcome.error is not None or outcome.result is None:
            error = outcome.error or CoreError("the event was not processed")
            results.append({**_NOTHING_APPLIED, "transaction_id": transaction_id, "error": error_body(error)})
        else:
            results.append(outcome.result)
    return {"results": results}


_NOTHING_APPLIED: dict[str, Any] = {
    "applied": False, "duplicate": False, "delta": [], "leveled_up": False, "unlocked": [],
    "wallet_state": {}, "level": None,
}


# -- routes ------------------------------------------------------------------------------------


class _Work:
    """What the hot routes do, shared by the FastAPI operations and the gate's fast lane."""

    def __init__(self, service: CoreService, writer: EventWriter | None) -> None:
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
        try:
            check_text(user_id)
        except ValueError as exc:
            raise ValidationError(f"user_id: {exc}", field="user_id") from None
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
                raise validation_error(exc.errors()) from None
            return PerkamoJSONResponse(await self.event(info, parsed))
        if method == "GET" and path.startswith(("/v1/customer/", "/v1/profile/")):
            user_id = path.split("/", 3)[3]
            if 0 < len(user_id) <= MAX_USER_ID:
                require_scope(info, "profile:read")
                return PerkamoJSONResponse(self.customer(info, user_id))
        return None


_api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Server API key (sk_test_… / sk_live_…)")


def _key_info(request: Request) -> ApiKeyInfo:
    info = request.scope.get("state", {}).get(STATE_KEY)
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
            parsed.append(validation_error(exc.errors(), prefix=f"events[{index}]"))
    return parsed


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
    writer = EventWriter(service) if group_commit else None
    work = _Work(service, writer)
    meter = RequestMeter(service)

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
        Gate,
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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

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
    """``value`` when it is text that can be echoed back and stored, else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        return check_text(value)
    except ValueError:
        return None


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
        "409": "transaction_id reused for another payload, or concurrent writers kept colliding",
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
