"""Page acquisition: the one seam through which the transactions phase gets its pages.

A ``PageFeed`` turns a ``TransactionQuery`` into the query's pages, in offset order (so the
checkpoint's offset stays contiguous), and stops any background reading when its iterator is
closed. ``SequentialFeed`` is today's: one request at a time, with a thread that fetches the next
page while the current one is mapped and delivered. A feed that keeps several requests in flight
under Perkville's request budget plugs in here without touching the phases or the delivery;
``tests/bridge/test_pages.py`` is the contract every feed passes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bridge.sources import Page, PerkvilleSource

T = TypeVar("T")


@dataclass(frozen=True)
class TransactionQuery:
    """Which transactions a phase reads: filters, order and the offset to start from."""

    business: str
    order_by: tuple[str, ...]
    filters: Mapping[str, Any] = field(default_factory=dict)
    offset: int = 0


class PageFeed(Protocol):
    def pages(self, source: PerkvilleSource, query: TransactionQuery) -> Iterator[Page]:
        """The query's pages in offset order; closing the iterator stops all reading."""
        ...


@dataclass(frozen=True)
class SequentialFeed:
    """The source's own paging (one request at a time, or several in flight where the client
    overlaps them); ``depth`` pages fetched ahead by a thread (0: none, in line). The buffer
    holds what is read while the earlier phases of a backfill run (about a second's worth)."""

    depth: int = 12

    def pages(self, source: PerkvilleSource, query: TransactionQuery) -> Iterator[Page]:
        params = dict(query.filters)
        if query.offset:
            params["offset"] = query.offset
        pages = source.iter_transactions(query.business, order_by=list(query.order_by), **params)
        return prefetch(pages, self.depth) if self.depth > 0 else pages


_DONE = object()


class prefetch(Iterator[T]):  # noqa: N801 - used like the generator function it replaced
    """Iterate ``items`` while a background thread already fetches the next ones (at most ``depth``).

    The thread starts at once, so a feed opened before an earlier phase is already reading while
    that phase runs. The HTTP wait and JSON decoding of page N+1 overlap the mapping and the
    database commit of page N. ``close`` (also on exhaustion or error) stops the thread, waits
    for it and closes ``items``, so the next phase may use the client again; closing a prefetch
    that was never iterated stops it too.
    """

    def __init__(self, items: Iterable[T], depth: int = 2) -> None:
        self._items = items
        self._buffer: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._closed = False
        self._head: list[Any] = []  # an item ``peek`` took from the buffer, handed out first
        self._thread = threading.Thread(target=self._produce, name="perkbridge-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> prefetch[T]:
        return self

    def peek(self) -> T | None:
        """The next item without consuming it (waits for it); None at the end or on an error
        (which ``__next__`` then raises)."""
        if not self._head and not self._closed:
            self._head.append(self._buffer.get())
        got = self._head[0] if self._head else _DONE
        return None if got is _DONE or isinstance(got, BaseException) else got  # type: ignore[return-value]

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        got = self._head.pop() if self._head else self._buffer.get()
        if got is _DONE:
            self.close()
            raise StopIteration
        if isinstance(got, BaseException):
            self.close()
            raise got
        return got  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
        close_quietly(self._items)


class ReadAhead:
    """Lists opened together at the start of a backfill, each read ahead in the background
    (``prefetch``) and handed to its phase when that phase begins.

    The phases consume them one after the other, but their requests need not wait for that:
    opened in the order they are consumed, they draw from the request budget in that order,
    and the budget is used from the first second. ``close`` stops whatever was not taken.
    """

    def __init__(self) -> None:
        self._opened: dict[str, prefetch[Any]] = {}

    def open(self, name: str, items: Iterable[Any], depth: int = 2) -> None:
        self._opened[name] = prefetch(items, depth)

    def __contains__(self, name: str) -> bool:
        return name in self._opened

    def peek(self, name: str) -> Any:
        """The first item of the opened list ``name`` without consuming it (None: none)."""
        opened = self._opened.get(name)
        return None if opened is None else opened.peek()

    def take(self, name: str) -> prefetch[Any] | None:
        """The opened list ``name`` (now the caller's to close), or None."""
        return self._opened.pop(name, None)

    def close(self) -> None:
        opened, self._opened = self._opened, {}
        for items in opened.values():
            items.close()


def close_quietly(thing: Any) -> None:
    """Call ``thing.close()`` if it has one (generators, pagers, clients)."""
    close = getattr(thing, "close", None)
    if close is not None:
        close()
