"""CLI commands of the bridge runs: demo, backfill, sync, reconcile, status, deadletters, idmap, program from-perkville."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json

BusinessOpt = typer.Option(None, "--business", help="Perkville business id (default PERKVILLE_BUSINESS_ID).")
SpaceOpt = typer.Option(None, "--space", help="Space slug in the embedded core (default PERKAMO_SPACE).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
WaitOpt = typer.Option(False, "--wait", help="Wait for a concurrent run of this business to finish.")


def _errors() -> Any:
    """One-line errors with the contract's exit codes (``common.bridge_errors``)."""
    return common.bridge_errors(_secrets)


def _secrets() -> tuple[str, ...]:
    from bridge.wiring import secret_values

    try:
        return secret_values(common.settings())
    except BaseException:  # noqa: BLE001 - redaction must never fail the error path
        return ()


def _parse_when(value: str | None, option: str) -> datetime | None:
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


def _progress(json_output: bool) -> Any:
    from bridge.progress import make_progress

    return make_progress(common.settings().log_format, json_output=json_output)


def _close(progress: Any) -> None:
    if hasattr(progress, "close"):
        progress.close()


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
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


def _exit_if_stopped(stopped: bool, title: str, run_id: int) -> None:
    """A run stopped by SIGTERM: one line saying so, exit 1 (it did not finish; like Ctrl-C)."""
    if stopped:
        fail(
            f"{title} run {run_id} stopped by SIGTERM; what it read is committed and its lease "
            "released; run the same command again to resume",
            EXIT_FAILURE,
        )


def _print_run(summary: Any, json_output: bool, *, title: str) -> None:
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


class _Context:
    """Everything a run command opens, closed in one place."""

    def __init__(self, business: str | None, space: str | None, *, need_source: bool = True) -> None:
        from bridge.wiring import build_target, business_of, open_engine, open_state, perkville_client

        settings = common.settings()
        self.settings = settings
        self.business = business_of(settings, business)
        from bridge.wiring import space_for

        self.space = space or space_for(settings, self.business)
        self.engine = open_engine(settings)
        self.state = open_state(self.engine)
        self.bundle = build_target(settings, self.engine, space=self.space)
        self.source = perkville_client(settings) if need_source else None

    def pipeline(self, progress: Any, stop: threading.Event | None = None) -> Any:
        from bridge.pipeline import Pipeline
        from bridge.wiring import pipeline_config

        assert self.source is not None, "opened with need_source=False"
        return Pipeline(
            state=self.state,
            source=self.source,
            target=self.bundle.target,
            config=pipeline_config(self.settings, self.business),
            progress=progress,
            stop=stop,
        )

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.bundle.close()
        self.engine.dispose()


def demo(
    members: int = typer.Option(300, "--members", min=1, help="Members of the generated business."),
    transactions: int = typer.Option(10_000, "--transactions", min=0, help="Transactions to generate."),
    seed: int = typer.Option(7, "--seed", help="Sandbox seed (same seed, same business)."),
    database: Path | None = typer.Option(None, "--db", help="SQLite file to create (default: a temp file)."),
    json_output: bool = JsonOpt,
) -> None:
    """Start the bundled Perkville sandbox, migrate it into the embedded core, reconcile, summarize."""
    from bridge.demo import run_demo

    progress = _progress(json_output)
    with _errors():
        try:
            result = run_demo(
                database=database, members=members, transactions=transactions, seed=seed, progress=progress
            )
        except FileExistsError as exc:
            fail(str(exc), EXIT_USAGE)
        finally:
            _close(progress)
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
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """One-off migration of a business: members, then the points history (resumable)."""
    from bridge.pipeline import RunOptions
    from bridge.wiring import business_of, perkville_client, pipeline_config

    with _errors():
        settings = common.settings()
        chosen_mode = mode or settings.sync.mode
        if chosen_mode not in ("history", "balance"):
            fail(f"--mode must be history or balance, not {chosen_mode!r}", EXIT_USAGE)
        since_at, until_at = _parse_when(since, "--since"), _parse_when(until, "--until")
        if since_at is not None and until_at is not None and since_at >= until_at:
            fail(
                f"--since {since} is not before --until {until}: the window is empty; "
                "give a --since earlier than --until",
                EXIT_USAGE,
            )
        options = RunOptions(
            kind="backfill",
            mode=chosen_mode,  # type: ignore[arg-type]
            since=since_at,
            until=until_at,
            wait=wait,
            force=force,
        )
        if dry_run:
            from bridge.dryrun import run_dry

            chosen = business_of(settings, business)
            progress = _progress(json_output)
            client = perkville_client(settings)
            try:
                report = run_dry(
                    source=client, config=pipeline_config(settings, chosen), options=options, progress=progress
                )
            finally:
                client.close()
                _close(progress)
            _print_dry_run(report, json_output)
            return
        ctx = _Context(business, space)
        progress = _progress(json_output)
        try:
            with _stop_on_sigterm() as stop:
                summary = ctx.pipeline(progress, stop).run(options)
        finally:
            _close(progress)
            ctx.close()
    _print_run(summary, json_output, title="backfill")
    for note in summary.notes:
        common.diagnostic(f"  note: {note}")
    _exit_if_stopped(summary.status == "stopped", "backfill", summary.run_id)


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


def sync(
    business: str | None = BusinessOpt,
    wait: bool = WaitOpt,
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """One incremental pass: changed members and new or voided transactions, then write-back if enabled."""
    from bridge.usecases import sync as sync_business

    with _errors():
        ctx = _Context(business, space)
        progress = _progress(json_output)
        try:
            with _stop_on_sigterm() as stop:
                result = sync_business(
                    ctx.pipeline(progress, stop), ctx.settings, ctx.engine, space=ctx.space,
                    client=ctx.source, wait=wait,
                )
        finally:
            _close(progress)
            ctx.close()
    back = result.writeback
    if json_output:
        print_json(result.to_json())
    else:
        _print_run(result.run, json_output, title="sync")
        if back is not None:
            typer.echo(
                f"write-back run {back.run_id} {back.status}: read {back.read}, written back "
                f"{back.written_back}, duplicate {back.duplicate}, skipped {back.skipped}, "
                f"dead-lettered {back.dead_lettered}"
            )
    _exit_if_stopped(stop.is_set(), "sync", result.run.run_id)


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
    from bridge.reconcile import Reconciler
    from bridge.usecases import reconcile as reconcile_business

    with _errors():
        settings = common.settings()
        ctx = _Context(business, space)
        progress = _progress(json_output)
        handle = csv_file.open("w", newline="", encoding="utf-8") if csv_file else None
        try:
            reconciler = Reconciler(
                state=ctx.state,
                source=ctx.source,
                target=ctx.bundle.target,
                business=ctx.business,
                timezone=settings.perkville_timezone,
                id_strategy=settings.sync.id_strategy,
                progress=progress,
            )
            report = reconcile_business(
                ctx.pipeline(progress), reconciler, mode=settings.sync.mode, repair=repair,
                csv_out=handle, wait=wait,
            )
        finally:
            if handle is not None:
                handle.close()
            _close(progress)
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
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)


def status(
    business: str | None = BusinessOpt,
    limit: int = typer.Option(10, "--limit", min=1, help="How many recent runs to show."),
    json_output: bool = JsonOpt,
) -> None:
    """Recent runs, cursors, lag, leases and dead-letter counts."""
    from bridge.wiring import open_engine, open_state

    with _errors():
        settings = common.settings()
        chosen = business or settings.perkville_business_id
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            body = _status_body(state, chosen, limit)
            from bridge.scheduler import job_statuses

            body["jobs"] = [
                job for job in job_statuses(engine)
                if chosen is None or job.get("business_id") == chosen
            ]
        finally:
            engine.dispose()
    if json_output:
        print_json(body)
        return
    typer.echo(f"database: {_safe_url(settings.database_url)}")
    typer.echo("runs:")
    if not body["runs"]:
        typer.echo("  (none yet)")
    for run in body["runs"]:
        typer.echo(
            f"  #{run['run_id']:<5} {run['business']:<8} {run['kind']:<9} {run['status']:<12} "
            f"{str(run['started_at'])[:19]}  read {run['read']} applied {run['applied']} "
            f"dup {run['duplicate']} skip {run['skipped']} dead {run['dead_lettered']}"
            + (f"  error: {run['error']}" if run.get("error") else "")
        )
    typer.echo("cursors:")
    for cursor in body["cursors"]:
        lag = cursor.get("lag_seconds")
        typer.echo(
            f"  {cursor['business']:<8} {cursor['resource']:<14} {cursor['value'][:60]:<60}"
            + (f"  lag {lag:.0f} s" if lag is not None else "")
        )
    typer.echo("leases:")
    for lease in body["leases"]:
        typer.echo(f"  {lease['name']:<28} {lease['owner']}  until {str(lease['expires_at'])[:19]}"
                   + ("  (expired)" if lease["expired"] else ""))
    typer.echo("scheduled jobs:")
    if not body["jobs"]:
        typer.echo("  (scheduler has not run)")
    for job in body["jobs"]:
        typer.echo(
            f"  {job['job_id']:<36} last ok {str(job.get('last_success_at') or '-')[:19]:<19}"
            f"  last failure {str(job.get('last_failure_at') or '-')[:19]:<19}"
            f"  next {str(job.get('next_run_at') or '-')[:19]}"
        )
    typer.echo("dead letters:")
    if not body["dead_letters"]:
        typer.echo("  (none)")
    for state_name, reasons in body["dead_letters"].items():
        for reason, n in reasons.items():
            typer.echo(f"  {state_name:<10} {reason:<32} {n}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


def _status_body(state: Any, business: str | None, limit: int) -> dict[str, Any]:
    from bridge.source_clock import lag_seconds
    from bridge.state import utcnow

    now = utcnow()
    cursors = []
    for cursor in state.cursors.all(business):
        item: dict[str, Any] = {
            "business": cursor.business,
            "resource": cursor.resource,
            "value": cursor.value,
            "updated_at": cursor.updated_at,
            "source_newest": cursor.source_newest,
        }
        # Lag is in the source's clock: its newest change when the last run looked, minus the
        # cursor (never this machine's clock, which says nothing about what the source holds).
        try:
            item["lag_seconds"] = lag_seconds(
                datetime.fromisoformat(cursor.value),
                datetime.fromisoformat(cursor.source_newest) if cursor.source_newest else None,
            )
        except ValueError:
            item["lag_seconds"] = None
        cursors.append(item)
    leases = [
        {"name": lease.name, "owner": lease.owner, "expires_at": lease.expires_at, "expired": lease.expired(now)}
        for lease in state.leases.all()
    ]
    return {
        "business": business,
        "runs": [run.to_json() for run in state.runs.recent(business, limit)],
        "cursors": cursors,
        "leases": leases,
        "dead_letters": state.dead_letters.counts(business),
        "id_map": state.id_map.count(business),
    }


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

    with _errors():
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
    with _errors():
        ctx = _Context(business, space)
        progress = _progress(json_output)
        try:
            _checked_ids(ctx.state, ctx.business, ids, "retried")
            writeback_letters = _writeback_letters(ctx, reason, ids or None)
            summary = ctx.pipeline(progress).retry_dead_letters(reason=reason, ids=ids or None, wait=wait)
            back = _retry_writeback(ctx, writeback_letters, reason, ids or None, wait)
        finally:
            _close(progress)
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


def _writeback_letters(ctx: _Context, reason: str | None, ids: list[int] | None) -> list[Any]:
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
    ctx: _Context, letters: list[Any], reason: str | None, ids: list[int] | None, wait: bool
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
    with _errors():
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


def idmap(
    business: str | None = BusinessOpt,
    csv_file: Path | None = typer.Option(None, "--csv", help="Write to FILE instead of stdout."),
    json_output: bool = JsonOpt,
) -> None:
    """Export the customer id ↔ Perkville user id map as CSV (or JSON with --json)."""
    from bridge.wiring import business_of, open_engine, open_state

    with _errors():
        settings = common.settings()
        chosen = business_of(settings, business)
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            if json_output and csv_file is None:
                print_json([e.exported() for e in state.id_map.iter_all(chosen)])
            elif csv_file is None:
                state.id_map.export_csv(chosen, sys.stdout)
            else:
                with csv_file.open("w", newline="", encoding="utf-8") as handle:
                    n = state.id_map.export_csv(chosen, handle)
                common.diagnostic(f"wrote {n} rows to {csv_file}")
        finally:
            engine.dispose()


def program_from_perkville(
    business: str | None = BusinessOpt,
    load: bool = typer.Option(False, "--load", help="Load the translated modules into the Space."),
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """Translate the business's Perkville perks into Perkamo program modules (printed as JSON)."""
    from bridge.wiring import business_of, perkville_client

    with _errors():
        settings = common.settings()
        chosen = business_of(settings, business)
        modules, issues = _translate_perks(perkville_client(settings), chosen, settings.perkville_timezone)
        if load:
            from bridge.wiring import core_service, open_engine

            engine = open_engine(settings)
            try:
                service = core_service(engine)
                slug = space or settings.perkamo_space
                service.ensure_space(slug)
                service.load_program(slug, modules)
            finally:
                engine.dispose()
            common.diagnostic(f"loaded {', '.join(sorted(modules))} into Space {slug!r}")
    for issue in issues:
        common.diagnostic(issue, "WARNING")
    print_json(modules)


def _translate_perks(client: Any, business: str, timezone: str) -> tuple[dict[str, Any], list[str]]:
    from mapping import program as program_mapping

    perks: list[dict[str, Any]] = []
    try:
        for page in client.iter_perks(business):
            perks.extend(page.objects)
    finally:
        client.close()
    from config.programs import load_migration_program

    # On top of the migration program, so loading it keeps the perkville.* rules a backfill needs.
    translation = program_mapping.to_program_modules(perks, timezone=timezone, base=load_migration_program())
    issues = [f"perk {i.record_id}: {i.reason}" for i in translation.issues]
    issues += [f"perk {s.record_id} skipped: {s.reason}" for s in translation.skipped]
    return dict(translation.modules), issues


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("demo")(demo)
    app.command("backfill")(backfill)
    app.command("sync")(sync)
    app.command("reconcile")(reconcile)
    app.command("status")(status)
    app.command("idmap")(idmap)
    app.add_typer(deadletters_app, name="deadletters")
    program_group = next(
        (info.typer_instance for info in app.registered_groups if info.name == "program"), None
    )
    if program_group is not None:
        program_group.command("from-perkville")(program_from_perkville)
    else:
        # core_cmds has not created the ``program`` group: keep the command reachable.
        app.command("program-from-perkville")(program_from_perkville)
