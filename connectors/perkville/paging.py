"""Tastypie ``meta``/``objects`` paging without I/O: given the last page, say the next request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from connectors.perkville.errors import PaginationError

# The id field of each list resource, used to break ties and to check the server's order.
ID_FIELDS = {
    "businesses": "business_id",
    "locations": "location_id",
    "perks": "perk_id",
    "users": "user_id",
    "connections": "connection_id",
    "transactions": "transaction_id",
}
"""External-member records have no known id field; their stable sort key is ``id`` (the default)."""


@dataclass(frozen=True)
class Page:
    """One raw list page: ``objects`` and ``meta`` as Perkville sent them (after client-side guards).

    ``path`` is the request path without query string; ``offset`` the offset this page started at;
    ``dropped`` counts rows removed on the client because the server ignored a filter;
    ``ordered`` is False once the server was seen ignoring ``order_by`` in this stream;
    ``repeated`` counts rows removed because an earlier page already held them (the list grew
    while it was read). ``next_offset`` is where the row after this page sits on the server.
    """

    objects: list[dict[str, Any]]
    meta: dict[str, Any]
    path: str
    offset: int = 0
    dropped: int = 0
    ordered: bool = True
    repeated: int = 0

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.objects) + self.dropped + self.repeated


@dataclass(frozen=True)
class PageRequest:
    """The next request to make: an absolute URL plus query parameters."""

    url: str
    params: dict[str, str | list[str]] = field(default_factory=dict)


def sanitize_path(url: str) -> str:
    """The path of ``url`` without scheme, host, query string or fragment (safe to log)."""
    return urlsplit(url).path or "/"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class OffsetPaginator:
    """Decides the next request of a Tastypie list, following ``meta.next`` or advancing the offset.

    * ``meta.next`` present and non-empty: follow it (relative links are resolved against the
      request URL; a link to another host is refused so the bearer token never leaves the API).
    * ``meta.next`` present and null: the list is complete.
    * no ``next`` key: advance ``offset`` by the rows actually returned — the server's
      ``meta.limit`` caps the step, the requested limit is never trusted — until a page is empty.
    * An empty page always ends the list; a next link seen before raises ``PaginationError``.
    """

    def __init__(self, url: str, params: Mapping[str, Any] | None = None, *, page_size: int = 100) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        base = dict(params or {})
        base.setdefault("limit", page_size)
        base.setdefault("offset", 0)
        self._origin = _origin(url)
        self._first = PageRequest(
            url, {key: _param(value) for key, value in base.items() if value is not None}
        )
        self._current = self._first
        self._seen: set[str] = set()
        self.pages = 0

    @property
    def first_request(self) -> PageRequest:
        return self._first

    def current_offset(self) -> int:
        """The offset the current request asks for (from its params or its next-link query)."""
        if "offset" in self._current.params:
            return _to_int(str(self._current.params["offset"]), 0)
        query = dict(parse_qsl(urlsplit(self._current.url).query))
        return _to_int(query.get("offset"), 0)

    def next_request(self, page: Mapping[str, Any]) -> PageRequest | None:
        """The request after ``page`` (the decoded JSON of the current request), or None at the end."""
        self.pages += 1
        objects = page.get("objects")
        if not isinstance(objects, list):
            raise PaginationError("the page has no 'objects' list", path=sanitize_path(self._current.url))
        if not objects:
            return None
        meta = page.get("meta") if isinstance(page.get("meta"), Mapping) else {}
        assert isinstance(meta, Mapping)
        if "next" in meta:
            link = meta.get("next")
            if not link:
                return None
            return self._follow(str(link))
        returned_limit = _to_int(meta.get("limit"), len(objects))
        step = min(returned_limit, len(objects)) if returned_limit > 0 else len(objects)
        offset = _to_int(meta.get("offset"), self.current_offset())
        params = dict(self._current.params) if self._current.params else dict(self._first.params)
        params["offset"] = str(offset + step)
        if self._current.params:
            nxt = PageRequest(self._current.url, params)
        else:
            nxt = PageRequest(self._replace_query(self._current.url, offset=offset + step), {})
        self._current = nxt
        return nxt

    def _follow(self, link: str) -> PageRequest:
        url = urljoin(self._current.url, link)
        path = sanitize_path(url)
        if _origin(url) != self._origin:
            raise PaginationError(
                "meta.next points at another host; refusing to send the token there", path=path
            )
        key = _normal(url)
        if key in self._seen or key == _normal(self._request_url(self._current)):
            raise PaginationError(
                f"the server repeated a next link after {self.pages} page(s); stopping instead of looping",
                path=path,
            )
        self._seen.add(key)
        self._current = PageRequest(url, {})
        return self._current

    @staticmethod
    def _request_url(request: PageRequest) -> str:
        if not request.params:
            return request.url
        parts = urlsplit(request.url)
        pairs = [
            (key, item)
            for key, value in request.params.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        query = sorted(parse_qsl(parts.query) + pairs)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, _encode(query), ""))

    @staticmethod
    def _replace_query(url: str, *, offset: int) -> str:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "offset"]
        query.append(("offset", str(offset)))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, _encode(query), ""))


def _param(value: object) -> str | list[str]:
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _encode(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs)


def _normal(url: str) -> str:
    parts = urlsplit(url)
    query = sorted(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, _encode(query), ""))


def _to_int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default
