"""Overlapped paging of one Tastypie list: several offsets in flight, pages handed on in order.

A list whose first page reports ``meta.total_count`` and a full page of ``meta.limit`` rows is
read by offset, ``first + k * limit``, with up to ``max_in_flight`` requests outstanding; each
page is handed on only after every page before it. Everything else is read one page at a time
by ``follow`` (``meta.next`` or the offset, as the server leads).

The list may change while it is read. Rows are asked for in a stable order, so:

* rows added at the end are found by reading on past the last known page (``follow`` from the
  position after it) until the server has nothing more: the last page is checked again;
* rows added before a page's offset push rows already handed on into it: a row whose id was
  handed on in the last two pages is dropped and counted in ``repeated``; a page fetched before
  such an insert while the page before it was fetched after shows a lower ``total_count`` and
  is treated like a removal;
* rows removed before a page's offset pull rows that were never handed on in front of it. The
  page's ``total_count`` is lower than the one before; the reader stops every request in flight
  and reads on one page at a time from as many rows back as the count fell, dropping rows it
  already handed on. The same happens (one page back) after a page shorter than ``limit``
  before the end, and again whenever the count falls during the one-page-at-a-time read.

What it cannot see: an insert and a removal between two page reads that leave the count as it
was. ``tests/connectors/perkville/test_overlap.py`` checks, under real threads and random
timing, that a list that only grows or only shrinks loses and doubles nothing.

This module does no I/O of its own: ``fetch(offset, limit)`` and ``follow(offset, limit)`` do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Payload = Mapping[str, Any]
# A list that keeps shrinking while it is read is stepped back at most this often; after that
# it is read on as the server pages it (a later sync or reconcile finds what moved).
MAX_FALLBACKS = 20
# Rows handed on that a step back may read again, and are then dropped: this many pages' worth.
HISTORY_PAGES = 2
# (offset of the page, its payload with repeated rows removed, how many rows were removed)
Delivered = tuple[int, Payload, int]


def overlap_plan(payload: Payload) -> tuple[int, int] | None:
    """``(limit, total_count)`` when the first page allows reading by offset, else None."""
    meta = payload.get("meta")
    objects = payload.get("objects")
    if not isinstance(meta, Mapping) or not isinstance(objects, list):
        return None
    limit, total = meta.get("limit"), meta.get("total_count")
    if type(limit) is not int or type(total) is not int or limit < 1:
        return None
    if len(objects) != limit:  # the only page, or a server that does not fill its pages
        return None
    offset = meta.get("offset")
    if type(offset) is int and offset + limit >= total:  # the list fits in this page
        return None
    return limit, total


class OverlappedReader:
    """Reads one list from its first page on; see the module's docstring for the rules."""

    def __init__(
        self,
        fetch: Callable[[int, int], Payload],
        follow: Callable[[int, int], Iterator[tuple[int, Payload]]],
        *,
        id_field: str,
        max_in_flight: int,
    ) -> None:
        if max_in_flight < 2:
            raise ValueError("overlapped paging needs max_in_flight >= 2")
        self._fetch = fetch
        self._follow = follow
        self._id_field = id_field
        self._max_in_flight = max_in_flight
        self._history: deque[Any] = deque()
        self.fallbacks = 0

    def read(self, first_offset: int, first: Payload) -> Iterator[Delivered]:
        plan = overlap_plan(first)
        if plan is None:
            raise ValueError("the first page does not allow overlapped paging (see overlap_plan)")
        limit, total = plan
        # ``position``: the server position right after the last row handed on, as the list
        # stood when that row's page was read (``total`` rows then).
        position = first_offset + limit
        self._history = deque(maxlen=HISTORY_PAGES * limit)
        self._remember(first["objects"])
        yield first_offset, first, 0
        resume: int | None = None  # set when the read goes on one page at a time from there
        pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="perkville-page")
        pending: dict[int, Future[Payload]] = {}
        submitted = position
        try:
            while True:
                while len(pending) < self._max_in_flight and submitted < total:
                    pending[submitted] = pool.submit(self._fetch, submitted, limit)
                    submitted += limit
                future = pending.pop(position, None)
                if future is None:
                    break  # every page up to the last known total is handed on
                payload = future.result()
                objects = payload.get("objects")
                page_total = _total(payload)
                if not isinstance(objects, list) or page_total is None:
                    resume = position  # let the one-page-at-a-time read say what is wrong
                    break
                last = position + len(objects) >= page_total
                if page_total < total or not objects or (len(objects) < limit and not last):
                    # Rows were removed before this page (or the server pages unevenly): rows
                    # not yet handed on may have moved before ``position``.
                    resume = self._step_back(first_offset, position, total, page_total, limit)
                    total = page_total
                    break
                yield self._deliver(position, payload, objects)
                position += len(objects)
                total = page_total
                if len(objects) < limit:
                    break
        finally:
            for future in pending.values():
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        if resume is not None:
            self.fallbacks += 1
            position = resume
        # Rows added at the end while the list was read, or the rest of a changed list: one
        # page at a time, still stepping back whenever the count drops.
        while True:
            restart: int | None = None
            pages = self._follow(position, limit)
            try:
                for offset, payload in pages:
                    objects = payload.get("objects")
                    rows = objects if isinstance(objects, list) else []
                    page_total = _total(payload)
                    if page_total is not None and page_total < total and self.fallbacks < MAX_FALLBACKS:
                        restart = self._step_back(first_offset, offset, total, page_total, limit)
                        total = page_total
                        break
                    yield self._deliver(offset, payload, rows)
                    position = offset + len(rows)
                    if page_total is not None:
                        total = page_total
            finally:
                close = getattr(pages, "close", None)
                if close is not None:
                    close()
            if restart is None:
                return
            self.fallbacks += 1
            position = restart

    @staticmethod
    def _step_back(first_offset: int, position: int, total: int, page_total: int, limit: int) -> int:
        """Where to read on from after the count fell: back by as many rows as it fell (they may
        all have been before ``position``), or a page when it did not fall (uneven pages)."""
        drop = total - page_total if page_total < total else limit
        return max(first_offset, position - drop)

    def _deliver(self, offset: int, payload: Payload, rows: list[Any]) -> Delivered:
        """The page with the rows already handed on (the list grew before it) taken out."""
        key = self._id_field
        seen = set(self._history)
        fresh = [row for row in rows if not (isinstance(row, Mapping) and row.get(key) in seen)]
        self._remember(rows)
        return offset, {**payload, "objects": fresh}, len(rows) - len(fresh)

    def _remember(self, rows: list[Any]) -> None:
        key = self._id_field
        self._history.extend(row.get(key) for row in rows if isinstance(row, Mapping))


def _total(payload: Payload) -> int | None:
    meta = payload.get("meta")
    total = meta.get("total_count") if isinstance(meta, Mapping) else None
    return total if type(total) is int else None
