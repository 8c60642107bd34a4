"""Runs the dashboard starts and leaves going after the page that started them has answered.

A rollback can take minutes; the POST that confirms it answers as soon as the rollback run is
recorded (or refused) and redirects to the run's page, which follows it live. Each such run has
its own thread and a stop event; when the server shuts down every stop event is set and the
threads are waited for: a rollback stops after its batch, recorded ``stopped`` with what it
reversed, and the same rollback resumes it (``bridge.rollback``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

log = logging.getLogger("bridge.dashboard")

Work = Callable[[threading.Event, Callable[[int], None]], object]
"""What runs in the background: given its stop event and the callback that reports the run's
id once the run is recorded."""


class Background:
    """The dashboard's background runs (one per app, ``Dashboard.background``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[threading.Thread, threading.Event] = {}
        self._closed = False

    def start(self, name: str, work: Work) -> int:
        """Start ``work`` in a thread of its own; return the run id it reports, or raise what it
        raised before reporting one (a refusal: nothing was started)."""
        started: Future[int] = Future()
        stop = threading.Event()

        def run() -> None:
            try:
                work(stop, started.set_result)
            except BaseException as exc:  # noqa: BLE001 - before the start: the caller's; after: recorded
                if not started.done():
                    started.set_exception(exc)
                else:
                    log.warning("dashboard: background %s ended with %s (recorded in its run)", name,
                                type(exc).__name__)
            finally:
                if not started.done():
                    started.set_exception(RuntimeError(f"background {name} ended without starting a run"))
                with self._lock:
                    self._running.pop(threading.current_thread(), None)

        thread = threading.Thread(target=run, name=f"dashboard-{name}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the dashboard is shutting down; start it again once it is back")
            self._running[thread] = stop
            thread.start()
        return started.result()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def stop_all(self) -> None:
        """Shutting down: ask every background run to stop and wait for each to end."""
        with self._lock:
            self._closed = True
            running = list(self._running.items())
        for _thread, stop in running:
            stop.set()
        for thread, _stop in running:
            thread.join()
