"""Overlapped paging (``connectors.perkville.overlap``): order, fallbacks, a list that changes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.perkville.overlap import OverlappedReader, overlap_plan


class FakeList:
    """A Tastypie list held in memory: rows ordered by id, paged by offset, changeable mid-read.

    ``changes`` maps a fetch number (1 = the first page after the first) to a function that
    changes the rows just before that fetch is answered.
    """

    def __init__(self, ids: list[int], changes: dict[int, Any] | None = None) -> None:
        self.rows = sorted(ids)
        self.changes = dict(changes or {})
        self.fetches = 0
        self.lock = threading.Lock()

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        with self.lock:
            self.fetches += 1
            change = self.changes.pop(self.fetches, None)
            if change is not None:
                change(self.rows)
                self.rows.sort()
            rows = self.rows[offset : offset + limit]
            return {
                "meta": {"limit": limit, "offset": offset, "total_count": len(self.rows)},
                "objects": [{"id": row} for row in rows],
            }

    def follow(self, offset: int, limit: int) -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            payload = self.page(offset, limit)
            yield offset, payload
            if not payload["objects"]:
                return
            offset += len(payload["objects"])


def read_all(source: FakeList, limit: int, in_flight: int = 4) -> tuple[list[int], OverlappedReader]:
    reader = OverlappedReader(source.page, source.follow, id_field="id", max_in_flight=in_flight)
    changes, source.changes = source.changes, {}
    first = source.page(0, limit)
    source.changes, source.fetches = changes, 0  # changes count the fetches after the first page
    got: list[int] = []
    assert overlap_plan(first) is not None, "these tests read lists longer than a page"
    for _offset, payload, _repeated in reader.read(0, first):
        got.extend(row["id"] for row in payload["objects"])
    return got, reader


def test_pages_that_arrive_out_of_order_are_handed_on_in_order() -> None:
    rows = list(range(50))
    started = {offset: threading.Event() for offset in range(5, 50, 5)}
    release = {offset: threading.Event() for offset in range(5, 50, 5)}
    answered: list[int] = []
    done = {offset: threading.Event() for offset in range(5, 50, 5)}

    def fetch(offset: int, limit: int) -> dict[str, Any]:
        started[offset].set()
        assert release[offset].wait(60), "the test never released this page"
        answered.append(offset)
        done[offset].set()
        return {
            "meta": {"limit": limit, "offset": offset, "total_count": 50},
            "objects": [{"id": row} for row in rows[offset : offset + limit]],
        }

    def release_backwards() -> None:
        for group in ((5, 10, 15, 20), (25, 30, 35, 40), (45,)):
            for offset in group:
                assert started[offset].wait(60)
            for offset in reversed(group):
                release[offset].set()
                assert done[offset].wait(60)  # answered before the next one is released

    releaser = threading.Thread(target=release_backwards)
    releaser.start()
    first = {"meta": {"limit": 5, "offset": 0, "total_count": 50}, "objects": [{"id": r} for r in rows[:5]]}
    reader = OverlappedReader(fetch, FakeList(rows).follow, id_field="id", max_in_flight=4)
    offsets = [offset for offset, _payload, _repeated in reader.read(0, first)]
    releaser.join()
    assert answered[:4] == [20, 15, 10, 5]  # the network answered backwards...
    assert offsets == list(range(0, 55, 5))  # ...the pages came out in order (and the tail check)


def test_a_list_that_fits_in_one_page_or_has_no_count_is_not_overlapped() -> None:
    assert overlap_plan({"meta": {"limit": 5, "offset": 0, "total_count": 5}, "objects": [{}] * 5}) is None
    assert overlap_plan({"meta": {"limit": 5, "offset": 0}, "objects": [{}] * 5}) is None
    assert overlap_plan({"meta": {"limit": 5, "offset": 0, "total_count": 9}, "objects": [{}] * 3}) is None
    assert overlap_plan({"meta": {"limit": 5, "offset": 0, "total_count": 9}, "objects": [{}] * 5}) == (5, 9)


def test_rows_added_at_the_end_during_the_read_are_read_too() -> None:
    source = FakeList(list(range(20)), {3: lambda rows: rows.extend([100, 101, 102])})
    got, _ = read_all(source, 5)
    assert got == [*range(20), 100, 101, 102]


def test_a_row_added_before_the_read_position_doubles_nothing() -> None:
    source = FakeList([n * 10 for n in range(20)], {4: lambda rows: rows.append(15)})
    got, _ = read_all(source, 5, in_flight=2)
    assert len(got) == len(set(got))
    assert set(got) >= {n * 10 for n in range(20)}


def test_a_row_removed_before_the_read_position_loses_nothing() -> None:
    source = FakeList(list(range(40)), {5: lambda rows: rows.remove(3)})
    got, reader = read_all(source, 5, in_flight=2)
    assert len(got) == len(set(got))
    assert set(got) >= set(range(40)) - {3}
    assert reader.fallbacks >= 1


@settings(max_examples=150, deadline=None)
@given(
    extra=st.integers(min_value=1, max_value=50),
    limit=st.integers(min_value=2, max_value=7),
    in_flight=st.integers(min_value=2, max_value=5),
    grow=st.booleans(),
    steps=st.lists(st.tuples(st.integers(1, 15), st.integers(0, 10_000)), max_size=4),
)
def test_a_list_that_only_grows_or_only_shrinks_while_read_loses_and_doubles_nothing(
    extra: int, limit: int, in_flight: int, grow: bool, steps: list[tuple[int, int]]
) -> None:
    """Every row there for the whole read arrives exactly once, whatever the timing (threads)."""
    size = limit + extra
    removed: set[int] = set()

    def change(seed: int) -> Any:
        def apply(rows: list[int]) -> None:
            if grow:
                if seed * 2 + 1 not in rows:
                    rows.append(seed * 2 + 1)  # odd ids: new rows anywhere in the order
            elif rows:
                victim = rows[seed % len(rows)]
                rows.remove(victim)
                removed.add(victim)

        return apply

    changes: dict[int, Any] = {}
    for fetch, seed in steps:
        changes.setdefault(fetch, change(seed))
    original = [n * 2 for n in range(size)]  # even ids
    got, _ = read_all(FakeList(original, changes), limit, in_flight)
    assert len(got) == len(set(got)), "a row was handed on twice"
    missing = set(original) - removed - set(got)
    assert not missing, f"rows lost: {sorted(missing)}"


def test_a_reader_refuses_one_request_in_flight() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        OverlappedReader(lambda o, l: {}, FakeList([]).follow, id_field="id", max_in_flight=1)
