"""The gate in front of every route: request ids, API keys, rate limits, body size, signatures, meters.

For ``/v1/*`` it checks, in this order: the API key (401), the per-key rate limit (429), the body
size (400) and the request signature (401).  It never lets an exception escape as a bare 500: any
failure becomes a ``{"message", "code"}`` answer that still carries ``x-perkamo-request-id``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers

from perkamo_core.api.errors import BodyTooLarge
from perkamo_core.api.ratelimit import FixedWindowLimiter, RateDecision
from perkamo_core.api.responses import ASGIApp, Message, PerkamoJSONResponse, Receive, Scope, Send, send_error
from perkamo_core.api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from perkamo_core.errors import AuthenticationError, CoreError, NotFoundError, RateLimitedError
from perkamo_core.models import ApiKeyInfo

if TYPE_CHECKING:
    from perkamo_core.service import CoreService

API_KEY_HEADER = "x-perkamo-api-key"
REQUEST_ID_HEADER = "x-perkamo-request-id"
DEFAULT_MAX_BODY_BYTES = 1 << 20
STATE_KEY = "perkamo_key"
"""Where the gate leaves the authenticated ``ApiKeyInfo`` in the ASGI scope's ``state``."""

_log = logging.getLogger(__name__)

FastLane = Callable[[Scope, ApiKeyInfo, bytes], Awaitable[PerkamoJSONResponse | None]]


class AuthCache:
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


class RequestIds:
    """``req_`` ids: a random per-process prefix and a counter (unique, cheap to make)."""

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(6)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


class Gate:
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
        meter: RequestMeter,
        auth_cache_seconds: float,
        fast_lane: FastLane | None,
    ) -> None:
        self.fast_lane = fast_lane
        self.app = app
        self.meter = meter
        self.auth = AuthCache(service, auth_cache_seconds)
        self.request_ids = RequestIds()
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
                receive = replay(body)
            await self.app(scope, receive, send_with_headers)
        except CoreError as exc:
            if started:
                raise
            await send_error(send_with_headers, exc)
        except Exception:
            _log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            await send_error(send_with_headers, CoreError("internal server error; retry with the same transaction id"))

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
                raise rate_limited(decision)
        body = await read_body(receive, headers, self.max_body_bytes)
        signature = headers.get(SIGNATURE_HEADER)
        mutating = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if signature is not None or (mutating and self._signatures_required(info)):
            verify_signature(
                api_key,
                timestamp=headers.get(TIMESTAMP_HEADER),
                signature=signature,
                method=scope["method"],
                path=signed_path(scope),
                body=body,
                now=now,
            )
        scope.setdefault("state", {})[STATE_KEY] = info
        return info, body

    def _signatures_required(self, info: ApiKeyInfo) -> bool:
        return self.require_signatures or self.auth.require_signatures(info.space)


def rate_limited(decision: RateDecision) -> RateLimitedError:
    return RateLimitedError(
        f"Rate limit exceeded: {decision.limit} requests per minute for this API key",
        retry_after=decision.retry_after,
    )


def signed_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.split(b"?", 1)[0].decode("latin-1")
    return str(scope["path"])


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class RequestMeter:
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
            except Exception as exc:  # the database is busy or down: keep the count for the next flush
                self._counts[space] = self._counts.get(space, 0) + count
                _log.warning("could not record %d requests for Space %s yet: %s", count, space, type(exc).__name__)
