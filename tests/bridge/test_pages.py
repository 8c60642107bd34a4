"""Contract of a ``PageFeed`` (every feed passes it), and ``prefetch``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.pipeline import PageFeed, SequentialFeed, TransactionQuery, prefetch
from bridge.pipeline.pages import ReadAhead
from bridge.pipeline.transaction_phases import TX_ORDER
from connectors.perkville.paging import Page
from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import make_client

FEEDS = [SequentialFeed(), SequentialFeed(depth=0)]
# Each feed over a client that reads one page at a time and one that keeps four in flight.
IN_FLIGHT = pytest.mark.parametrize("in_flight", [4, 1], ids=["overlapped", "one-at-a-time"])


def _no_prefetch_threads() -> bool:
    return not any(t.name == "perkbridge-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(seed=7, members=10, transactions=230)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _query(box: Sandbox, offset: int = 0) -> TransactionQuery:
    return TransactionQuery(str(box.business_ids[0]), TX_ORDER, {}, offset)


def _ids(pages: list[Page]) -> list[Any]:
    return [row["transaction_id"] for page in pages for row in page.objects]


@pytest.mark.parametrize("feed", FEEDS, ids=repr)
@IN_FLIGHT
def test_a_feed_yields_every_page_once_in_offset_order(box: Sandbox, feed: PageFeed, in_flight: int) -> None:
    client = make_client(box, max_in_flight=in_flight)
    try:
        pages = list(feed.pages(client, _query(box)))
        direct = list(client.iter_transactions(str(box.business_ids[0]), order_by=list(TX_ORDER)))
    finally:
        client.close()
    assert _ids(pages) == _ids(direct)
    assert len(_ids(pages)) == len(set(_ids(pages))) == len(box.ledger.txns)
    offsets = [page.offset for page in pages]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for page, following in zip(pages, pages[1:], strict=False):
        assert following.offset == page.offset + len(page.objects) + page.dropped  # contiguous


@pytest.mark.parametrize("feed", FEEDS, ids=repr)
@IN_FLIGHT
def test_a_feed_starts_at_the_query_offset(box: Sandbox, feed: PageFeed, in_flight: int) -> None:
    client = make_client(box, max_in_flight=in_flight)
    try:
        everything = _ids(list(feed.pages(client, _query(box))))
        rest = list(feed.pages(client, _query(box, offset=75)))
    finally:
        client.close()
    assert rest[0].offset == 75
    assert _ids(rest) == everything[75:]


@pytest.mark.parametrize("feed", FEEDS, ids=repr)
@IN_FLIGHT
def test_closing_a_feed_early_stops_its_reading_and_frees_the_source(box: Sandbox, feed: PageFeed, in_flight: int) -> None:
    client = make_client(box, max_in_flight=in_flight)
    try:
        stream = feed.pages(client, _query(box))
        first = next(stream)
        stream.close()  # type: ignore[attr-defined]
        assert _no_prefetch_threads()
        again = next(iter(feed.pages(client, _query(box))))  # the client is free for the next phase
    finally:
        client.close()
    assert _ids([again]) == _ids([first])


class _FailingSource:
    """Two pages, then the source fails."""

    def iter_transactions(self, business: object = None, **params: Any) -> Iterator[Page]:
        yield Page(objects=[{"transaction_id": 1}], meta={}, path="transactions/", offset=0)
        yield Page(objects=[{"transaction_id": 2}], meta={}, path="transactions/", offset=1)
        raise RuntimeError("page 3 failed")


@pytest.mark.parametrize("feed", FEEDS, ids=repr)
def test_a_source_failure_reaches_the_consumer_after_the_pages_before_it(feed: PageFeed) -> None:
    got: list[Page] = []
    with pytest.raises(RuntimeError, match="page 3 failed"):
        for page in feed.pages(_FailingSource(), TransactionQuery("b", TX_ORDER)):  # type: ignore[arg-type]
            got.append(page)
    assert _ids(got) == [1, 2]
    assert _no_prefetch_threads()


def test_prefetch_yields_in_order_and_propagates_errors() -> None:
    assert list(prefetch(iter(range(10)))) == list(range(10))

    def broken() -> Iterator[int]:
        yield 1
        raise RuntimeError("page 2 failed")

    got = []
    with pytest.raises(RuntimeError, match="page 2 failed"):
        for item in prefetch(broken()):
            got.append(item)
    assert got == [1]
    stream = prefetch(iter(range(100)))
    assert next(stream) == 0
    stream.close()  # type: ignore[attr-defined]  # leaving early stops the producer thread
    assert _no_prefetch_threads()


def test_read_ahead_reads_every_list_before_its_phase_takes_it_and_close_stops_the_rest() -> None:
    """Each opened list starts reading at once; taken lists keep their order; untaken ones stop."""
    started = {name: threading.Event() for name in ("users", "connections", "perks")}
    release = threading.Event()

    def pages(name: str) -> Iterator[str]:
        started[name].set()  # the first page is asked for as soon as the list is opened
        yield f"{name}-1"
        assert release.wait(60)
        yield f"{name}-2"

    ahead = ReadAhead()
    for name in started:
        ahead.open(name, pages(name))
    for name, event in started.items():
        assert event.wait(60), f"{name} was not read ahead"
    users = ahead.take("users")
    assert users is not None and "users" not in ahead and "perks" in ahead
    release.set()
    assert list(users) == ["users-1", "users-2"]
    assert ahead.take("users") is None
    ahead.close()  # connections and perks were never taken: their threads stop
    assert _no_prefetch_threads()
