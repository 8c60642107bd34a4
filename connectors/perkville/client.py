"""``PerkvilleClient``: authenticated, paced, retried access to Perkville v2 returning raw JSON pages."""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC
from typing import Any
from urllib.parse import urljoin

import httpx

from connectors.perkville.auth import Redactor, TokenSource, with_retries
from connectors.perkville.datetimes import to_tzinfo
from connectors.perkville.duplicates import RecordedAnswer
from connectors.perkville.errors import (
    AuthError,
    ConfigurationError,
    InvalidPageError,
    NotFound,
    PerkvilleHTTPError,
    RequestRejected,
    RetryBudgetExhausted,
)
from connectors.perkville.guard import (
    StreamGuard,
    apply_guard,
    filter_warning,
    guard_for,
    order_warning,
)
from connectors.perkville.jsonbody import decode_json
from connectors.perkville.overlap import OverlappedReader, overlap_plan
from connectors.perkville.pacing import Backoff, RequestBudget, parse_retry_after
from connectors.perkville.paging import ID_FIELDS, OffsetPaginator, Page, PageRequest, sanitize_path
from connectors.perkville.reads import ReadMethods
from connectors.perkville.schema import ApiSchema, sendable
from connectors.perkville.writes import Answer, WriteMethods, check_field_name

log = logging.getLogger("connectors.perkville")

USER_AGENT = "perkbridge-perkville-connector/0.1 (+https://perkamo.com)"



class PerkvilleClient(ReadMethods, WriteMethods):
    """Perkville v2 client: password grant or given token, paging, rate limit, retries, writes.

    Reads yield raw ``Page``s (``objects`` exactly as Perkville sent them, after client-side guards);
    parsing them into records is the mapping package's job.
    """

    def __init__(
        self,
        api_url: str,
        token_url: str,
        client_id: str | None = None,
        client_secret: object = None,
        username: str | None = None,
        password: object = None,
        access_token: object = None,
        scope: str | None = None,
        page_size: int = 1000,
        requests_per_second: float | None = 10.0,
        max_retries: int = 6,
        timeout: float = 30.0,
        timezone: str = "UTC",
        transport: httpx.BaseTransport | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        external_members_path: str = "external-members/",
        user_agent: str = USER_AGENT,
        max_in_flight: int = 4,
        start_rate: float | None = None,
        external_member_field: str = "external_member_id",
        duplicate_answers: Sequence[RecordedAnswer] = (),
        is_duplicate: Callable[[int, Any], bool] | None = None,
    ) -> None:
        if page_size < 1:
            raise ConfigurationError("page_size must be at least 1")
        if max_in_flight < 1:
            raise ConfigurationError("max_in_flight must be at least 1")
        if max_retries < 0:
            raise ConfigurationError("max_retries must not be negative")
        try:
            self.tz = to_tzinfo(timezone)
        except ValueError as exc:
            raise ConfigurationError(f"PERKVILLE_TIMEZONE: {exc}") from None
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.page_size = page_size
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._sleep = sleep or time.sleep
        self._clock = clock or time.time
        self._backoff = Backoff(base=backoff_base, cap=backoff_max, rng=rng)
        self.max_in_flight = max_in_flight
        # One budget for every request of this client, whichever thread sends it.
        self.budget = RequestBudget(requests_per_second, start=start_rate, clock=self._clock, sleep=self._sleep)
        self._auth_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._redact = Redactor()
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        # One TLS context for the API client and every token client: each would otherwise load
        # certifi's CA bundle again (~20 ms of CPU). The same strict verification as httpx's
        # default (it is httpx's default); a given transport brings its own.
        verify: ssl.SSLContext | bool = httpx.create_ssl_context() if transport is None else True
        self._auth = TokenSource(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            username=username,
            password=password,
            access_token=access_token,
            scope=scope,
            timeout=timeout,
            transport=transport,
            verify=verify,
            headers=headers,
            redact=self._redact,
        )
        if not self._auth.given_token and not self._auth.can_grant:
            raise ConfigurationError(
                "Perkville credentials missing: give an access token, or client id, client secret, "
                "username and password for the password grant"
            )
        self._http = httpx.Client(
            transport=transport,
            verify=verify,
            timeout=timeout,
            headers=headers,
            event_hooks={"request": [lambda _request: self.budget.on_wire()]},
        )
        self._external_members_path = external_members_path
        self.external_member_field = check_field_name(external_member_field)
        # The seam for ``perkbridge probe``: answers it recorded to a repeated trans_source_id, and
        # any extra test, count as "already recorded" (``connectors.perkville.duplicates``).
        self.duplicate_answers = tuple(duplicate_answers)
        self.is_duplicate = is_duplicate
        self._external_members_enabled = True
        self._warned: set[str] = set()
        self._schema: ApiSchema | None = None
        self.stats = {"requests": 0, "retries": 0, "reauths": 0, "dropped_rows": 0, "throttled": 0,
                      # Answers by status class (a request lost to the network has none).
                      "status_2xx": 0, "status_3xx": 0, "status_4xx": 0, "status_5xx": 0}

    # ----------------------------------------------------------------- lifecycle and auth
    def __repr__(self) -> str:
        return f"PerkvilleClient(api_url={self.api_url!r}, client_id={self._auth.client_id!r})"

    def __enter__(self) -> PerkvilleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def authenticate(self) -> frozenset[str] | None:
        """Obtain a token now (password grant) unless one was given; returns the granted scopes."""
        if self._auth.token is None:
            self._obtain_token()
        return self._auth.granted_scopes

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        """Scopes Perkville granted with the token; None when unknown (a given token, or not reported)."""
        return self._auth.granted_scopes

    def check_scopes(self, required: Iterable[str]) -> frozenset[str]:
        """Warn (log) about required scopes the token lacks; returns the missing ones (empty if unknown)."""
        needed = frozenset(required)
        granted = self._auth.granted_scopes
        if granted is None:
            log.info(
                "perkville: granted scopes are unknown (given token); cannot check for %s",
                " ".join(sorted(needed)),
            )
            return frozenset()
        missing = needed - granted
        if missing:
            log.warning(
                "perkville: the token lacks scope(s) %s needed for this task (granted: %s); "
                "ask api@perkville.com to grant them to the API client",
                " ".join(sorted(missing)),
                " ".join(sorted(granted)) or "none",
            )
        return missing

    def _obtain_token(self) -> None:
        with_retries(
            self._auth.obtain,
            attempts=self.max_retries,
            delay=self._backoff.delay,
            sleep=self._sleep,
        )

    # ----------------------------------------------------------------- the request loop
    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.api_url, path)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """One API call with pacing, retries and one re-authentication; returns the decoded JSON (or None)."""
        return self.send(method, path, params=params, body=body).payload

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
    ) -> Answer:
        """``request``, also returning the answer's ``Location`` header; ``max_retries`` overrides
        the client's retry budget for this call."""
        url = self._url(path)
        spath = sanitize_path(url)
        limit = self.max_retries if max_retries is None else max_retries
        reauthed = False
        failures = 0
        budget = self.budget
        while True:
            with self._auth_lock:
                if self._auth.token is None:
                    self._obtain_token()
                authorization = self._auth.authorization()
            ticket = budget.acquire()
            self._count("requests")
            try:
                response = self._http.request(
                    method,
                    url,
                    params=dict(params) if params else None,
                    json=dict(body) if body is not None else None,
                    headers={"Authorization": authorization},
                )
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ConfigurationError(
                    f"PERKVILLE_API_URL cannot be requested ({type(exc).__name__}); "
                    "give an http(s) URL such as https://api.perkville.com/v2/"
                ) from None
            except httpx.TransportError as exc:
                budget.troubled(ticket)
                failures = self._retry(
                    failures, method, spath, f"network error ({type(exc).__name__})", None, limit=limit
                )
                continue
            status = response.status_code
            if 200 <= status < 600:
                self._count(f"status_{status // 100}xx")
            if status == 401:
                if reauthed:
                    raise AuthError(
                        f"Perkville answered 401 on {method} {spath} even after re-authenticating; "
                        "check the staff account's access to this business and the token's scopes"
                    )
                self._reauthenticate(authorization, method, spath)
                reauthed = True
                continue
            if status == 429 or status >= 500:
                wait = parse_retry_after(
                    response.headers.get("Retry-After"), now=_server_now(response) or self._clock()
                )
                if status == 429:
                    self._count("throttled")
                    pause = min(wait, self.max_retry_after) if wait is not None else self._backoff.delay(failures)
                    # The budget pauses every sender until the server's Retry-After has passed.
                    failures = self._retry(
                        failures, method, spath, "HTTP 429", pause, paused=True, limit=limit
                    )
                    budget.throttled_for(ticket, pause)
                    continue
                budget.troubled(ticket)
                failures = self._retry(failures, method, spath, f"HTTP {status}", wait, limit=limit)
                continue
            if status >= 400:
                raise self._http_error(method, spath, response)
            budget.succeeded(ticket, self._clock() - ticket)
            location = response.headers.get("Location") or None
            if status == 204 or not response.content:
                return Answer(None, location)
            try:
                return Answer(decode_json(response.content), location)
            except ValueError:
                failures = self._retry(
                    failures, method, spath, "truncated or invalid JSON body", None, invalid=True, limit=limit
                )

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += amount

    def _reauthenticate(self, rejected: str, method: str, spath: str) -> None:
        """Get a new token after a 401, once for all the threads that sent the rejected one."""
        with self._auth_lock:
            if self._auth.token is not None and self._auth.authorization() != rejected:
                return  # another thread already replaced it
            if not self._auth.can_grant:
                self._auth.invalidate()
                self._auth.obtain()  # raises the AuthError that says what to check
            log.warning("perkville: token rejected on %s %s (401); re-authenticating once", method, spath)
            self._count("reauths")
            self._auth.invalidate()
            self._obtain_token()

    def _retry(
        self,
        failures: int,
        method: str,
        spath: str,
        reason: str,
        retry_after: float | None,
        *,
        invalid: bool = False,
        paused: bool = False,
        limit: int | None = None,
    ) -> int:
        limit = self.max_retries if limit is None else limit
        if failures >= limit:
            kind = InvalidPageError if invalid else RetryBudgetExhausted
            raise kind(
                f"{method} {spath} failed {failures + 1} time(s), last: {reason}; the retry budget "
                f"({limit} retries) is spent. Perkville may be down or throttling; rerun later",
                path=spath,
                attempts=failures + 1,
                last_error=reason,
            )
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
        else:
            wait = self._backoff.delay(failures)
        log.info("perkville: %s %s: %s; retry %d in %.2fs", method, spath, reason, failures + 1, wait)
        self._count("retries")
        if not paused:
            self._sleep(wait)
        return failures + 1

    def _http_error(self, method: str, spath: str, response: httpx.Response) -> PerkvilleHTTPError:
        status = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        code = _error_code(body)
        detail = f" ({code})" if code else ""
        if status == 404:
            return NotFound(f"{method} {spath}: not found (404)", status=status, path=spath, body=body)
        if status == 403:
            return PerkvilleHTTPError(
                self._redact(
                    f"{method} {spath}: forbidden (403){detail}; check that the staff account manages "
                    f"this business and the token has the needed scopes (granted: "
                    f"{' '.join(sorted(self._auth.granted_scopes or [])) or 'unknown'})"
                ),
                status=status,
                path=spath,
                body=body,
                error_code=code,
            )
        kind = RequestRejected if status in (400, 409, 422) else PerkvilleHTTPError
        return kind(
            self._redact(f"{method} {spath}: rejected with HTTP {status}{detail}"),
            status=status,
            path=spath,
            body=body,
            error_code=code,
        )

    # ----------------------------------------------------------------- paging
    def iter_pages(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
        _guard: StreamGuard | None = None,
    ) -> Iterator[Page]:
        """Yield every page of a list endpoint in offset order.

        With ``max_in_flight`` > 1 and a list that reports ``meta.total_count``, several offsets
        are requested at once (``connectors.perkville.overlap``); otherwise one page at a time,
        following ``meta.next`` or advancing ``offset``. The guard sees the pages in order.
        """
        resource = path.strip("/").split("/")[-1]
        guard = _guard or self._guard_for(resource, params or {})
        url = self._url(path)
        spath = sanitize_path(url)
        params = self._sendable(resource, params or {}, spath)
        for offset, payload, repeated in self._payloads(url, params, page_size or self.page_size, resource):
            objects = [row for row in payload.get("objects", []) if isinstance(row, Mapping)]
            kept, dropped = self._apply_guard(guard, objects, spath)
            meta = payload.get("meta")
            yield Page(
                objects=kept,
                meta=dict(meta) if isinstance(meta, Mapping) else {},
                path=spath,
                offset=offset,
                dropped=dropped,
                ordered=guard.ordered,
                repeated=repeated,
            )

    def _payloads(
        self, url: str, params: Mapping[str, Any] | None, page_size: int, resource: str
    ) -> Iterator[tuple[int, Mapping[str, Any], int]]:
        """``(offset, decoded page, rows dropped as already read)`` of one list, in offset order."""
        paginator = OffsetPaginator(url, params, page_size=page_size)
        first = paginator.first_request
        first_offset = paginator.current_offset()
        payload = self._get_page(first)
        if self.max_in_flight > 1 and overlap_plan(payload) is not None:
            base = dict(first.params)

            def fetch(offset: int, limit: int) -> Mapping[str, Any]:
                return self._get_page(PageRequest(url, {**base, "offset": str(offset), "limit": str(limit)}))

            def follow(offset: int, limit: int) -> Iterator[tuple[int, Mapping[str, Any]]]:
                start = {**base, "offset": str(offset), "limit": str(limit)}
                return self._sequential(OffsetPaginator(url, start, page_size=limit))

            reader = OverlappedReader(
                fetch, follow, id_field=ID_FIELDS.get(resource, "id"), max_in_flight=self.max_in_flight
            )
            yield from reader.read(first_offset, payload)
            return
        for offset, page in self._sequential(paginator, payload):
            yield offset, page, 0

    def _sequential(
        self, paginator: OffsetPaginator, payload: Mapping[str, Any] | None = None
    ) -> Iterator[tuple[int, Mapping[str, Any]]]:
        """One page at a time from the paginator's current request (``payload``: its answer, if read)."""
        request: PageRequest | None = paginator.first_request
        while request is not None:
            offset = paginator.current_offset()
            if payload is None:
                payload = self._get_page(request)
            request = paginator.next_request(payload)
            yield offset, payload
            payload = None

    def _get_page(self, request: PageRequest) -> Mapping[str, Any]:
        payload = self.request("GET", request.url, params=request.params or None)
        if not isinstance(payload, Mapping):
            raise InvalidPageError(
                f"GET {sanitize_path(request.url)} did not return a JSON object",
                path=sanitize_path(request.url),
                attempts=1,
                last_error="not an object",
            )
        return payload

    def use_schema(self, schema: ApiSchema | None) -> None:
        """What ``perkbridge probe`` found: filters and orderings a resource does not list are
        not sent; the stream guard applies them to the rows instead (one warning each)."""
        self._schema = schema

    def allows_filter(self, resource: str, param: str) -> bool | None:
        """Whether the probed schema lists ``param`` on ``resource`` (None: no schema known)."""
        return None if self._schema is None else self._schema.allows_filter(resource, param)

    def _sendable(self, resource: str, params: Mapping[str, Any], spath: str) -> dict[str, Any]:
        schema = self._schema.of(resource) if self._schema is not None else None
        sent, withheld = sendable(schema, params)
        for name in withheld:
            # The guard's own keys: its later "the server ignored ..." warning stays silent.
            ordering = name.startswith("order_by=")
            key = order_warning(spath) if ordering else filter_warning(spath, name.split("__")[0])
            self._warn_once(
                key,
                "perkville: the API's schema lists no %s on %s; not sending it, and %s on the client",
                name,
                spath,
                "sorting each page" if name.startswith("order_by=") else "filtering the rows",
            )
        return sent

    def _guard_for(self, resource: str, params: Mapping[str, Any]) -> StreamGuard:
        return guard_for(params, self.tz, ID_FIELDS.get(resource, "id"))

    def _apply_guard(
        self, guard: StreamGuard, objects: list[Mapping[str, Any]], spath: str
    ) -> tuple[list[dict[str, Any]], int]:
        kept, dropped = apply_guard(guard, objects, spath, self.tz, self._warn_once)
        if dropped:
            self._count("dropped_rows", dropped)
        return kept, dropped

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(message, *args)


# --------------------------------------------------------------------- helpers
def _server_now(response: httpx.Response) -> float | None:
    """The server's ``Date`` (epoch seconds), so an HTTP-date ``Retry-After`` is read on the
    server's own clock: a server whose clock is off still gets waited for as long as it asked."""
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(response.headers.get("Date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _error_code(body: Any) -> str | None:
    """The first error code in a Perkville error body (``errors.<field>[].code`` or ``error``)."""
    if not isinstance(body, Mapping):
        return None
    if isinstance(body.get("error"), str):
        return str(body["error"])
    errors = body.get("errors")
    if isinstance(errors, Mapping):
        for items in errors.values():
            for item in items if isinstance(items, list) else [items]:
                if isinstance(item, Mapping) and isinstance(item.get("code"), str):
                    return str(item["code"])
    if isinstance(body.get("error_type"), str):
        return str(body["error_type"])
    return None
