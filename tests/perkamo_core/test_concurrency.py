"""Two writers ingesting for the same customers at once lose no update, on both databases."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import Engine

from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SPACE, make_service, purchase

ROUNDS = 15


def run_together(*workers: Callable[[], None]) -> None:
    """Start ``workers`` on threads at the same moment; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def wrap(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=30)
                work()
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(w)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    if errors:
        raise errors[0]


def test_two_single_event_writers_on_one_customer(db_engine: Engine) -> None:
    make_service(db_engine)
    applied: list[bool] = []

    def writer(prefix: str) -> Callable[[], None]:
        service = CoreService(db_engine)  # each writer has its own service, as two workers would
        def work() -> None:
            for i in range(ROUNDS):
                applied.append(service.ingest(SPACE, purchase("shared", f"{prefix}{i}"))["applied"])
                # Both writers also send the same ids: exactly one of each pair applies.
                applied.append(service.ingest(SPACE, purchase("shared", f"both{i}"))["applied"])
        return work

    run_together(writer("a"), writer("b"))

    service = CoreService(db_engine)
    assert applied.count(True) == 3 * ROUNDS
    assert service.wallet_balances(SPACE) == {"shared": Decimal(50 * 3 * ROUNDS)}
    assert service.ledger_sums(SPACE, "shared") == {"points": Decimal(50 * 3 * ROUNDS)}
    assert service.customer(SPACE, "shared")["level"]["current"] == 50 * 3 * ROUNDS


def test_two_bulk_writers_with_overlapping_customers_in_opposite_order(db_engine: Engine) -> None:
    make_service(db_engine)
    users = [f"u{i}" for i in range(6)]
    shared: list[str] = []

    def writer(prefix: str, order: list[str]) -> Callable[[], None]:
        service = CoreService(db_engine)
        def work() -> None:
            for i in range(ROUNDS):
                page = [purchase(u, f"{prefix}:{u}:{i}") for u in order]
                page.append(EventInput(user_id=order[0], event="purchase.completed",
                                       transaction_id=f"both:{i}"))
                outcomes = service.ingest_bulk(SPACE, page)
                assert all(o.ok for o in outcomes[:-1])
                # The shared id carries another customer in each writer: the one that comes
                # second gets a conflict, not the other customer's result.
                last = outcomes[-1]
                shared.append("applied" if last.ok else last.error.code if last.error else "?")
        return work

    run_together(writer("a", users), writer("b", list(reversed(users))))
    assert sorted(shared) == ["applied"] * ROUNDS + ["transaction_id_conflict"] * ROUNDS

    balances = CoreService(db_engine).wallet_balances(SPACE)
    # Each writer gave every user one event per round; each shared id applied once, to the
    # first user of whichever writer won it (u0 or u5).
    for u in users[1:-1]:
        assert balances[u] == Decimal(50 * 2 * ROUNDS)
    assert balances["u0"] + balances["u5"] == Decimal(50 * 5 * ROUNDS)
    assert min(balances["u0"], balances["u5"]) >= Decimal(50 * 2 * ROUNDS)
    for u in users:
        assert CoreService(db_engine).ledger_sums(SPACE, u) == {"points": balances[u]}
