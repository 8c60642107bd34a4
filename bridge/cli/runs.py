"""What the run commands share: their options, the parts they open, progress and the error seam."""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json

if TYPE_CHECKING:
    from bridge.opening import SourceOpening
    from bridge.wiring import RunParts

BusinessOpt = typer.Option(None, "--business", help="Perkville business id (default PERKVILLE_BUSINESS_ID).")
SpaceOpt = typer.Option(None, "--space", help="Space slug in the embedded core (default PERKAMO_SPACE).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
WaitOpt = typer.Option(False, "--wait", help="Wait for a concurrent run of this business to finish.")


ONE_SHOT_GC_THRESHOLD = 20_000
"""Allocations between young-generation collections in a one-shot run (the interpreter's default: 700)."""


@contextmanager
def one_shot_gc() -> Iterator[None]:
    """Garbage collection for a one-shot run (``backfill``, ``sync``), restored when it ends.

    The objects of start-up (modules, classes, the schema; a few hundred thousand) live until the
    process ends: frozen, no full collection walks them again. Young collections run every
    ``ONE_SHOT_GC_THRESHOLD`` allocations instead of every 700: a page's mapping allocates tens of
    thousands of short-lived containers, almost all freed by reference counting, and collecting
    that often cost about a tenth of a backfill's CPU (bench/README.md). Reference cycles are
    still collected, later. A long-running process (``serve``, ``worker``) keeps the defaults.
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(ONE_SHOT_GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def started_up() -> None:
    """Inside ``one_shot_gc``, once the run's parts are open: what the command imported and built
    since it began (the database layer and the core are imported on use) is frozen too."""
    gc.freeze()


def errors() -> Any:
    """One-line errors with the contract's exit codes (``common.bridge_errors``)."""
    return common.bridge_errors(secrets)


def secrets() -> tuple[str, ...]:
    from bridge.wiring import secret_values

    try:
        return secret_values(common.settings())
    except BaseException:  # noqa: BLE001 - redaction must never fail the error path
        return ()


def parse_when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    from connectors.perkville.datetimes import parse_perkville_datetime

    try:
        moment = parse_perkville_datetime(value, common.settings().perkville_timezone)
    except ValueError:
        moment = None
    if moment is None:
        fail(f"{option} is not an ISO-8601 date or datetime: {value!r}", EXIT_USAGE)
    return moment.astimezone(UTC)


def make_progress(json_output: bool) -> Any:
    """Progress for the run: bars on a terminal, plain or JSON lines elsewhere (``--json``: none)."""
    from bridge.progress import make_progress as progress_for

    return progress_for(common.settings().log_format, json_output=json_output)


def close_progress(progress: Any) -> None:
    if hasattr(progress, "close"):
        progress.close()


@contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM sets the yielded stop flag: the run finishes the page it is on, commits it (events,
    checkpoint and counters in one transaction), releases its lease and returns ``stopped``.  A
    second SIGTERM ends the process at once (nothing committed is lost either way)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach only the main thread (e.g. a test runner's worker thread)
        return

    def on_sigterm(_signum: int, _frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_if_stopped(stopped: bool, title: str, run_id: int) -> None:
    """A run stopped by SIGTERM: one line saying so, exit 1 (it did not finish; like Ctrl-C)."""
    if stopped:
        fail(
            f"{title} run {run_id} stopped by SIGTERM; what it read is committed and its lease "
            "released; run the same command again to resume",
            EXIT_FAILURE,
        )


def print_run(summary: Any, json_output: bool, *, title: str) -> None:
    if json_output:
        print_json(summary.to_json())
        return
    c = summary.counts
    typer.echo(
        f"{title} run {summary.run_id} {summary.status}: read {c.read}, applied {c.applied}, "
        f"duplicate {c.duplicate}, skipped {c.skipped}, dead-lettered {c.dead_lettered} "
        f"in {summary.seconds:.1f} s"
    )
    for kind, counts in summary.kinds.items():
        typer.echo(
            f"  {kind:<12} read {counts['read']}, applied {counts['applied']}, duplicate "
            f"{counts['duplicate']}, skipped {counts['skipped']}, dead-lettered {counts['dead_lettered']}"
        )
    if c.dead_lettered:
        typer.echo("  see them with: perkbridge deadletters list")


def open_run(
    business: str | None, space: str | None, *, need_source: bool = True, opening: SourceOpening | None = None
) -> RunParts:
    """Everything a run command opens (its engine too), closed in one place by ``close``.
    ``opening``: the client the command opened first (``open_source``)."""
    from bridge.wiring import RunParts, business_of, open_engine

    settings = common.settings()
    try:
        engine = open_engine(settings)
    except BaseException:
        if opening is not None:
            opening.client.close()
        raise
    try:
        parts = RunParts(
            settings, engine, business_of(settings, business), space=space,
            with_client=need_source, owns_engine=True, opening=opening,
        )
    except BaseException:
        engine.dispose()
        raise
    return parts


def open_source(business: str | None) -> SourceOpening:
    """A run command's first step: its Perkville client, the run's first requests on their way
    while the command imports and opens the rest (``bridge.opening``)."""
    from bridge.opening import open_source as opening_of

    return opening_of(common.settings(), business)
