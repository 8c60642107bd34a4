"""``kill -9`` aimed at committed progress, whatever the machine's load.

A test that kills a run mid-way reads how far the run has committed (a checkpoint row, a counter
of applied events) and kills once it passes a threshold.  Polled from outside, a fast run on a
busy machine can finish between two reads, and the test then has nothing to resume.  Here the
child runs in short steps instead: it is stopped (``SIGSTOP``) while its progress is read and
continued (``SIGCONT``) between reads, so it is always caught within one step of the threshold,
however slow the reads or the machine.  ``progress`` must only read, through
``bridge.state.stores.read_connection``: a stopped child may hold SQLite's write lock, which a
deferred reader in WAL mode never waits for (the engine's default ``BEGIN IMMEDIATE`` would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

STEP_SECONDS = 0.005
"""How long the child runs between two reads of its progress (its step, not a synchronisation)."""


def kill_at_progress(
    proc: subprocess.Popen[str], progress: Callable[[], int], threshold: int, *, timeout: float = 300.0
) -> bool:
    """SIGKILL ``proc`` once ``progress()`` is at least ``threshold``; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            reached = progress() >= threshold
        except BaseException:
            os.kill(proc.pid, signal.SIGCONT)
            raise
        if reached:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(STEP_SECONDS)
    raise AssertionError(f"the run did not reach {threshold} within {timeout:.0f} s")


def read_or_zero(engine: Engine, read: Callable[[Engine], int]) -> Callable[[], int]:
    """``read(engine)``, or 0 while the child has not created what it reads yet."""

    def progress() -> int:
        try:
            return read(engine)
        except SQLAlchemyError:
            return 0

    return progress
