"""``perkbridge rollback --run ID``: reverse exactly what one run applied (``bridge.rollback``)."""

from __future__ import annotations

from typing import Any

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json
from bridge.cli.runs import (
    JsonOpt,
    SpaceOpt,
    WaitOpt,
    errors,
    exit_if_stopped,
    print_run,
    secrets,
    stop_on_sigterm,
)


def rollback(
    run: int = typer.Option(..., "--run", help="Id of the run to reverse (perkbridge status lists them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the members and amounts; write nothing."),
    allow_negative: bool = typer.Option(
        False, "--allow-negative", help="Reverse even where points spent since leave a wallet below zero."
    ),
    batch: int = typer.Option(200, "--batch", min=1, hidden=True, help="Reversals per transaction."),
    wait: bool = WaitOpt,
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """Append compensating events that reverse exactly the wallet movements run ID applied."""
    from bridge.rollback import (
        RollbackRefusedError,
        UnknownRunError,
        check_run,
        plan_rollback,
        refusal_message,
        run_rollback,
    )
    from bridge.wiring import core_service, open_engine, open_state

    with errors():
        settings = common.settings()
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            try:
                if dry_run:
                    plan = plan_rollback(engine, state, check_run(state, run), space=space)
                    _print_plan(plan.to_json(), json_output)
                    if plan.shortfalls() and not allow_negative:
                        fail(refusal_message(run, plan.shortfalls()), EXIT_FAILURE)
                    return
                with stop_on_sigterm() as stop:
                    summary = run_rollback(
                        engine, state, core_service(engine), run, lease_seconds=settings.schedule.lease_seconds,
                        allow_negative=allow_negative, wait=wait, stop=stop, batch=batch, secrets=secrets(), space=space,
                    )
            except UnknownRunError as exc:
                fail(exc.message, EXIT_USAGE)
            except RollbackRefusedError as exc:
                fail(exc.message, EXIT_FAILURE)
        finally:
            engine.dispose()
    print_run(summary, json_output, title="rollback")
    if not json_output:
        if not summary.wallets:
            typer.echo(f"  nothing left to reverse of run {summary.rolled_back}")
        else:
            typer.echo(f"  reversed what run {summary.rolled_back} applied:")
        for wallet, amount in summary.wallets.items():
            typer.echo(f"  {wallet}: {amount:+}")
    for note in summary.notes:
        common.diagnostic(f"  note: {note}")
    exit_if_stopped(summary.status == "stopped", "rollback", summary.run_id)


def _print_plan(body: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json({"dry_run": True, **body})
        return
    typer.echo(
        f"dry run (nothing written): run {body['run_id']} applied {body['events']} events in Space "
        f"{body['space']!r}; {body['reversals']} to reverse ({body['already_reversed']} already reversed), "
        f"{body['skipped']} without a wallet movement"
    )
    for wallet, amount in body["wallets"].items():
        typer.echo(f"  {wallet}: {amount:+}")
    typer.echo(f"  {'customer_id':<32} {'wallet':<12} {'reversal':>10} {'balance':>10} {'after':>10}")
    for member in body["members"]:
        for wallet, row in member["wallets"].items():
            typer.echo(
                f"  {member['customer_id']:<32} {wallet:<12} {row['reversal']:>+10} {row['balance']:>10} "
                f"{row['after']:>10}"
            )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("rollback")(rollback)
