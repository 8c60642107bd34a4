"""Synchronous Perkamo v1 client that behaves like the official SDKs (PHP ``Perkamo\\Client``, JS ``createPerkamoClient``).

It signs every mutating request, validates events before sending (reserved context keys, field
limits), generates ``tx_…`` transaction ids when none is given, and retries network errors, 5xx
and 429 answers with the very same body (so the same transaction ids) while honouring
``retry-after``.  400, 401, 403 and 404 are never retried.  The API key never appears in errors,
logs or ``repr``.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from connectors.perkamo.errors import (
    PerkamoApiError,
    PerkamoConnectionError,
    PerkamoInputError,
    RateLimit,
)
from connectors.perkamo.signing import signature_headers

DEFAULT_BASE_URL = "https://api.perkamo.com"
API_KEY_HEADER = "x-perkamo-api-key"
MAX_BATCH = 100
MAX_USER_ID = 256
MAX_EVENT = 128
MAX_TRANSACTION_ID = 256
RESERVED_CONTEXT_KEYS = frozenset({"xp", "wallet", "wallets", "rewards", "level", "perks", "achievements"})
"""Top-level context keys the SDKs reject case-insensitively: Perkamo computes them."""

_log = logging.getLogger(__name__)


def new_transaction_id() -> str:
    """A fresh ``tx_`` + 32 hex characters id, as the PHP SDK generates."""
    return "tx_" + secrets.token_hex(16)


class PerkamoClient:
    """One Perkamo server key against one API base URL (hosted or ``perkbridge serve``)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 3,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise PerkamoInputError("a Perkamo server API key is required", field="api_key")
        if max_retries < 0:
            raise PerkamoInputError("max_retries must be 0 or more", field="max_retries")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"accept": "application/json", "user-agent": "perkbridge-perkamo/1"},
        )

    def __repr__(self) -> str:
        return f"PerkamoClient(base_url={self.base_url!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PerkamoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- API methods -------------------------------------------------------------------------

    def identify(self, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create or update a customer's traits (``POST /v1/identify``)."""
        _check_text(user_id, "user_id", MAX_USER_ID)
        if traits is not None and not isinstance(traits, Mapping):
            raise PerkamoInputError("traits must be a JSON object", field="traits")
        _check_json_value(dict(traits or {}), "traits")
        payload = {"user_id": user_id, "traits": dict(traits or {})}
        return self._send("POST", "/v1/identify", payload)

    def emit(
        self,
        user_id: str,
        event: str,
        context: Mapping[str, Any] | None = None,
        transaction_id: str | None = None,
        occurred_at: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Ingest one event (``POST /v1/events``); a ``tx_…`` id is generated when none is given."""
        payload = self._event_payload(
            {
                "user_id": user_id,
                "event": event,
                "context": context,
                "transaction_id": new_transaction_id() if transaction_id is None else transaction_id,
                "occurred_at": occurred_at,
            },
            field_prefix="",
        )
        return self._send("POST", "/v1/events", payload)

    def batch(self, events: Sequence[Mapping[str, Any] | object]) -> dict[str, Any]:
        """Ingest up to 100 events in one request (``POST /v1/events:batch``).

        Each event (a mapping, or an object with ``user_id``, ``event``, ``transaction_id``,
        ``context`` and ``occurred_at`` attributes) needs its own explicit ``transaction_id``.
        The answer's ``results`` are in input order; an invalid item gets an error entry.
        """
        items = list(events)
        if not items:
            raise PerkamoInputError("a batch needs at least one event", field="events")
        if len(items) > MAX_BATCH:
            raise PerkamoInputError(
                f"a batch holds at most {MAX_BATCH} events, got {len(items)}", field="events"
            )
        payload_events = []
        for index, item in enumerate(items):
            raw = _as_event_mapping(item)
            if not raw.get("transaction_id"):
                raise PerkamoInputError(
                    f"events[{index}] needs an explicit transaction_id",
                    field=f"events[{index}].transaction_id",
                )
            payload_events.append(self._event_payload(raw, field_prefix=f"events[{index}]."))
        return self._send("POST", "/v1/events:batch", {"events": payload_events})

    def customer(self, user_id: str) -> dict[str, Any]:
        """The server-authoritative customer (``GET /v1/customer/{user_id}``)."""
        _check_text(user_id, "user_id", MAX_USER_ID)
        return self._send("GET", f"/v1/customer/{quote(user_id, safe='')}")

    def program(self) -> dict[str, Any]:
        """The Space's active program blueprint, metrics and usage (``GET /v1/program``)."""
        return self._send("GET", "/v1/program")

    def event_catalog(self) -> list[dict[str, Any]]:
        """The configured earning rules: ``program()["blueprint"]["earningRules"]``."""
        blueprint = self.program().get("blueprint")
        rules = blueprint.get("earningRules") if isinstance(blueprint, dict) else None
        return list(rules) if isinstance(rules, list) else []

    def redeem(
        self, user_id: str, reward_key: str, transaction_id: str | None = None
    ) -> dict[str, Any]:
        """Redeem a configured reward (``POST /v1/rewards/redeem``), idempotent on ``transaction_id``."""
        _check_text(user_id, "user_id", MAX_USER_ID)
        _check_text(reward_key, "reward_key", MAX_EVENT)
        if transaction_id is None:
            transaction_id = new_transaction_id()
        _check_text(transaction_id, "transaction_id", MAX_TRANSACTION_ID)
        payload = {"user_id": user_id, "reward_key": reward_key, "transaction_id": transaction_id}
        return self._send("POST", "/v1/rewards/redeem", payload)

    def usage(self) -> dict[str, Any]:
        """The Space's usage meters for the current billing period (``GET /v1/usage``)."""
        return self._send("GET", "/v1/usage")

    # -- internals ---------------------------------------------------------------------------

    def _event_payload(self, raw: Mapping[str, Any], *, field_prefix: str) -> dict[str, Any]:
        user_id = raw.get("user_id")
        event = raw.get("event")
        transaction_id = raw.get("transaction_id")
        _check_text(user_id, f"{field_prefix}user_id", MAX_USER_ID)
        _check_text(event, f"{field_prefix}event", MAX_EVENT)
        _check_text(transaction_id, f"{field_prefix}transaction_id", MAX_TRANSACTION_ID)
        context = raw.get("context")
        if context is None:
            context = {}
        if not isinstance(context, Mapping):
            raise PerkamoInputError("context must be a JSON object", field=f"{field_prefix}context")
        check_context(context, field=f"{field_prefix}context")
        return {
            "user_id": user_id,
            "event": event,
            "transaction_id": transaction_id,
            "context": dict(context),
            "occurred_at": self._timestamp(raw.get("occurred_at"), f"{field_prefix}occurred_at"),
        }

    def _timestamp(self, value: Any, field: str) -> str:
        if value is None:
            value = datetime.fromtimestamp(self._clock(), UTC)
        if isinstance(value, str):
            if not value.strip():
                raise PerkamoInputError("occurred_at must not be empty", field=field)
            return value
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise PerkamoInputError("occurred_at must be timezone-aware", field=field)
            text = value.astimezone(UTC).isoformat(timespec="milliseconds")
            return text.replace("+00:00", "Z")
        raise PerkamoInputError("occurred_at must be a datetime or an ISO-8601 string", field=field)

    def _send(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = b"" if payload is None else _encode(payload)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            request = self._build(method, path, body)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                # A URL that cannot be requested (PERKAMO_BASE_URL) never succeeds on a retry.
                if attempt >= attempts or isinstance(exc, httpx.UnsupportedProtocol):
                    raise PerkamoConnectionError(
                        f"Perkamo API unreachable for {method} {path} after {attempt} attempts: "
                        f"{type(exc).__name__}",
                        method=method,
                        path=path,
                        attempts=attempt,
                    ) from None
                delay = self._backoff(attempt)
                _log.warning(
                    "perkamo %s %s failed (%s); retry %d/%d in %.2fs",
                    method, path, type(exc).__name__, attempt, self.max_retries, delay,
                )
                self._sleep(delay)
                continue
            if response.is_success:
                return _decode_success(response, method, path)
            error = _api_error(response, method, path, self._clock)
            if not error.retriable or attempt >= attempts:
                raise error
            delay = self._backoff(attempt, error.retry_after)
            _log.warning(
                "perkamo %s %s answered %d (request %s); retry %d/%d in %.2fs",
                method, path, error.status, error.request_id, attempt, self.max_retries, delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _build(self, method: str, path: str, body: bytes) -> httpx.Request:
        headers = {API_KEY_HEADER: self._api_key}
        if body:
            headers["content-type"] = "application/json"
        request = self._http.build_request(method, path, content=body or None, headers=headers)
        if method != "GET":
            signed_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
            request.headers.update(
                signature_headers(self._api_key, int(self._clock()), method, signed_path, body)
            )
        return request

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self._max_retry_after)
        return float(min(self._backoff_base * (2 ** (attempt - 1)), self._backoff_max))


# -- validation and encoding ------------------------------------------------------------------


def _check_text(value: Any, field: str, limit: int) -> None:
    if not isinstance(value, str) or not value:
        raise PerkamoInputError(f"{field} must be a non-empty string", field=field)
    if len(value) > limit:
        raise PerkamoInputError(f"{field} is longer than {limit} characters", field=field)


def check_context(context: Mapping[str, Any], *, field: str = "context") -> None:
    """Reject reserved top-level keys (case-insensitively), empty keys and non-JSON values."""
    for key, value in context.items():
        if not isinstance(key, str) or not key:
            raise PerkamoInputError("context keys must be non-empty strings", field=field)
        if key.lower() in RESERVED_CONTEXT_KEYS:
            raise PerkamoInputError(
                f"context key {key!r} is reserved: Perkamo computes it from the program rules",
                field=f"{field}.{key}",
            )
        _check_json_value(value, f"{field}.{key}")


def _check_json_value(value: Any, field: str) -> None:
    if value is None or isinstance(value, (str, bool, int, Decimal)):
        if isinstance(value, Decimal) and not value.is_finite():
            raise PerkamoInputError("numbers must be finite", field=field)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PerkamoInputError("numbers must be finite", field=field)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PerkamoInputError("object keys must be strings", field=field)
            _check_json_value(item, f"{field}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(item, f"{field}[{index}]")
        return
    raise PerkamoInputError(f"{type(value).__name__} is not a JSON value", field=field)


def _as_event_mapping(item: Mapping[str, Any] | object) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    names = ("user_id", "event", "transaction_id", "context", "occurred_at")
    return {name: getattr(item, name, None) for name in names}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(payload: Mapping[str, Any]) -> bytes:
    text = json.dumps(payload, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _decode_success(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        raise PerkamoApiError(
            response.status_code,
            response.text[:500],
            _request_id(response),
            method=method,
            path=path,
        ) from None
    if not isinstance(body, dict):
        return {"data": body}
    return body


def _request_id(response: httpx.Response) -> str | None:
    value = response.headers.get("x-perkamo-request-id") or response.headers.get("x-request-id")
    return None if value is None else str(value)


def _header_int(response: httpx.Response, name: str) -> int | None:
    raw = response.headers.get(name) or response.headers.get(f"x-{name}")
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def _rate_limit(response: httpx.Response) -> RateLimit | None:
    limit = _header_int(response, "ratelimit-limit")
    remaining = _header_int(response, "ratelimit-remaining")
    reset = response.headers.get("ratelimit-reset") or response.headers.get("x-ratelimit-reset")
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset=reset)


def _retry_after(response: httpx.Response, clock: Callable[[], float]) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - clock())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _api_error(
    response: httpx.Response, method: str, path: str, clock: Callable[[], float]
) -> PerkamoApiError:
    body: Any
    try:
        body = json.loads(response.content, parse_float=Decimal) if response.content else None
    except ValueError:
        body = response.text[:500]
    return PerkamoApiError(
        response.status_code,
        body,
        _request_id(response),
        _retry_after(response, clock),
        _rate_limit(response),
        method=method,
        path=path,
    )
