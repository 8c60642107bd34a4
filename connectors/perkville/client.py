"""``PerkvilleClient``: authenticated, paced, retried access to Perkville v2 returning raw JSON pages."""

from __future__ import annotations

import json
import logging
import operator
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice
from typing import Any
from urllib.parse import urljoin

import httpx

from connectors.perkville.auth import Redactor, TokenSource, with_retries
from connectors.perkville.datetimes import format_filter_datetime, parse_perkville_datetime, to_tzinfo
from connectors.perkville.errors import (
    AuthError,
    ConfigurationError,
    InvalidPageError,
    NotFound,
    PerkvilleHTTPError,
    RequestRejected,
    RetryBudgetExhausted,
)
from connectors.perkville.pacing import Backoff, TokenBucket, parse_retry_after
from connectors.perkville.paging import OffsetPaginator, Page, PageRequest, sanitize_path

log = logging.getLogger("connectors.perkville")

USER_AGENT = "perkbridge-perkville-connector/0.1 (+https://perkamo.com)"
CONNECTION_STATUSES = frozenset({"ACTIVE", "INACTIVE"})

# The id field of each list resource, used to break ties and to check the server's order.
ID_FIELDS = {
    "businesses": "business_id",
    "locations": "location_id",
    "perks": "perk_id",
    "users": "user_id",
    "connections": "connection_id",
    "transactions": "transaction_id",
    "external-members": "external_member_id",
}
_DATETIME_FILTERS = ("__gte", "__gt", "__lt", "__lte")


@dataclass(frozen=True)
class AwardResult:
    """Outcome of ``award_points``: created, an idempotent duplicate, or refused by the once-a-day rule."""

    trans_source_id: str
    created: bool
    duplicate: bool = False
    limited: bool = False
    transaction: dict[str, Any] | None = None


@dataclass
class _Bound:
    """One datetime window asked of the server: ``low <= value < high`` (operators as sent)."""

    low: datetime | None = None
    low_strict: bool = False
    high: datetime | None = None
    high_inclusive: bool = False


@dataclass
class _StreamGuard:
    """Checks one list stream against what was asked (window, business, order); filters on the client."""

    bounds: dict[str, _Bound] = field(default_factory=dict)
    business: str | None = None
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    id_field: str = "id"
    ordered: bool = True
    last_key: tuple[Any, ...] | None = None
    # Raw ``business`` strings already compared with ``business`` (rows repeat the same URI).
    business_seen: dict[str, bool] = field(default_factory=dict)


# Order key part of a missing or unreadable ``*_dt`` value: before every real moment.
_NO_MOMENT = float("-inf")
# Where an order field's value comes from: a parsed bound value (index >= 0), a fresh parse, or raw.
_PARSE, _RAW = -1, -2
_BUSINESS_SEEN_MAX = 64


class PerkvilleClient:
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
        page_size: int = 100,
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
    ) -> None:
        if page_size < 1:
            raise ConfigurationError("page_size must be at least 1")
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
        self._bucket = TokenBucket(requests_per_second, clock=self._clock, sleep=self._sleep)
        self._redact = Redactor()
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
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
            headers=headers,
            redact=self._redact,
        )
        if not self._auth.given_token and not self._auth.can_grant:
            raise ConfigurationError(
                "Perkville credentials missing: give an access token, or client id, client secret, "
                "username and password for the password grant"
            )
        self._http = httpx.Client(transport=transport, timeout=timeout, headers=headers)
        self._external_members_path = external_members_path
        self._external_members_enabled = True
        self._warned: set[str] = set()
        self.stats = {"requests": 0, "retries": 0, "reauths": 0, "dropped_rows": 0}

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
        url = self._url(path)
        spath = sanitize_path(url)
        reauthed = False
        failures = 0
        while True:
            if self._auth.token is None:
                self._obtain_token()
            self._bucket.acquire()
            self.stats["requests"] += 1
            try:
                response = self._http.request(
                    method,
                    url,
                    params=dict(params) if params else None,
                    json=dict(body) if body is not None else None,
                    headers={"Authorization": self._auth.authorization()},
                )
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ConfigurationError(
                    f"PERKVILLE_API_URL cannot be requested ({type(exc).__name__}); "
                    "give an http(s) URL such as https://api.perkville.com/v2/"
                ) from None
            except httpx.TransportError as exc:
                failures = self._retry(failures, method, spath, f"network error ({type(exc).__name__})", None)
                continue
            status = response.status_code
            if status == 401:
                if reauthed:
                    raise AuthError(
                        f"Perkville answered 401 on {method} {spath} even after re-authenticating; "
                        "check the staff account's access to this business and the token's scopes"
                    )
                if not self._auth.can_grant:
                    self._auth.invalidate()
                    self._auth.obtain()  # raises the AuthError that says what to check
                log.warning("perkville: token rejected on %s %s (401); re-authenticating once", method, spath)
                self.stats["reauths"] += 1
                self._auth.invalidate()
                self._obtain_token()
                reauthed = True
                continue
            if status == 429 or status >= 500:
                wait = parse_retry_after(
                    response.headers.get("Retry-After"), now=_server_now(response) or self._clock()
                )
                failures = self._retry(failures, method, spath, f"HTTP {status}", wait)
                continue
            if status >= 400:
                raise self._http_error(method, spath, response)
            if status == 204 or not response.content:
                return None
            try:
                return json.loads(response.content)
            except ValueError:
                failures = self._retry(
                    failures, method, spath, "truncated or invalid JSON body", None, invalid=True
                )

    def _retry(
        self,
        failures: int,
        method: str,
        spath: str,
        reason: str,
        retry_after: float | None,
        *,
        invalid: bool = False,
    ) -> int:
        if failures >= self.max_retries:
            kind = InvalidPageError if invalid else RetryBudgetExhausted
            raise kind(
                f"{method} {spath} failed {failures + 1} time(s), last: {reason}; the retry budget "
                f"({self.max_retries} retries) is spent. Perkville may be down or throttling; rerun later",
                path=spath,
                attempts=failures + 1,
                last_error=reason,
            )
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
        else:
            wait = self._backoff.delay(failures)
        log.info("perkville: %s %s: %s; retry %d in %.2fs", method, spath, reason, failures + 1, wait)
        self.stats["retries"] += 1
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
        _guard: _StreamGuard | None = None,
    ) -> Iterator[Page]:
        """Yield every page of a list endpoint, following ``meta.next`` or advancing ``offset``."""
        resource = path.strip("/").split("/")[-1]
        guard = _guard or self._guard_for(resource, params or {})
        paginator = OffsetPaginator(self._url(path), params, page_size=page_size or self.page_size)
        request: PageRequest | None = paginator.first_request
        while request is not None:
            offset = paginator.current_offset()
            payload = self.request("GET", request.url, params=request.params or None)
            if not isinstance(payload, Mapping):
                raise InvalidPageError(
                    f"GET {sanitize_path(request.url)} did not return a JSON object",
                    path=sanitize_path(request.url),
                    attempts=1,
                    last_error="not an object",
                )
            spath = sanitize_path(request.url)
            request = paginator.next_request(payload)
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
            )

    def _guard_for(self, resource: str, params: Mapping[str, Any]) -> _StreamGuard:
        guard = _StreamGuard(id_field=ID_FIELDS.get(resource, "id"))
        for key, value in params.items():
            suffix = next((s for s in _DATETIME_FILTERS if key.endswith(s)), None)
            if suffix is None or value is None:
                continue
            try:
                bound = parse_perkville_datetime(value, self.tz)
            except ValueError:
                continue  # not a datetime we can check; the server decides
            window = guard.bounds.setdefault(key[: -len(suffix)], _Bound())
            if suffix in ("__gte", "__gt"):
                window.low, window.low_strict = bound, suffix == "__gt"
            else:
                window.high, window.high_inclusive = bound, suffix == "__lte"
        if params.get("business") is not None:
            guard.business = _trailing_id(params["business"])
        order = params.get("order_by")
        if order:
            for item in [order] if isinstance(order, str) else list(order):
                text = str(item)
                guard.order.append((text.lstrip("-"), text.startswith("-")))
        return guard

    def _apply_guard(
        self, guard: _StreamGuard, objects: list[Mapping[str, Any]], spath: str
    ) -> tuple[list[dict[str, Any]], int]:
        """Drop the rows outside the asked filters, then check the order and sort the page if it is broken.

        A filter is checked in the order the bounds were asked, then the business; the first one a
        row violates is the one warned about. Each ``*_dt`` value is parsed once: an order field
        that is also a bound reuses the value the filter parsed. Rows are passed on as decoded:
        each page's JSON is decoded afresh and nothing else holds it, so only a row that is not a
        plain dict is copied.
        """
        tz = self.tz
        parse = parse_perkville_datetime
        bounds = [(name, b.low, b.low_strict, b.high, b.high_inclusive) for name, b in guard.bounds.items()]
        positions = {name: index for index, (name, *_) in enumerate(bounds)}
        sources = [
            (name, descending, positions.get(name, _PARSE) if name.endswith("_dt") else _RAW)
            for name, descending in guard.order
        ]
        carry = any(source >= 0 for _, _, source in sources)
        business = guard.business
        seen = guard.business_seen
        kept: list[dict[str, Any]] = []
        carried: list[list[datetime | None]] = []
        dropped = 0
        for row in objects:
            reason: str | None = None
            values: list[datetime | None] = []
            for name, low, low_strict, high, high_inclusive in bounds:
                try:
                    value = parse(row.get(name), tz)
                except ValueError:
                    value = None  # unparseable values are the mapping's problem, not a filter signal
                values.append(value)
                if value is not None and (
                    (low is not None and (value <= low if low_strict else value < low))
                    or (high is not None and (value > high if high_inclusive else value >= high))
                ):
                    reason = name
                    break
            if reason is None and business is not None:
                raw = row.get("business")
                if raw is not None:
                    if type(raw) is str:
                        same = seen.get(raw)
                        if same is None:
                            same = _trailing_id(raw) == business
                            if len(seen) < _BUSINESS_SEEN_MAX:
                                seen[raw] = same
                    else:
                        same = _trailing_id(raw) == business
                    if not same:
                        reason = "business"
            if reason is not None:
                dropped += 1
                self._warn_once(
                    f"filter:{spath}:{reason}",
                    "perkville: the server ignored the %s filter on %s; filtering on the client side "
                    "(every page is still read, so this is slower)",
                    reason,
                    spath,
                )
                continue
            kept.append(row if type(row) is dict else dict(row))
            if carry:
                carried.append(values)
        self.stats["dropped_rows"] += dropped
        if guard.order and kept:
            keys = self._order_keys(guard, kept, sources, carried)
            in_order = all(map(operator.le, keys, islice(keys, 1, None)))
            if guard.last_key is not None and keys[0] < guard.last_key:
                in_order = False
            if not in_order:
                if guard.ordered:
                    self._warn_once(
                        f"order:{spath}",
                        "perkville: the server ignored order_by on %s; sorting each page on the client "
                        "side (the stream as a whole is no longer ordered; page.ordered is False)",
                        spath,
                    )
                guard.ordered = False
                pairs = sorted(zip(keys, range(len(kept)), strict=True))
                kept = [kept[index] for _, index in pairs]
                keys = [key for key, _ in pairs]
            guard.last_key = keys[-1] if guard.last_key is None else max(guard.last_key, keys[-1])
        return kept, dropped

    def _order_keys(
        self,
        guard: _StreamGuard,
        rows: list[dict[str, Any]],
        sources: list[tuple[str, bool, int]],
        carried: list[list[datetime | None]],
    ) -> list[tuple[Any, ...]]:
        """One sort key per row: each order field (a ``*_dt`` as its timestamp), then the row id.

        ``*_dt`` values that are null or unreadable sort first (``-inf``); descending fields negate
        numbers only (text keeps its ascending order, as it always has). Ties fall to the id.
        Built column by column; ``*_dt`` fields not parsed by a filter are parsed row by row first,
        so a value that cannot be read at all fails on the same row and field as it always did.
        """
        tz = self.tz
        to_parse = [name for name, _, source in sources if source == _PARSE]
        parsed: list[Sequence[datetime | None]] = []
        if len(to_parse) == 1:
            parsed = [[_moment_or_none(row.get(to_parse[0]), tz) for row in rows]]
        elif to_parse:  # row by row, then turned into columns
            parsed = list(zip(*[[_moment_or_none(row.get(name), tz) for name in to_parse] for row in rows]))
        columns: list[list[Any]] = []
        parse_index = 0
        for name, descending, source in sources:
            if source == _RAW:
                column = [(1, v) if type(v) is int else _sortable(v) for v in [row.get(name) for row in rows]]
                columns.append([_negate(part) for part in column] if descending else column)
                continue
            if source == _PARSE:
                values = parsed[parse_index]
                parse_index += 1
            else:
                values = [moments[source] for moments in carried]
            stamps = [_NO_MOMENT if v is None else v.timestamp() for v in values]
            columns.append([-stamp for stamp in stamps] if descending else stamps)
        id_field = guard.id_field
        columns.append(
            [
                (1, ident) if type(ident) is int else _sortable(_row_id(row, id_field))
                for row in rows
                for ident in (row.get(id_field),)
            ]
        )
        return list(zip(*columns, strict=True))

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(message, *args)

    # ----------------------------------------------------------------- resources
    def _params(self, business: object, params: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if business is not None:
            out["business"] = _trailing_id(business)
        for key, value in params.items():
            if value is None:
                continue
            out[key] = format_filter_datetime(value, self.tz) if isinstance(value, datetime) else value
        return out

    def iter_businesses(self, **params: Any) -> Iterator[Page]:
        """Businesses the staff account can see."""
        return self.iter_pages("businesses/", self._params(None, params))

    def iter_locations(self, business: object = None, **params: Any) -> Iterator[Page]:
        """Locations of a business (with ``external_location_id``)."""
        return self.iter_pages("locations/", self._params(business, params))

    def iter_perks(self, business: object = None, **params: Any) -> Iterator[Page]:
        """Perks (earning and redeeming rules); pass ``classification="REDEEM"`` to narrow."""
        return self.iter_pages("perks/", self._params(business, params))

    def iter_users(
        self,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Users, optionally changed within ``[last_mod_dt_gte, last_mod_dt_lt)``."""
        params.update(last_mod_dt__gte=last_mod_dt_gte, last_mod_dt__lt=last_mod_dt_lt)
        return self.iter_pages("users/", self._params(None, params))

    def iter_connections(
        self,
        business: object = None,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Connections (customer ↔ business, with ``point_balance``), optionally changed in a window."""
        params.update(last_mod_dt__gte=last_mod_dt_gte, last_mod_dt__lt=last_mod_dt_lt)
        return self.iter_pages("connections/", self._params(business, params))

    def iter_transactions(
        self,
        business: object = None,
        *,
        transaction_dt_gte: datetime | None = None,
        transaction_dt_lt: datetime | None = None,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        order_by: str | Sequence[str] | None = None,
        **params: Any,
    ) -> Iterator[Page]:
        """The points ledger (earns, redemptions, voids) with optional windows and order."""
        params.update(
            transaction_dt__gte=transaction_dt_gte,
            transaction_dt__lt=transaction_dt_lt,
            last_mod_dt__gte=last_mod_dt_gte,
            last_mod_dt__lt=last_mod_dt_lt,
        )
        if order_by:
            params["order_by"] = [order_by] if isinstance(order_by, str) else list(order_by)
        return self.iter_pages("transactions/", self._params(business, params))

    def fetch_newest(
        self, resource: str, business: object = None, *, field: str = "last_mod_dt", **params: Any
    ) -> Page:
        """One request: the (at most two) rows of ``resource`` with the highest ``field``.

        Asks ``order_by=-field,-id``; ``page.ordered`` is False when the two rows show the server
        ignoring that order (they are then just rows it holds, not the newest).  An empty page:
        nothing matches.  The values stay as Perkville sent them (its clock, its zone).
        """
        name = resource.strip("/")
        query = dict(params)
        query["order_by"] = [f"-{field}", f"-{ID_FIELDS.get(name, 'id')}"]
        pages = self.iter_pages(f"{name}/", self._params(business, query), page_size=2)
        first = next(pages, None)
        close = getattr(pages, "close", None)  # a generator: let it finish now
        if close is not None:
            close()
        return first or Page(objects=[], meta={}, path=f"{name}/")

    def iter_external_members(self, business: object = None, **params: Any) -> Iterator[Page]:
        """External member records; yields nothing (after one warning) if the endpoint does not exist."""
        if not self._external_members_enabled:
            return
        try:
            yield from self.iter_pages(self._external_members_path, self._params(business, params))
        except NotFound:
            self._disable_external_members()

    @property
    def external_members_enabled(self) -> bool:
        return self._external_members_enabled

    def _disable_external_members(self) -> None:
        if self._external_members_enabled:
            log.warning(
                "perkville: %s answered 404; the External Member API is not available to this "
                "client, so external member sync is disabled for this run",
                sanitize_path(self._url(self._external_members_path)),
            )
        self._external_members_enabled = False

    def iter_windows(
        self,
        resource: str,
        *,
        field: str,
        start: datetime,
        end: datetime,
        window: timedelta,
        business: object = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Read ``[start, end)`` in consecutive ``field`` windows, each ordered by ``(field, id)``.

        If the server is caught ignoring the window filter, the current window is finished with
        client-side filtering and the rest of the range is read in ONE client-filtered scan
        (instead of one full scan per window).
        """
        if window <= timedelta(0):
            raise ConfigurationError("window must be positive")
        name = resource.strip("/")
        id_field = ID_FIELDS.get(name, "id")
        lower = start
        while lower < end:
            upper = min(end, lower + window)
            before = self.stats["dropped_rows"]
            query = dict(params)
            query.update({f"{field}__gte": lower, f"{field}__lt": upper, "order_by": [field, id_field]})
            yield from self.iter_pages(f"{name}/", self._params(business, query))
            lower = upper
            if self.stats["dropped_rows"] > before and lower < end:
                query = dict(params)
                query.update({f"{field}__gte": lower, f"{field}__lt": end, "order_by": [field, id_field]})
                yield from self.iter_pages(f"{name}/", self._params(business, query))
                return

    # ----------------------------------------------------------------- writes
    def award_points(
        self,
        *,
        perk: object,
        trans_source_id: str,
        user: object = None,
        email: str | None = None,
        connection: object = None,
        location: object = None,
        business: object = None,
        quantity: int = 1,
        points: int | None = None,
        transaction_dt: datetime | None = None,
        limit_to_once_per_calendar_day: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> AwardResult:
        """``POST transactions/``; a duplicate ``trans_source_id`` is an idempotent success."""
        if not trans_source_id:
            raise ConfigurationError("award_points needs a trans_source_id (it makes retries safe)")
        if user is None and email is None and connection is None:
            raise ConfigurationError("award_points needs a user, an email or a connection")
        body: dict[str, Any] = {
            "perk": _uri("perks", perk),
            "quantity": quantity,
            "trans_source_id": trans_source_id,
            "limit_to_once_per_calendar_day": bool(limit_to_once_per_calendar_day),
        }
        if user is not None:
            body["user"] = _uri("users", user)
        if email is not None:
            body["user__emails__email"] = email
        if connection is not None:
            body["connection"] = _uri("connections", connection)
        if location is not None:
            body["location"] = _uri("locations", location)
        if business is not None:
            body["business"] = _uri("businesses", business)
        if points is not None:
            body["points"] = int(points)
        if transaction_dt is not None:
            body["transaction_dt"] = format_filter_datetime(transaction_dt, self.tz)
        body.update(extra or {})
        try:
            created = self.request("POST", "transactions/", body=body)
        except RequestRejected as exc:
            if _is_duplicate(exc.status, exc.body):
                log.info("perkville: trans_source_id %s already recorded; treating as done", trans_source_id)
                return AwardResult(trans_source_id, created=False, duplicate=True)
            if _is_once_per_day(exc.body):
                log.info("perkville: %s refused by limit_to_once_per_calendar_day", trans_source_id)
                return AwardResult(trans_source_id, created=False, limited=True)
            raise
        return AwardResult(
            trans_source_id,
            created=True,
            transaction=dict(created) if isinstance(created, Mapping) else None,
        )

    def upsert_external_member(
        self, member: Mapping[str, Any], *, external_member_id: object = None
    ) -> dict[str, Any] | None:
        """POST (create or update) an external member, or PATCH one by id; None when the API is absent."""
        if not self._external_members_enabled:
            return None
        path = self._external_members_path
        try:
            if external_member_id is not None:
                result = self.request("PATCH", f"{path}{_trailing_id(external_member_id)}/", body=member)
            else:
                result = self.request("POST", path, body=member)
        except NotFound:
            if external_member_id is not None and self._external_members_probe():
                raise
            self._disable_external_members()
            return None
        return dict(result) if isinstance(result, Mapping) else {}

    def _external_members_probe(self) -> bool:
        """Whether the external-members list exists (so a 404 meant the record, not the endpoint)."""
        try:
            self.request("GET", self._external_members_path, params={"limit": 1})
        except NotFound:
            return False
        return True

    def update_connection_status(self, connection_id: object, status: str) -> dict[str, Any]:
        """PATCH a connection's ``status`` to ACTIVE (join) or INACTIVE (leave)."""
        value = status.upper()
        if value not in CONNECTION_STATUSES:
            raise ConfigurationError(f"connection status must be ACTIVE or INACTIVE, not {status!r}")
        result = self.request("PATCH", f"connections/{_trailing_id(connection_id)}/", body={"status": value})
        return dict(result) if isinstance(result, Mapping) else {}


# --------------------------------------------------------------------- helpers
def _trailing_id(value: object) -> str:
    """``25``, ``"25"`` or ``"/v2/businesses/25/"`` → ``"25"``."""
    text = str(value).rstrip("/")
    return text.rsplit("/", 1)[-1]


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


def _moment_or_none(value: object, tz: tzinfo) -> datetime | None:
    """A row's ``*_dt`` value parsed, or None when null or unreadable (the mapping reports those)."""
    try:
        return parse_perkville_datetime(value, tz)
    except ValueError:
        return None


def _uri(resource: str, value: object) -> str:
    text = str(value)
    return text if "/" in text else f"/v2/{resource}/{text}/"


def _row_id(row: Mapping[str, Any], id_field: str) -> Any:
    for key in (id_field, "id"):
        if row.get(key) is not None:
            return row[key]
    uri = row.get("resource_uri")
    return _trailing_id(uri) if uri else None


def _sortable(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    text = str(value)
    try:
        return (1, int(text))
    except ValueError:
        return (2, text)


def _negate(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, float)):
        return (value[0], -value[1])
    if isinstance(value, float):
        return -value
    return value


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


def _is_duplicate(status: int, body: Any) -> bool:
    """Tolerant reading of "this trans_source_id exists": 409, or an error naming trans_source_id."""
    if status == 409:
        return True
    text = json.dumps(body, default=str).lower() if body is not None else ""
    if "trans_source_id" not in text:
        return False
    if (
        isinstance(body, Mapping)
        and isinstance(body.get("errors"), Mapping)
        and "trans_source_id" in body["errors"]
    ):
        return True
    return any(word in text for word in ("duplicate", "already", "unique", "exists"))


def _is_once_per_day(body: Any) -> bool:
    text = json.dumps(body, default=str).lower() if body is not None else ""
    return "limit_to_once_per_calendar_day" in text or "once_per" in text or "calendar_day" in text
