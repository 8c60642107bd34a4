"""``perkbridge worker``: one Procrastinate worker process on the shared PostgreSQL database.

Every worker defers the periodic jobs of the configured businesses (Procrastinate records each
period's deferral, so a period's job is deferred once whichever worker gets there first), runs
whatever job is due on queue ``perkbridge``, sends a heartbeat every
``schedule.worker_heartbeat_seconds`` and, every ``stalled_after_seconds / 4``, gives jobs whose
worker has sent no heartbeat for ``schedule.stalled_after_seconds`` back to the queue
(``get_stalled_jobs`` then ``retry_job``); succeeded jobs older than ``job_history_hours`` are
deleted (the history of what ran where stays that long).  Workers need nothing but the database URL: start
as many as you like, on as many machines.

SIGTERM (or SIGINT) sets the stop flag the running jobs check between pages and stops fetching
jobs; the running jobs commit their page and return, then the worker exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from procrastinate import App
from procrastinate.jobs import Status
from procrastinate.worker import Worker
from sqlalchemy import Engine

from bridge.errors import ConfigurationError
from bridge.queue.app import QUEUE, build_app, register_periodic
from bridge.scheduler import SchedulerRuntime, default_worker_name, installed_runtime, prepare_database
from bridge.state.jobs import SCHEDULER_LEASE
from bridge.state.leases import LeaseStore
from bridge.state.schema import utcnow
from bridge.wiring import scheduled_businesses
from config import Settings
from config.settings import ScheduleSettings

log = logging.getLogger("perkbridge.worker")


@dataclass(frozen=True)
class WorkerOutcome:
    signal: str | None
    businesses: tuple[str, ...]


PRUNE_EVERY_SECONDS = 600.0


async def recover_stalled(app: App, schedule: ScheduleSettings, stop: asyncio.Event) -> None:
    """Every ``stalled_after_seconds / 4``, put the jobs of silent workers back in the queue; every
    ten minutes, delete the succeeded jobs older than ``job_history_hours``."""
    stalled_after = schedule.stalled_after_seconds
    interval = max(stalled_after / 4, 0.2)
    pruned = 0.0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except TimeoutError:
            pass
        try:
            await retry_stalled(app, stalled_after)
            if loop.time() - pruned >= PRUNE_EVERY_SECONDS:
                pruned = loop.time()
                await app.job_manager.delete_old_jobs(nb_hours=schedule.job_history_hours, queue=QUEUE)
        except Exception:  # the next round tries again; recovery must not take the worker down
            log.warning("stalled-job recovery failed; retrying", exc_info=True)


async def retry_stalled(app: App, stalled_after: float) -> list[int]:
    """Retry (now, any worker) each running job whose worker is silent for ``stalled_after`` s.

    When a job of the same kind and business is already waiting (its queueing lock), the stalled
    one is marked failed instead: the waiting job resumes from the same checkpoint, and the
    stalled one must not keep holding the business's lock.
    """
    retried: list[int] = []
    stalled = await app.job_manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=stalled_after)
    for job in stalled:
        assert job.id is not None
        business = job.task_kwargs.get("business_id")
        try:
            await app.job_manager.retry_job(job)
        except Exception:
            if await app.job_manager.get_job_status_async(job.id) != Status.DOING:
                log.debug("job %s was already retried", job.id, exc_info=True)
                continue
            await app.job_manager.finish_job_by_id_async(job.id, status=Status.FAILED, delete_job=False)
            log.warning(
                "job %s (%s %s) was stalled on worker %s and the same job already waits: marked failed",
                job.id, job.task_name, business, job.worker_id,
            )
            continue
        retried.append(job.id)
        log.warning(
            "job %s (%s %s) was stalled on worker %s: retried", job.id, job.task_name, business, job.worker_id
        )
    return retried


def run_worker(
    settings: Settings,
    engine: Engine,
    *,
    config_file: str | None,
    name: str | None = None,
    concurrency: int | None = None,
) -> WorkerOutcome:
    """Run one worker in the foreground until SIGTERM/SIGINT; returns how it ended."""
    businesses = scheduled_businesses(settings)
    prepare_database(engine)  # the bridge's migrations include the queue's schema
    scheduler = LeaseStore(engine).holder(SCHEDULER_LEASE)
    if scheduler is not None and not scheduler.expired(utcnow()):
        raise ConfigurationError(
            f"perkbridge schedule runs against this database ({scheduler.owner}) and runs the same jobs: "
            "stop it before starting workers (docs/scheduling.md)"
        )
    app = build_app(settings, worker=True)
    register_periodic(app, settings, businesses)
    runtime = SchedulerRuntime(worker=name or default_worker_name(), engine=engine, config_file=config_file)
    received = asyncio.run(_serve(app, runtime, settings, concurrency))
    return WorkerOutcome(received, tuple(businesses))


def use_job_threads(loop: asyncio.AbstractEventLoop, slots: int) -> None:
    """A thread for every job slot, plus four for the connector's own blocking calls.

    Procrastinate runs a synchronous job through asgiref's ``sync_to_async`` (not thread
    sensitive), that is in the loop's default executor, which asyncio sizes by the CPU count
    (``min(32, cpus + 4)``: 6 threads on 2 cores) and which the connector's blocking calls share: a
    ``worker_concurrency`` above that would be capped there, silently.
    """
    loop.set_default_executor(ThreadPoolExecutor(max_workers=slots + 4, thread_name_prefix="perkbridge-job"))


async def _serve(
    app: App, runtime: SchedulerRuntime, settings: Settings, concurrency: int | None
) -> str | None:
    schedule = settings.schedule
    received: list[str] = []
    slots = concurrency or schedule.worker_concurrency
    use_job_threads(asyncio.get_running_loop(), slots)
    async with app.open_async():
        worker = Worker(
            app,
            queues=[QUEUE],
            name=runtime.worker,
            concurrency=slots,
            install_signal_handlers=False,
            update_heartbeat_interval=schedule.worker_heartbeat_seconds,
            stalled_worker_timeout=schedule.stalled_after_seconds,
            fetch_job_polling_interval=min(5.0, schedule.worker_heartbeat_seconds),
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            if not received:
                log.info("%s: the running jobs finish their page, then the worker exits", signum.name)
            received.append(signum.name)
            runtime.stop.set()
            stopping.set()
            worker.stop()  # type: ignore[no-untyped-call]

        for wanted in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(wanted, on_signal, wanted)
        recovery = asyncio.create_task(recover_stalled(app, schedule, stopping))
        log.info("worker %s ready on queue %s", runtime.worker, QUEUE)
        try:
            with installed_runtime(runtime):
                await worker.run()  # type: ignore[no-untyped-call]
        finally:
            stopping.set()
            await recovery
            for wanted in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(wanted)
    return received[0] if received else None
