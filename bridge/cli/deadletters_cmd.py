"""``perkbridge deadletters list|retry|discard``: records that could not be delivered."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from bridge.wiring import RunParts

deadletters_app = typer.Typer(
    name="deadletters", help="List, retry or discard records that could not be delivered.", no_args_is_help=True
)


class LetterStatus(str, Enum):
    """What ``deadletters list --status`` accepts."""

    open = "open"
    resolved = "resolved"
    discarded = "discarded"
    all = "all"


def _checked_ids(state: Any, business: str | None, ids: list[int], verb: str) -> None:
    """Every ``--id`` names an open dead letter (of the business), else one line and exit 2."""
    if not ids:
        return
    found = {d.id: d for d in state.dead_letters.list(business, status=None, ids=ids)}
    missing = [i for i in ids if i not in found]
    where = f" of business {business}" if business else ""
    if missing:
        fail(
            f"no dead letter {', '.join(f'#{i}' for i in missing)}{where}; nothing {verb}; "
            "see: perkbridge deadletters list --status all",
            EXIT_USAGE,
        )
    closed = [found[i] for i in ids if found[i].status != "open"]
    if closed:
        fail(
            "; ".join(f"dead letter #{d.id} is {d.status}, not open" for d in closed)
            + f"; nothing {verb} (only open dead letters are retried or discarded)",
            EXIT_USAGE,
        )


@deadletters_app.command("list")
def deadletters_list(
    business: str | None = BusinessOpt,
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    status_filter: LetterStatus = typer.Option(LetterStatus.open, "--status", help="Which dead letters."),
    limit: int = typer.Option(100, "--limit", min=1),
    raw: bool = typer.Option(False, "--raw", help="Include the raw Perkville record."),
    json_output: bool = JsonOpt,
) -> None:
    """Dead letters with their reason, run and attempt count."""
    from bridge.wiring import open_engine, open_state

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
    with errors():
        ctx = open_run(business, space)
        progress = make_progress(json_output)
        try:
            _checked_ids(ctx.state, ctx.business, ids, "retried")
            writeback_letters = _writeback_letters(ctx, reason, ids or None)
            summary = ctx.pipeline(progress).retry_dead_letters(reason=reason, ids=ids or None, wait=wait)
            back = _retry_writeback(ctx, writeback_letters, reason, ids or None, wait)
        finally:
            close_progress(progress)
            ctx.close()
    failing = summary.counts.dead_lettered + (back.dead_lettered if back is not None else 0)
    if json_output:
        body = summary.to_json()
        if back is not None:
            body["writeback"] = back.to_json()
        print_json(body)
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
        if failing:
            typer.echo(f"  {failing} stay open; see them with: perkbridge deadletters list")
    if failing:
        raise typer.Exit(EXIT_FAILURE)


def _writeback_letters(ctx: RunParts, reason: str | None, ids: list[int] | None) -> list[Any]:
    """The open write-back dead letters a retry covers; refused (exit 3, nothing retried) when
    the write-back settings they need are missing: without them they would be dropped unsent."""
    from bridge.errors import ConfigurationError
    from bridge.pipeline import IMPORT_KINDS

    letters = [
        d for d in ctx.state.dead_letters.list(ctx.business, reason=reason, ids=ids)
        if d.kind not in IMPORT_KINDS
    ]
    wb = ctx.settings.writeback
    missing = []
    if letters and not wb.enabled:
        missing.append("[writeback] enabled = true (or PERKBRIDGE_WRITEBACK_ENABLED=1)")
    if any(d.kind == "writeback_event" for d in letters) and not wb.event_perks:
        missing.append("[writeback] event_perks")
    if any(d.kind == "writeback_identify" for d in letters) and not wb.external_members:
        missing.append("[writeback] external_members = true")
    if missing:
        raise ConfigurationError(
            f"{len(letters)} write-back dead letters need the write-back settings, which are not "
            f"set: {'; '.join(missing)}; nothing was retried"
        )
    return letters


def _retry_writeback(
    ctx: RunParts, letters: list[Any], reason: str | None, ids: list[int] | None, wait: bool
) -> Any:
    """Hand open write-back dead letters (kinds ``writeback_*``) to write-back's own retry."""
    if not letters or ctx.bundle.service is None:
        return None
    if ctx.source is None:
        common.fail("write-back dead letters need the Perkville connection; check PERKVILLE_* settings")
    from bridge.wiring import writeback_config
    from bridge.writeback import Writeback

    return Writeback(
        state=ctx.state,
        outbox=ctx.bundle.service,
        client=ctx.source,
        config=writeback_config(ctx.settings, ctx.business, space=ctx.space),
    ).retry_dead_letters(reason=reason, ids=ids, wait=wait)


@deadletters_app.command("discard")
def deadletters_discard(
    business: str | None = BusinessOpt,
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    ids: list[int] = typer.Option([], "--id", help="Only these dead letters (repeatable)."),
    all_open: bool = typer.Option(False, "--all", help="Discard every open dead letter."),
    json_output: bool = JsonOpt,
) -> None:
    """Mark open dead letters as discarded (kept for the record, never retried)."""
    from bridge.wiring import open_engine, open_state

    if reason is None and not ids and not all_open:
        fail("say what to discard: --reason R, --id N or --all", EXIT_USAGE)
    with errors():
        settings = common.settings()
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            chosen = business or settings.perkville_business_id
            _checked_ids(state, chosen, ids, "discarded")
            n = state.dead_letters.discard(chosen, reason=reason, ids=ids or None)
        finally:
            engine.dispose()
    if json_output:
        print_json({"discarded": n})
    else:
        typer.echo(f"discarded {n} dead letters")


def register(app: typer.Typer) -> None:
    """Add the ``deadletters`` group to ``app``."""
    app.add_typer(deadletters_app, name="deadletters")
