"""A gate in the sandbox for tests that must act while a run is at a known point: requests for
``transactions`` pages at or past an offset (of one business, or of any) wait until the test opens
the gate.

Only pages of the list are held, never a run's query for the newest row (``order_by`` newest
first: its signposts and balance-mode cut-over). A command reads its signposts while it starts
up, before it holds its lease (``bridge.opening``): a gate reached there would say nothing about
where the run is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connectors.perkville.sandbox import Sandbox
from connectors.perkville.sandbox.server import _Handler

GATE_SECONDS = 120.0
"""The longest a gated request waits: a test that forgets to open its gate still ends."""


class TransactionsGate:
    """``reached`` is set when the sandbox was asked for a gated page; ``open()`` lets it be served."""

    def __init__(self, offset: int, business: int | None = None) -> None:
        self.offset = offset
        self.business = business
        self.reached = threading.Event()
        self._open = threading.Event()

    def holds(self, resource: str, params: list[tuple[str, str]]) -> bool:
        values = dict(params)
        if self.business is not None and values.get("business") != str(self.business):
            return False
        if resource != "transactions" or any(k == "order_by" and v.startswith("-") for k, v in params):
            return False
        return int(values.get("offset", 0) or 0) >= self.offset

    def wait_here(self) -> None:
        self.reached.set()
        self._open.wait(GATE_SECONDS)

    def open(self) -> None:
        self._open.set()


@contextmanager
def gated_transactions(box: Sandbox, offset: int, business: int | None = None) -> Iterator[TransactionsGate]:
    """Hold every ``transactions`` page at ``offset`` or later (of ``business`` only, if given) until
    ``gate.open()`` (or the block ends)."""
    gate = TransactionsGate(offset, business)

    class Gated(_Handler):
        def _list(self, resource: str, params: list[tuple[str, str]]) -> Any:
            if gate.holds(resource, params):
                gate.wait_here()
            return super()._list(resource, params)

    server = box.server
    original = server.RequestHandlerClass
    server.RequestHandlerClass = Gated
    try:
        yield gate
    finally:
        gate.open()
        server.RequestHandlerClass = original
