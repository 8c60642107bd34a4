"""Group commit of single events: concurrent ``POST /v1/events`` calls share ``ingest_bulk`` calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from perkamo_core.errors import CoreError
from perkamo_core.models import EventInput, IngestOutcome

if TYPE_CHECKING:
    from perkamo_core.service import CoreService


class EventWriter:
    """Applies concurrent ``POST /v1/events`` calls together through ``ingest_bulk``.

    Requests that arrive while a bulk is being written wait for the next one, so an idle server
    writes each event at once and a busy one commits many events per transaction.  Results are
    exactly the per-event results, in arrival order per Space.
    """

    def __init__(self, service: CoreService, *, max_batch: int = 100) -> None:
        self._service = service
        self._max_batch = max_batch
        self._pending: list[tuple[str, EventInput, asyncio.Future[IngestOutcome]]] = []
        self._running = False
        self._executor: ThreadPoolExecutor | None = None

    async def ingest(self, space: str, event: EventInput) -> IngestOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestOutcome] = loop.create_future()
        self._pending.append((space, event, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perkamo-events")
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._apply, batch)
                except BaseException as exc:  # hand the failure to every waiting request
                    outcomes = [exc] * len(batch)
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._running = False

    def _apply(self, batch: list[tuple[str, EventInput, Any]]) -> list[IngestOutcome | BaseException]:
        """One ``ingest_bulk`` per Space; when a bulk fails as a whole, its events are written one by
        one, so a failure is answered only to the request that caused it (no request fails because
        another one shared its transaction)."""
        outcomes: list[IngestOutcome | BaseException] = [CoreError("the event was not processed")] * len(batch)
        by_space: dict[str, list[int]] = {}
        for index, (space, _, _) in enumerate(batch):
            by_space.setdefault(space, []).append(index)
        for space, indexes in by_space.items():
            try:
                results: Sequence[IngestOutcome | BaseException] = self._service.ingest_bulk(
                    space, [batch[i][1] for i in indexes]
                )
            except Exception as exc:
                results = [self._apply_one(space, batch[i][1]) for i in indexes] if len(indexes) > 1 else [exc]
            for index, outcome in zip(indexes, results, strict=True):
                outcomes[index] = outcome
        return outcomes

    def _apply_one(self, space: str, event: EventInput) -> IngestOutcome | BaseException:
        try:
            return self._service.ingest_bulk(space, [event])[0]
        except Exception as exc:
            return exc

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
