"""The JSON answers of the v1 API: Decimal-aware rendering and the ``{"message", "code"}`` errors."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi.responses import JSONResponse

from perkamo_core.errors import CoreError, RateLimitedError, ValidationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(payload: Any) -> bytes:
    """Compact JSON with Decimals as numbers and datetimes as ISO-8601 ``Z`` strings.

    Text that UTF-8 cannot carry (a lone surrogate echoed from input) is written as ``\\u``
    escapes instead of failing the answer.
    """
    text = json.dumps(payload, default=_json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, default=_json_default, separators=(",", ":"), allow_nan=False).encode("ascii")


class PerkamoJSONResponse(JSONResponse):
    """A JSON answer rendered with ``dumps``."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_body(error: CoreError) -> dict[str, Any]:
    """The wire body of an error: ``{"message", "code"}`` plus ``field``/``path`` when known."""
    return error.to_dict()


async def send_error(send: Send, error: CoreError) -> None:
    """Send ``error`` as a whole answer on a raw ASGI ``send``."""
    response = error_response(error)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def error_response(error: CoreError) -> PerkamoJSONResponse:
    """The answer for a typed core error: its status (a 429 adds ``retry-after``) and body."""
    headers: dict[str, str] = {}
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    status = error.status if 400 <= error.status < 600 else 500
    return PerkamoJSONResponse(error_body(error), status_code=status, headers=headers)


def validation_error(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> ValidationError:
    """A 400 ``ValidationError`` naming the first pydantic error's field (``prefix`` for batch items)."""
    if not errors:
        return ValidationError("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "malformed JSON")
        return ValidationError(f"request body is not valid JSON: {detail}", code="invalid_json")
    location = list(first.get("loc", ()))
    if location and location[0] in ("body", "path", "query", "header"):
        location = location[1:]  # FastAPI's "where": only the first part (a field may be named "body")
    field = error_location(location)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not field:
        message = "the request body must be a JSON object (content-type: application/json)"
    return ValidationError(f"{field}: {message}" if field else message, field=field or None)


def error_location(parts: Sequence[Any]) -> str:
    """A pydantic error location as a path: ``("wallets", 0, "name")`` becomes ``wallets[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
