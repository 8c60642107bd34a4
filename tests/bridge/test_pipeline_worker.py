"""A backfill whose transactions are fetched and mapped in a worker process gives the in-process result."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import RunFailedError
from bridge.pipeline import RunOptions
from bridge.wiring import ClientFactory
from tests.bridge.conftest import SPACE, Bridge, checksum, event_count


def _with_factory(bridge: Bridge, **overrides: Any) -> None:
    kwargs: dict[str, Any] = {
        **bridge.box.client_kwargs(),
        "page_size": 50,
        "requests_per_second": None,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "timeout": 5.0,
        **overrides,
    }
    bridge.client.perkbridge_factory = ClientFactory(kwargs)  # type: ignore[attr-defined]


def test_fetch_and_map_worker_backfill_equals_the_in_process_one(bridge: Bridge) -> None:
    ledger = bridge.box.ledger
    victim = next(t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points)
    victim.classification = "BOGUS"  # one dead letter: its raw row must come back from the worker
    _with_factory(bridge)
    summary = bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    rows = list(ledger.txns.values())
    not_refs = sum(1 for t in rows if t.status != "VOID_REF")
    voids = sum(1 for t in rows if t.status == "VOID")
    skipped = len(rows) - not_refs
    assert summary.kinds["transaction"] == {
        "read": len(rows), "applied": not_refs - 1, "duplicate": 0, "skipped": skipped, "dead_lettered": 1,
    }
    assert event_count(bridge.engine) == not_refs - 1 + voids
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.record_id == str(victim.id) and letter.raw["classification"] == "BOGUS"
    after_worker = checksum(bridge.engine)

    again = bridge.pipeline(map_workers=0).run(RunOptions(kind="backfill"))
    assert again.counts.applied == 0 and again.counts.dead_lettered == 1
    assert checksum(bridge.engine) == after_worker


def test_a_failing_worker_fails_the_run_with_a_clear_error(bridge: Bridge) -> None:
    _with_factory(bridge, password="wrong-password-VALUE")
    with pytest.raises(RunFailedError) as failed:
        bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert "worker process" in str(failed.value)
    assert "wrong-password-VALUE" not in str(failed.value)


def test_a_row_the_core_refuses_is_dead_lettered_the_same_with_and_without_the_worker(
    bridge: Bridge,
) -> None:
    """The worker runs the core's event checks: a refused row becomes the same dead letter."""
    ledger = bridge.box.ledger
    victim = next(t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points)
    victim.title = "Purchase\x00 (per $10)"  # NUL: neither database can store it
    _with_factory(bridge)
    summary = bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    assert summary.counts.dead_lettered == 1
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert letter.record_id == str(victim.id)
    assert letter.reason == "rejected_invalid_text"
    assert "context.perk_title" in letter.detail
    assert letter.raw["title"] == victim.title  # the raw row travelled back from the worker
    after_worker = checksum(bridge.engine)

    again = bridge.pipeline(map_workers=0).run(RunOptions(kind="backfill"))
    assert again.counts.applied == 0 and again.counts.dead_lettered == 1
    (letter_again,) = [d for d in bridge.state.dead_letters.list(bridge.business) if d.record_id == str(victim.id)]
    assert letter_again.reason == "rejected_invalid_text"
    assert checksum(bridge.engine) == after_worker


def test_joined_pages_cover_the_rows_drops_and_offsets_of_their_parts() -> None:
    from bridge.pipeline import WorkerPage, _joined

    pages = [
        WorkerPage(size=25, meta={"total_count": 90}, offset=0, dropped=0, ordered=True),
        WorkerPage(size=23, meta={"total_count": 90}, offset=25, dropped=2, ordered=True),
        WorkerPage(size=25, meta={"total_count": 91}, offset=50, dropped=0, ordered=False),
    ]
    joined = _joined(pages)
    assert (joined.size, joined.offset, joined.dropped, joined.ordered) == (73, 0, 2, False)
    assert joined.meta == {"total_count": 91}  # the latest page's view of the source
    # The next offset after the group is the one after its last page.
    assert joined.offset + joined.size + joined.dropped == pages[-1].offset + pages[-1].size + pages[-1].dropped
    assert _joined(pages[:1]) is pages[0]


def test_the_worker_sender_delivers_every_message_in_order_before_close_returns() -> None:
    import multiprocessing
    import pickle

    from bridge.pipeline import _Sender

    read, write = multiprocessing.get_context("spawn").Pipe(duplex=False)
    received: list[Any] = []
    try:
        sender = _Sender(write, ahead=3)
        for n in range(3):  # the queue holds these while nobody reads
            sender.send(("page", n, "x" * 1000))
        for n in range(3, 40):
            sender.send(("page", n, "x" * 1000))
            received.append(pickle.loads(read.recv_bytes()))
        sender.send(("done",))
        while len(received) < 41:
            received.append(pickle.loads(read.recv_bytes()))
        sender.close()
    finally:
        read.close()
        write.close()
    assert [m[1] for m in received[:-1]] == list(range(40))
    assert received[-1] == ("done",)


def test_the_worker_sender_stops_with_parent_gone_when_nobody_reads_any_more() -> None:
    import multiprocessing

    from bridge.pipeline import _ParentGone, _Sender

    read, write = multiprocessing.get_context("spawn").Pipe(duplex=False)
    read.close()  # the parent ended: its end of the pipe is closed
    sender = _Sender(write, ahead=2)
    try:
        with pytest.raises(_ParentGone):
            for n in range(50):  # never more than the queue and one failed write
                sender.send(("page", n, "x" * 1000))
        with pytest.raises(_ParentGone):
            sender.close()
    finally:
        write.close()


def _record_order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which came first: the worker's job, or the members phase."""
    from bridge.pipeline import FetchMapWorker, Pipeline

    order: list[str] = []
    start, connections = FetchMapWorker.start, Pipeline._phase_connections

    def spy_start(self: Any, job: Any) -> None:
        order.append("job")
        start(self, job)

    def spy_connections(self: Any, *args: Any, **kwargs: Any) -> Any:
        order.append("members")
        return connections(self, *args, **kwargs)

    monkeypatch.setattr(FetchMapWorker, "start", spy_start)
    monkeypatch.setattr(Pipeline, "_phase_connections", spy_connections)
    return order


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("perkville_user", ["job", "members"]), ("external_member", ["members", "job"])],
    ids=["default-ids:early", "member-ids:after-members"],
)
def test_the_worker_gets_its_job_before_the_members_only_when_their_ids_cannot_change_it(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch, strategy: str, expected: list[str]
) -> None:
    order = _record_order(monkeypatch)
    _with_factory(bridge)
    summary = bridge.pipeline(map_workers=1, id_strategy=strategy).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    assert order == expected
    after_worker = checksum(bridge.engine)
    again = bridge.pipeline(map_workers=0, id_strategy=strategy).run(RunOptions(kind="backfill"))
    assert again.counts.applied == 0
    assert checksum(bridge.engine) == after_worker


def test_an_early_job_mapped_with_ids_the_members_phase_changed_is_thrown_away(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.pipeline import DefaultCustomerIds, Pipeline

    victim = next(t for t in bridge.box.ledger.txns.values() if t.status == "ACTIVE" and t.points)
    user = str(victim.user_id)
    real = Pipeline._customer_ids
    calls: list[int] = []

    def changing(self: Any) -> Any:
        # The first call (the early job) sees the default id; later ones an id assigned meanwhile.
        ids = real(self)
        calls.append(len(calls))
        return ids if len(calls) == 1 else DefaultCustomerIds({**ids, user: f"custom:{user}"})

    monkeypatch.setattr(Pipeline, "_customer_ids", changing)
    order = _record_order(monkeypatch)
    _with_factory(bridge)
    summary = bridge.pipeline(map_workers=1).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded" and summary.counts.balanced
    assert order == ["job", "members", "job"]  # the early worker was closed, a fresh one started
    balances = bridge.service.wallet_balances(SPACE)
    assert f"custom:{user}" in balances  # the rows were mapped with the final ids


def test_same_ids_compares_what_each_map_answers_for_every_user() -> None:
    from bridge.pipeline import DefaultCustomerIds, _same_ids

    assert _same_ids(DefaultCustomerIds({}), DefaultCustomerIds({"7": "perkville:7"}))
    assert _same_ids(DefaultCustomerIds({"7": "m-7"}), DefaultCustomerIds({"7": "m-7", "8": "perkville:8"}))
    assert not _same_ids(DefaultCustomerIds({}), DefaultCustomerIds({"7": "m-7"}))
    assert not _same_ids(DefaultCustomerIds({"7": "m-7"}), DefaultCustomerIds({}))


class _FakeWorker:
    """Messages as a worker would send them; ``ready`` says whether the next one has arrived."""

    def __init__(self, pages: int, here_at_start: int) -> None:
        from bridge.pipeline import WorkerPage

        self.messages: list[Any] = [
            ("page", WorkerPage(size=1, meta={}, offset=n, dropped=0, ordered=True), [(f"r{n}", [], None, True, None)])
            for n in range(pages)
        ] + [("done",)]
        self.arrived = here_at_start
        self.closed = False

    def start(self, job: Any) -> None:
        raise AssertionError("the job was sent already")

    def ready(self) -> bool:
        return self.arrived > 0

    def receive(self) -> Any:
        self.arrived = max(self.arrived - 1, 0)
        return self.messages.pop(0)

    def close(self) -> None:
        self.closed = True


def test_the_first_delivery_takes_the_pages_already_here_and_later_ones_fill_up() -> None:
    from bridge.pipeline import GROUP_PAGES, fetched_and_mapped

    fake = _FakeWorker(pages=3 + 2 * GROUP_PAGES, here_at_start=3)
    groups: list[list[str]] = []
    for _, records in fetched_and_mapped(
        lambda: None, ("b", [], {}), ("b", "UTC", None),
        group_rows=10 * GROUP_PAGES, worker=fake, job_sent=True,  # type: ignore[arg-type]
    ):
        groups.append([r.record_id for r in records])
        fake.arrived = 0  # while a delivery is ingested the rest arrives, but is never "here" yet
    assert [len(g) for g in groups] == [3, GROUP_PAGES, GROUP_PAGES]
    assert [r for g in groups for r in g] == [f"r{n}" for n in range(3 + 2 * GROUP_PAGES)]
    assert fake.closed
