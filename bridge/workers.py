"""Several ``perkbridge schedule`` workers on one database share the businesses through leases.

Three kinds of lease (all in the bridge's lease store, ``bridge.state.leases``):

- ``scheduler-slot:{n}`` — a live worker holds one slot.  The slot names the worker's APScheduler
  job-store table (job stores must never be shared between schedulers) and the number of live
  slots is the number of live workers.
- ``schedule:{business}`` — ownership: the worker holding it runs that business's jobs.  Each
  worker claims free or expired businesses up to its fair share ``ceil(businesses / workers)``
  and hands back any excess, so a new worker gets work and a dead worker's businesses are
  taken over by the others once its leases expire.
- ``{direction}:{business}`` — the run lease the pipeline and write-back take around each run,
  with a fence in every page transaction.  It, not ownership, is what guarantees that no
  business ever has two runners at once: ownership only spreads the work.

A heartbeat thread renews the slot and the owned businesses every ``lease_seconds / 3``.  A
worker that loses its slot stops (another process now uses its job store).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine

from bridge.scheduler import (
    JobContext,
    JobSkipped,
    SchedulerRuntime,
    prepare_database,
    run_scheduler,
)
from bridge.state.leases import LeaseStore, lease_name, new_owner_id
from bridge.state.schema import utcnow
from bridge.wiring import scheduled_businesses
from config import Settings

log = logging.getLogger("perkbridge.workers")

SLOT_PREFIX = "scheduler-slot:"
OWNER_DIRECTION = "schedule"
MAX_SLOTS = 64


class NoFreeSlotError(Exception):
    """Every worker slot is held by a live worker."""


def fair_share(businesses: int, workers: int) -> int:
    """How many businesses one worker may own: ``ceil(businesses / workers)`` (at least 1)."""
    return max(1, math.ceil(businesses / max(1, workers)))


class WorkerCoordinator:
    """One worker's view of the shared leases: its slot, the businesses it owns, the heartbeat."""

    def __init__(
        self,
        engine: Engine,
        businesses: Sequence[str],
        *,
        owner: str,
        lease_seconds: float,
        store: LeaseStore | None = None,
        max_slots: int = MAX_SLOTS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.businesses = list(dict.fromkeys(businesses))
        self.owner = owner
        self.ttl = timedelta(seconds=lease_seconds)
        self.clock = clock
        self.store = store or LeaseStore(engine, clock=clock)
        self.max_slots = max_slots
        self.slot: int | None = None
        self.lost = threading.Event()
        """Set when this worker's slot was taken over: the worker must stop."""
        self._owned: set[str] = set()
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- slot ------------------------------------------------------------------------------

    def claim_slot(self) -> int:
        """Take the lowest free worker slot (``NoFreeSlotError`` when all are held)."""
        for slot in range(1, self.max_slots + 1):
            if self.store.try_acquire(f"{SLOT_PREFIX}{slot}", self.owner, self.ttl) is not None:
                self.slot = slot
                return slot
        raise NoFreeSlotError(
            f"all {self.max_slots} scheduler worker slots are held by live workers"
        )

    def live_workers(self) -> int:
        now = self.clock()
        return sum(
            1
            for lease in self.store.all()
            if lease.name.startswith(SLOT_PREFIX) and not lease.expired(now)
        )

    # -- ownership ---------------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._owned)

    def heartbeat(self) -> None:
        """Renew the slot and owned businesses, claim up to the fair share, hand back excess."""
        if self.slot is not None and not self.store.renew(
            f"{SLOT_PREFIX}{self.slot}", self.owner, self.ttl
        ):
            log.error("worker slot %s was taken over; this worker stops", self.slot)
            self.lost.set()
            return
        share = fair_share(len(self.businesses), self.live_workers())
        with self._lock:
            for business in sorted(self._owned):
                if not self.store.renew(self._owner_lease(business), self.owner, self.ttl):
                    log.warning("business %s was taken over by another worker", business)
                    self._owned.discard(business)
            # Hand back what exceeds the share (never a business whose job is running now).
            for business in sorted(self._owned, reverse=True):
                if len(self._owned) <= share:
                    break
                if business not in self._running:
                    self.store.release(self._owner_lease(business), self.owner)
                    self._owned.discard(business)
                    log.info("handed business %s back (fair share %s)", business, share)
            for business in self._claim_order():
                if len(self._owned) >= share:
                    break
                if business in self._owned:
                    continue
                if self.store.try_acquire(self._owner_lease(business), self.owner, self.ttl):
                    self._owned.add(business)
                    log.info("now running business %s", business)

    def _claim_order(self) -> list[str]:
        # Start at an offset per slot so that workers starting together do not all race for
        # the same first business.
        if not self.businesses:
            return []
        offset = ((self.slot or 1) - 1) % len(self.businesses)
        return self.businesses[offset:] + self.businesses[:offset]

    @staticmethod
    def _owner_lease(business: str) -> str:
        return lease_name(business, OWNER_DIRECTION)

    @contextmanager
    def gate(self, context: JobContext) -> Iterator[None]:
        """Let the job run only if this worker owns its business (``JobSkipped`` otherwise)."""
        business = context.business_id
        with self._lock:
            if business not in self._owned:
                raise JobSkipped(f"business {business} is run by another worker")
            self._running[business] = self._running.get(business, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[business] -= 1
                if not self._running[business]:
                    del self._running[business]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Claim a slot (if not yet), take a first share and start the heartbeat thread."""
        if self.slot is None:
            self.claim_slot()
        self.heartbeat()
        self._thread = threading.Thread(target=self._beat, name="perkbridge-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.ttl.total_seconds() / 3, 0.2)
        while not self._stop.wait(interval):
            try:
                self.heartbeat()
            except Exception:  # a failed heartbeat is retried; leases outlive one miss
                log.warning("scheduler heartbeat failed; retrying", exc_info=True)
            if self.lost.is_set():
                return

    def close(self) -> None:
        """Stop the heartbeat and give every lease back so other workers take over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for business in sorted(self._owned):
                self.store.release(self._owner_lease(business), self.owner)
            self._owned.clear()
        if self.slot is not None and not self.lost.is_set():
            self.store.release(f"{SLOT_PREFIX}{self.slot}", self.owner)


def run_worker(settings: Settings, engine: Engine, *, config_file: str | None) -> int:
    """One ``perkbridge schedule`` process: slot and business leases around the scheduler.

    Returns the exit code: 0 after SIGTERM/SIGINT (leases handed back at once), 1 when the
    worker lost its slot lease and stopped.
    """
    businesses = scheduled_businesses(settings)
    prepare_database(engine)
    owner = new_owner_id()
    coordinator = WorkerCoordinator(
        engine, businesses, owner=owner, lease_seconds=settings.schedule.lease_seconds
    )
    slot = coordinator.claim_slot()
    runtime = SchedulerRuntime(worker=owner, engine=engine, gate=coordinator.gate)
    log.info("worker %s in slot %s; businesses %s", owner, slot, ", ".join(businesses))

    def stop_when_lost() -> None:
        while not runtime.stop.is_set():
            if coordinator.lost.wait(0.5):
                runtime.stop.set()
                return

    try:
        coordinator.start()
        threading.Thread(target=stop_when_lost, name="perkbridge-slotwatch", daemon=True).start()
        run_scheduler(settings, engine, runtime, config_file=config_file, slot=slot)
    finally:
        runtime.stop.set()
        coordinator.close()
    return 1 if coordinator.lost.is_set() else 0
