"""``perkbridge deadletters list|retry|discard``: records that could not be delivered."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json
from bridge.cli.runs import (
    BusinessOpt,
    JsonOpt,
    SpaceOpt,
    WaitOpt,
    close_progress,
    errors,
    make_progress,
    open_run,
)

deadletters_app = typer.Typer(
    name="deadletters", help="List, retry or discard records that could not be delivered.", no_args_is_help=True
)


class LetterStatus(str, Enum):
    """What ``deadletters list --status`` accepts."""

    open = "open"
    resolved = "resolved"
    discarded = "discarded"
    all = "all"


@contextmanager
def _choice_errors() -> Iterator[None]:
    """An unknown or closed ``--id`` is a usage error: its one line and exit 2."""
    from bridge.deadletters import DeadLetterChoiceError

    try:
        yield
    except DeadLetterChoiceError as exc:
        fail(exc.message, EXIT_USAGE)


@deadletters_app.command("list")
def deadletters_list(
    business: str | None = BusinessOpt,
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    status_filter: LetterStatus = typer.Option(LetterStatus.open, "--status", help="Which dead letters."),
    limit: int = typer.Option(100, "--limit", min=1),
    raw: bool = typer.Option(
        False, "--raw", help="Include the raw Perkville record (secrets redacted, as the dashboard shows it)."
    ),
    json_output: bool = JsonOpt,
) -> None:
    """Dead letters with their reason, run and attempt count.

    The raw record and the detail are shown with secrets redacted (``bridge.redaction``, as on the
    dashboard); the database keeps them as they came.
    """
    from bridge.wiring import open_engine, open_state, secret_values

    with errors():
        settings = common.settings()
        engine = open_engine(settings)
        try:
            letters = open_state(engine).dead_letters.list(
                business or settings.perkville_business_id,
                status=None if status_filter is LetterStatus.all else status_filter.value,
                reason=reason,
                limit=limit,
            )
        finally:
            engine.dispose()
        known = secret_values(settings)
    letters = [d.redacted(known) for d in letters]
    if json_output:
        print_json([d.to_json(with_raw=raw) for d in letters])
        return
    if not letters:
        typer.echo("no dead letters")
    for d in letters:
        typer.echo(
            f"#{d.id:<5} {d.business:<8} {d.kind:<12} {d.record_id:<14} {d.reason:<28} "
            f"attempts {d.attempts}  run {d.run_id}  {d.status}\n      {d.detail or ''}"
        )
        if raw:
            typer.echo("      " + common.dumps(d.raw, indent=None))


@deadletters_app.command("retry")
def deadletters_retry(
    business: str | None = BusinessOpt,
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    ids: list[int] = typer.Option([], "--id", help="Only these dead letters (repeatable)."),
    wait: bool = WaitOpt,
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """Map and deliver open dead letters again; those that now go through are resolved.

    Exit 1 when any of them still fails (they stay open, with one more attempt).
    """
    from bridge import deadletters

    with errors(), _choice_errors():
        ctx = open_run(business, space)
        progress = make_progress(json_output)
        try:
            result = deadletters.retry(ctx, reason=reason, ids=ids, wait=wait, progress=progress)
        finally:
            close_progress(progress)
            ctx.close()
    summary, back = result.run, result.writeback
    if json_output:
        print_json(result.to_json())
    else:
        c = summary.counts
        typer.echo(
            f"retry run {summary.run_id}: {c.read} dead letters retried: "
            f"{c.read - c.dead_lettered} resolved, {c.dead_lettered} still failing"
        )
        if back is not None:
            typer.echo(
                f"write-back retry run {back.run_id}: {back.read} dead letters retried: "
                f"{back.written_back + back.duplicate} written back, {back.dead_lettered} still failing"
            )
        if result.failing:
            typer.echo(f"  {result.failing} stay open; see them with: perkbridge deadletters list")
    if result.failing:
        raise typer.Exit(EXIT_FAILURE)


@deadletters_app.command("discard")
def deadletters_discard(
    business: str | None = BusinessOpt,
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    ids: list[int] = typer.Option([], "--id", help="Only these dead letters (repeatable)."),
    all_open: bool = typer.Option(False, "--all", help="Discard every open dead letter."),
    json_output: bool = JsonOpt,
) -> None:
    """Mark open dead letters as discarded (kept for the record, never retried)."""
    from bridge import deadletters
    from bridge.wiring import open_engine, open_state

    if reason is None and not ids and not all_open:
        fail("say what to discard: --reason R, --id N or --all", EXIT_USAGE)
    with errors(), _choice_errors():
        settings = common.settings()
        engine = open_engine(settings)
        try:
            chosen = business or settings.perkville_business_id
            n = deadletters.discard(open_state(engine), chosen, reason=reason, ids=ids, everything=all_open)
        finally:
            engine.dispose()
    if json_output:
        print_json({"discarded": n})
    else:
        typer.echo(f"discarded {n} dead letters")


def register(app: typer.Typer) -> None:
    """Add the ``deadletters`` group to ``app``."""
    app.add_typer(deadletters_app, name="deadletters")
