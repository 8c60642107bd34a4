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
    """One request at a time; ``depth`` pages fetched ahead by a thread (0: none, in line)."""

    depth: int = 2

    def pages(self, source: PerkvilleSource, query: TransactionQuery) -> Iterator[Page]:
        params = dict(query.filters)
        if query.offset:
            params["offset"] = query.offset
        pages = source.iter_transactions(query.business, order_by=list(query.order_by), **params)
        return prefetch(pages, self.depth) if self.depth > 0 else pages


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` while a background thread already fetches the next ones (at most ``depth``).

    The HTTP wait and JSON decoding of page N+1 overlap the mapping and the database commit of
    page N. Only the thread reads the source while the loop runs; leaving the loop early stops
    the thread and waits for it, so the next phase may use the client again.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="perkbridge-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = buffer.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
        close_quietly(items)


def close_quietly(thing: Any) -> None:
    """Call ``thing.close()`` if it has one (generators, pagers, clients)."""
    close = getattr(thing, "close", None)
    if close is not None:
        close()
