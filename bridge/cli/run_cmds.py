"""CLI commands of the bridge runs: demo, backfill, sync, reconcile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    exit_if_stopped,
    make_progress,
    one_shot_gc,
    open_run,
    open_source,
    parse_when,
    print_run,
    started_up,
    stop_on_sigterm,
)


def demo(
    members: int = typer.Option(300, "--members", min=1, help="Members of the generated business."),
    transactions: int = typer.Option(10_000, "--transactions", min=0, help="Transactions to generate."),
    seed: int = typer.Option(7, "--seed", help="Sandbox seed (same seed, same business)."),
    database: Path | None = typer.Option(None, "--db", help="SQLite file to create (default: a temp file)."),
    json_output: bool = JsonOpt,
) -> None:
    """Start the bundled Perkville sandbox, migrate it into the embedded core, reconcile, summarize."""
    from bridge.demo import run_demo

    progress = make_progress(json_output)
    with errors():
        try:
            result = run_demo(
                database=database, members=members, transactions=transactions, seed=seed, progress=progress
            )
        except FileExistsError as exc:
            fail(str(exc), EXIT_USAGE)
        finally:
            close_progress(progress)
    if json_output:
        print_json(result.to_json())
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.reconcile.ok:
        raise typer.Exit(EXIT_FAILURE)


def backfill(
    business: str | None = BusinessOpt,
    mode: str = typer.Option(None, "--mode", help="history (replay every transaction) or balance (opening balances)."),
    since: str | None = typer.Option(None, "--since", help="Only transactions at or after T (cursor untouched)."),
    until: str | None = typer.Option(None, "--until", help="Only transactions before T (cursor untouched)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write nothing; predict counts, issues and balances."),
    wait: bool = WaitOpt,
    force: bool = typer.Option(
        False, "--force", help="Allow a backfill in the other mode than an earlier import of this business."
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial",
        help="Import even though the staff account does not see every location's customers.",
    ),
    space: str | None = SpaceOpt,
    enqueue: bool = typer.Option(
        False, "--enqueue",
        help="Defer the backfill onto the workers (perkbridge worker, PostgreSQL) and print its job id.",
    ),
    json_output: bool = JsonOpt,
) -> None:
    """One-off migration of a business: members, then the points history (resumable)."""
    with one_shot_gc(), errors():
        settings = common.settings()
        chosen_mode = mode or settings.sync.mode
        if chosen_mode not in ("history", "balance"):
            fail(f"--mode must be history or balance, not {chosen_mode!r}", EXIT_USAGE)
        since_at, until_at = parse_when(since, "--since"), parse_when(until, "--until")
        if since_at is not None and until_at is not None and since_at >= until_at:
            fail(
                f"--since {since} is not before --until {until}: the window is empty; "
                "give a --since earlier than --until",
                EXIT_USAGE,
            )
        # The run's first requests leave now, while the database layer and the core are imported.
        opening = open_source(business) if not (enqueue or dry_run) else None
        from bridge.pipeline import RunOptions
        from bridge.wiring import business_of, perkville_client, pipeline_config

        options = RunOptions(
            kind="backfill",
            mode=chosen_mode,  # type: ignore[arg-type]
            since=since_at,
            until=until_at,
            wait=wait,
            force=force,
            allow_partial=allow_partial,
        )
        if enqueue:
            _enqueue_backfill(business, options, dry_run=dry_run, space=space, json_output=json_output)
            return
        if dry_run:
            from bridge.dryrun import run_dry

            chosen = business_of(settings, business)
            progress = make_progress(json_output)
            client = perkville_client(settings)
            try:
                report = run_dry(
                    source=client, config=pipeline_config(settings, chosen), options=options, progress=progress
                )
            finally:
                client.close()
                close_progress(progress)
            _print_dry_run(report, json_output)
            if report.demotions:
                common.fail(
                    f"{report.demotions} members would end below the level their Perkville level maps to",
                    common.EXIT_FAILURE,
                )
            return
        ctx = open_run(business, space, opening=opening)
        started_up()
        progress = make_progress(json_output)
        try:
            with stop_on_sigterm() as stop:
                summary = ctx.pipeline(progress, stop).run(options)
        finally:
            close_progress(progress)
            ctx.close()
    print_run(summary, json_output, title="backfill")
    for note in summary.notes:
        common.diagnostic(f"  note: {note}")
    exit_if_stopped(summary.status == "stopped", "backfill", summary.run_id)


def _enqueue_backfill(
    business: str | None, options: Any, *, dry_run: bool, space: str | None, json_output: bool
) -> None:
    """``backfill --enqueue``: one job on the queue, its arguments the business and the options."""
    from bridge.queue.ops import BackfillQueuedError, enqueue_backfill, opened_app
    from bridge.wiring import business_of

    if dry_run or space is not None or options.wait:
        fail("--enqueue runs on a worker: --dry-run, --space and --wait do not apply", EXIT_USAGE)
    settings = common.settings()
    chosen = business_of(settings, business)
    kwargs = {
        "mode": options.mode,
        "since": options.since.isoformat() if options.since else None,
        "until": options.until.isoformat() if options.until else None,
        "force": options.force,
        "allow_partial": options.allow_partial,
    }
    try:
        with opened_app(settings) as app:
            job_id = enqueue_backfill(app, chosen, kwargs)
    except BackfillQueuedError as exc:
        fail(str(exc), EXIT_FAILURE)
    if json_output:
        print_json({"job_id": job_id, "business": chosen, "status": "todo"})
    else:
        typer.echo(f"backfill of business {chosen} queued as job {job_id} (perkbridge jobs list)")


def _print_dry_run(report: Any, json_output: bool) -> None:
    body = report.to_json()
    if json_output:
        print_json(body)
        return
    typer.echo(
        f"dry run (nothing written): read {body['read']}, would apply {body['applied']}, "
        f"duplicate {body['duplicate']}, skipped {body['skipped']}, issues {body['dead_lettered']}"
    )
    for kind, counts in body["kinds"].items():
        typer.echo(f"  {kind:<12} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for reason, group in body["issues"].items():
        typer.echo(f"  issue {reason}: {group['count']}")
        for example in group["examples"]:
            typer.echo(f"    {example['kind']} {example['record_id']}: {example['detail']}")
    predicted = body["predicted"]
    typer.echo(
        f"  predicted balances: {predicted['customers']} customers, {predicted['total_points']} points"
    )
    for item in predicted["top"][:10]:
        typer.echo(f"    {item['customer_id']:<32} {item['points']}")
    mismatches = body["predicted_mismatches"]
    typer.echo(f"  predicted mismatches against Perkville's point_balance: {len(mismatches)}")
    for item in mismatches[:10]:
        typer.echo(
            f"    {item['customer_id']:<32} perkville {item['perkville_balance']} "
            f"predicted {item['predicted_balance']}"
        )
    if "tiers" in body:
        _print_tiers(body["tiers"])


def _print_tiers(tiers: dict[str, Any]) -> None:
    """The predicted tier of every member, the would-be demotions and the unmapped level names."""
    members = tiers["members"]
    by_level: dict[Any, int] = {}
    for row in members:
        by_level[row["perkamo_level"]] = by_level.get(row["perkamo_level"], 0) + 1
    spread = ", ".join(f"level {n}: {c}" for n, c in sorted(by_level.items(), key=lambda kv: kv[0] or 0))
    typer.echo(f"  predicted tiers of {len(members)} members ({spread}); would-be demotions: {tiers['demotions']}")
    for name, count in tiers["unknown_levels"].items():
        typer.echo(f"  unknown Perkville level {name!r}: {count} members (not in [tiers])")
    for row in members:
        typer.echo(
            f"    {row['customer_id']:<32} {row['perkville_level'] or '-':<12} mapped {row['mapped_level'] or '-'}"
            f"  predicted {row['perkamo_level'] or '-'}" + ("  DEMOTED" if row["demoted"] else "")
        )


def sync(
    business: str | None = BusinessOpt,
    wait: bool = WaitOpt,
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """One incremental pass: changed members and new or voided transactions, then write-back if enabled."""
    with one_shot_gc(), errors():
        # The run's first requests leave now, while the database layer and the core are imported.
        opening = open_source(business)
        from bridge.usecases import sync as sync_business

        ctx = open_run(business, space, opening=opening)
        started_up()
        progress = make_progress(json_output)
        try:
            with stop_on_sigterm() as stop:
                result = sync_business(
                    ctx.pipeline(progress, stop), ctx.settings, ctx.engine, space=ctx.space,
                    client=ctx.source, wait=wait,
                )
        finally:
            close_progress(progress)
            ctx.close()
    back = result.writeback
    if json_output:
        print_json(result.to_json())
    else:
        print_run(result.run, json_output, title="sync")
        if back is not None:
            typer.echo(
                f"write-back run {back.run_id} {back.status}: read {back.read}, written back "
                f"{back.written_back}, duplicate {back.duplicate}, skipped {back.skipped}, "
                f"dead-lettered {back.dead_lettered}"
            )
    exit_if_stopped(stop.is_set(), "sync", result.run.run_id)


def reconcile(
    business: str | None = BusinessOpt,
    repair: bool = typer.Option(False, "--repair", help="Emit adjustment events so balances match."),
    csv_file: Path | None = typer.Option(None, "--csv", help="Write every member's comparison to FILE."),
    wait: bool = WaitOpt,
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """Perkville balance vs Perkamo wallet, member by member; exit 1 on any mismatch.

    With --repair it syncs first under the business's import lease, then adjusts what still differs.
    """
    from bridge.usecases import reconcile as reconcile_business

    with errors():
        settings = common.settings()
        ctx = open_run(business, space)
        progress = make_progress(json_output)
        handle = csv_file.open("w", newline="", encoding="utf-8") if csv_file else None
        try:
            reconciler = ctx.reconciler(progress)
            report = reconcile_business(
                ctx.pipeline(progress), reconciler, mode=settings.sync.mode, repair=repair,
                csv_out=handle, wait=wait,
            )
        finally:
            if handle is not None:
                handle.close()
            close_progress(progress)
            ctx.close()
    if json_output:
        print_json(report.to_json())
    else:
        typer.echo(f"checked {report.checked}, matched {report.matched}, mismatched {len(report.mismatches)}")
        if report.mismatches:
            typer.echo(f"  {'customer_id':<32} {'perkville':>12} {'perkamo':>12} {'difference':>12}")
            for m in report.mismatches[:50]:
                typer.echo(
                    f"  {m.customer_id:<32} {m.perkville_balance:>12} {m.perkamo_balance:>12} {m.difference:>12}"
                )
            if len(report.mismatches) > 50:
                typer.echo(f"  … {len(report.mismatches) - 50} more (use --csv FILE or --json)")
        if report.repair_attempted:
            typer.echo(f"repaired {report.repaired}; still mismatched {len(report.remaining)}")
            if report.pending:
                typer.echo(
                    f"  {len(report.pending)} members got new rows while they were checked: not "
                    "repaired now; the next reconcile checks them again"
                )
        if report.unreadable:
            typer.echo(f"  {report.unreadable} connections had no readable point_balance")
        if report.tiers_checked is not None:
            typer.echo(f"tiers: checked {report.tiers_checked}, demoted {len(report.demoted)}")
            for row in report.demoted[:50]:
                typer.echo(
                    f"  {row.customer_id:<32} Perkville {row.perkville_level!r} maps to level "
                    f"{row.mapped_level}, Perkamo level {row.perkamo_level or '-'}"
                )
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("demo")(demo)
    app.command("backfill")(backfill)
    app.command("sync")(sync)
    app.command("reconcile")(reconcile)
