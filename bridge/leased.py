"""Run under a lease: the one way a run takes its business's lease and records its outcome.

``leased`` holds ``{direction}:{business}`` for the block (``LeaseHeldError`` when someone else
runs it), renews it from a thread and marks runs a dead holder left ``running`` as interrupted.
``recorded`` turns what ends a run into its run-log row: an operator's Ctrl-C → ``interrupted``;
anything else → ``failed`` with a one-line, redacted description. The failure is re-raised with
its class (``bridge.errors.classify``: configuration, credentials, retry later, conflict, …) and
the run named in its message, or as ``RunFailedError`` when nothing says what it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from bridge.errors import RunFailedError, classify, describe_failure
from bridge.redaction import redact_message
from bridge.state import LeaseKeeper, StateStore, lease_name, new_owner_id

Finish = Callable[[str, str | None], None]
"""Records a run's end in the run log: ``(status, error or None)``."""


@contextmanager
def leased(
    state: StateStore,
    business: str,
    direction: str,
    *,
    lease_seconds: int,
    wait: bool = False,
    timeout: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[LeaseKeeper]:
    """Hold the business's lease for ``direction`` while the block runs (fence writes with it).

    ``wait``: poll while someone else holds it, up to ``timeout`` seconds or until ``stop``.
    """
    ttl = timedelta(seconds=lease_seconds)
    lease = state.leases.acquire(
        lease_name(business, direction), new_owner_id(), ttl, wait=wait, timeout=timeout, stop=stop
    )
    with LeaseKeeper(state.leases, lease, ttl) as keeper:
        state.runs.interrupt_stale(business, direction)
        yield keeper


@contextmanager
def recorded(run_id: int, finish: Finish, *, what: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """Record how the block ends in run ``run_id`` (``finish``); a failure becomes ``RunFailedError``.

    ``what`` names the run in the error (``run``, ``write-back run``). The block records its own
    success: only it knows whether it finished or was stopped.
    """
    try:
        yield
    except KeyboardInterrupt:
        finish("interrupted", "interrupted by the operator")
        raise
    except BaseException as exc:
        known = classify(exc)
        message = redact_message(describe_failure(known or exc), secrets)
        finish("failed", message)
        if known is None or isinstance(known, RunFailedError):
            raise RunFailedError(f"{what} {run_id} failed: {message}", run_id=run_id) from exc
        raise known.for_run(what, run_id, message) from (None if known is exc else exc)
