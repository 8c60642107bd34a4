"""Read-only CLI views of a business: status, idmap, program from-perkville."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from bridge.cli import common
from bridge.cli.common import print_json
from bridge.cli.runs import (
    BusinessOpt,
    JsonOpt,
    SpaceOpt,
    errors,
)


def status(
    business: str | None = BusinessOpt,
    limit: int = typer.Option(10, "--limit", min=1, help="How many recent runs to show."),
    json_output: bool = JsonOpt,
) -> None:
    """Recent runs, cursors, lag, leases and dead-letter counts."""
    from bridge.status import status_report
    from bridge.wiring import open_engine, open_state

    with errors():
        settings = common.settings()
        chosen = business or settings.perkville_business_id
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            body = status_report(state, chosen, limit)
            from bridge.scheduler import job_statuses

            body["jobs"] = [
                job for job in job_statuses(engine)
                if chosen is None or job.get("business_id") == chosen
            ]
            from bridge.queue.ops import queue_summary

            body["queue"] = queue_summary(engine)
        finally:
            engine.dispose()
    if json_output:
        print_json(body)
        return
    typer.echo(f"database: {_safe_url(settings.database_url)}")
    if body["request_rate"] is not None:
        typer.echo(
            f"Perkville request rate learned: {body['request_rate']:g} requests/s "
            f"(the next run starts there; ceiling {settings.perkville.requests_per_second:g})"
        )
    probe = body["probe"]
    if probe is None and chosen:
        typer.echo("probe: none yet (run perkbridge probe against a real business first)")
    elif probe is not None:
        typer.echo(
            f"probe: #{probe['probe_id']} at {probe['probed_at'][:19]}; contradicted: "
            f"{', '.join(probe['contradicted']) or 'none'}; unknown: {len(probe['unknown'])}"
        )
    typer.echo("runs:")
    if not body["runs"]:
        typer.echo("  (none yet)")
    for run in body["runs"]:
        typer.echo(
            f"  #{run['run_id']:<5} {run['business']:<8} {run['kind']:<9} {run['status']:<12} "
            f"{str(run['started_at'])[:19]}  read {run['read']} applied {run['applied']} "
            f"dup {run['duplicate']} skip {run['skipped']} dead {run['dead_lettered']}"
            + (f"  {rate:g} req/s" if (rate := (run.get("details") or {}).get("request_rate")) else "")
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
    if body["queue"] is not None:
        _print_queue(body["queue"])
    typer.echo("dead letters:")
    if not body["dead_letters"]:
        typer.echo("  (none)")
    for state_name, reasons in body["dead_letters"].items():
        for reason, n in reasons.items():
            typer.echo(f"  {state_name:<10} {reason:<32} {n}")


def _print_queue(queue: dict[str, Any]) -> None:
    counts = queue["counts"]
    typer.echo(
        f"job queue: {queue['depth']} waiting ({queue['due']} due), {counts['doing']} running, "
        f"{counts['failed']} failed; {queue['workers']} workers"
    )
    for job in queue["running"]:
        typer.echo(
            f"  running #{job['id']:<7} {job['kind']:<9} {str(job['business']):<10} on "
            f"{job['worker'] or '-'} (worker {job['worker_id']})  since {str(job['started_at'] or '-')[:19]}"
        )
    for job in queue["failed"]:
        typer.echo(
            f"  failed  #{job['id']:<7} {job['kind']:<9} {str(job['business']):<10} after "
            f"{job['attempts']} attempts  at {str(job['at'] or '-')[:19]}  (perkbridge jobs retry {job['id']})"
        )


def _safe_url(url: str) -> str:
    """The database URL without its password or query string (which may carry secrets too)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(query={}).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


def idmap(
    business: str | None = BusinessOpt,
    csv_file: Path | None = typer.Option(None, "--csv", help="Write to FILE instead of stdout."),
    json_output: bool = JsonOpt,
) -> None:
    """Export the customer id ↔ Perkville user id map as CSV (or JSON with --json)."""
    from bridge.wiring import business_of, open_engine, open_state

    with errors():
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
    interval_code: list[str] | None = typer.Option(
        None, "--interval-code", metavar="CODE=INTERVAL",
        help="Read integer redemption_limit_interval CODE as INTERVAL (DAY, WEEK, MONTH, YEAR, LIFETIME); "
        "repeatable. Replaces the guessed table 1=DAY 2=WEEK 3=MONTH 4=YEAR.",
    ),
    tiers_out: Path | None = typer.Option(
        None, "--tiers-out", metavar="FILE",
        help="Write the proposed [tiers] table (level names by their members' lifetime points) to FILE.",
    ),
) -> None:
    """Translate the business's Perkville perks into Perkamo program modules (printed as JSON).

    It also proposes a [tiers] map from the level names on the connections, in order of their
    members' lifetime points; with [tiers] set, the printed program holds the tier modules.
    """
    from bridge.wiring import business_of, perkville_client

    codes = _interval_codes(interval_code)
    with errors():
        settings = common.settings()
        chosen = business_of(settings, business)
        proposal, levels = _propose_tiers(perkville_client(settings), chosen, settings.perkville_timezone)
        modules, issues = _translate_perks(perkville_client(settings), chosen, settings.perkville_timezone, codes)
        notes, tier_warnings = _tier_issues(settings.tiers, proposal, levels)
        issues += tier_warnings
        if settings.tiers:
            from bridge.tiers import with_tier_modules

            modules = with_tier_modules(modules, settings.tiers)
        if tiers_out is not None:
            tiers_out.write_text(proposal.to_toml(), encoding="utf-8")
            common.diagnostic(f"wrote the proposed [tiers] table to {tiers_out}")
        for note in notes:
            common.diagnostic(note)
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


def _propose_tiers(client: Any, business: str, timezone: str) -> tuple[Any, list[str | None]]:
    """The ``[tiers]`` proposal from every connection's level and lifetime points, and the levels."""
    from mapping.records import parse_connection
    from mapping.tiers import propose_tiers

    pairs: list[tuple[str | None, Any]] = []
    try:
        for page in client.iter_connections(business):
            for raw in page.objects:
                record = parse_connection(raw, timezone=timezone).record
                if record is not None:
                    pairs.append((record.level, record.lifetime_earned_points))
    finally:
        client.close()
    return propose_tiers(pairs), [name for name, _ in pairs]


def _tier_issues(
    tiers: dict[str, int], proposal: Any, levels: list[str | None]
) -> tuple[list[str], list[str]]:
    """The proposal in words (one line per name), and warnings: the names ``[tiers]`` does not map."""
    from mapping.tiers import unknown_levels

    lines = [
        f"tiers: proposed {name!r} = {level} ({proposal.members[name]} members, median lifetime "
        f"{proposal.median_lifetime[name]} points)"
        for name, level in proposal.tiers.items()
    ]
    if not proposal.tiers:
        lines.append("tiers: no connection carries a level name; nothing to propose")
    if not tiers:
        lines.append("tiers: [tiers] is not set; levels are not carried over (--tiers-out FILE writes the proposal)")
        return lines, []
    return lines, [
        f"tiers: Perkville level {name!r} ({count} members) is not in [tiers]; its members keep their level"
        for name, count in unknown_levels(levels, tiers).items()
    ]


def _interval_codes(pairs: list[str] | None) -> dict[int, str] | None:
    """``["1=DAY", ...]`` as a checked code table (``None``: the mapping's default); exit 2 if bad."""
    if not pairs:
        return None
    from mapping.errors import MappingConfigError
    from mapping.perk_limits import interval_codes

    table: dict[str, str] = {}
    for pair in pairs:
        code, sep, name = pair.partition("=")
        if not sep:
            common.fail(f"--interval-code {pair!r}: expected CODE=INTERVAL, e.g. 1=DAY", common.EXIT_USAGE)
        table[code] = name
    try:
        return interval_codes(table)
    except MappingConfigError as exc:
        common.fail(f"--interval-code: {exc}", common.EXIT_USAGE)


def _translate_perks(
    client: Any, business: str, timezone: str, codes: dict[int, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    from mapping import program as program_mapping

    perks: list[dict[str, Any]] = []
    try:
        for page in client.iter_perks(business):
            perks.extend(page.objects)
    finally:
        client.close()
    from config.programs import load_migration_program

    # On top of the migration program, so loading it keeps the perkville.* rules a backfill needs.
    translation = program_mapping.to_program_modules(
        perks, timezone=timezone, base=load_migration_program(), interval_codes=codes
    )
    issues = [f"perk {i.record_id}: {i.reason}" for i in translation.issues]
    issues += [f"perk {s.record_id} skipped: {s.reason}" for s in translation.skipped]
    return dict(translation.modules), issues


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("status")(status)
    app.command("idmap")(idmap)
    program_group = next(
        (info.typer_instance for info in app.registered_groups if info.name == "program"), None
    )
    if program_group is not None:
        program_group.command("from-perkville")(program_from_perkville)
    else:
        # core_cmds has not created the ``program`` group: keep the command reachable.
        app.command("program-from-perkville")(program_from_perkville)
