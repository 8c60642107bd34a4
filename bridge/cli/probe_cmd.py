"""``perkbridge probe``: the first command to run against a real business (read-only by default)."""

from __future__ import annotations

from typing import Any

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json
from bridge.cli.runs import BusinessOpt, JsonOpt, errors


def probe(
    business: str | None = BusinessOpt,
    write_test: bool = typer.Option(
        False,
        "--write-test",
        help="Also award --perk twice with one perkbridge-probe: trans_source_id and record both answers.",
    ),
    perk: str | None = typer.Option(
        None, "--perk", help="The test perk for --write-test (required with it)."
    ),
    customer: str | None = typer.Option(
        None,
        "--customer",
        help="Email of the test customer for --write-test (default: the staff account's own).",
    ),
    expect_locations: int | None = typer.Option(
        None,
        "--expect-locations",
        min=1,
        help="How many locations the business has (makes the reach check exact).",
    ),
    json_output: bool = JsonOpt,
) -> None:
    """Check the token, the API's schema, the staff account's reach (and, asked, a duplicate write);
    record what was found for later runs and print each assumption: ✓ confirmed, ✗ contradicted, ? unknown."""
    from bridge.probe import MARKS, WriteTest, blocking
    from bridge.probe import probe as run_probe
    from bridge.wiring import business_of, open_engine, open_state, perkville_client
    from connectors.perkville.duplicates import is_duplicate_answer

    if write_test and not perk:
        fail("--write-test awards points: name the test perk with --perk ID", EXIT_USAGE)
    if perk and not write_test:
        fail("--perk is only used with --write-test", EXIT_USAGE)
    with errors():
        settings = common.settings()
        chosen = business_of(settings, business)
        engine = open_engine(settings)
        try:
            state = open_state(engine)
            client = perkville_client(settings)
            try:
                report = run_probe(
                    client,
                    chosen,
                    expected_locations=expect_locations,
                    write_test=WriteTest(perk, customer) if write_test and perk else None,
                    is_duplicate=is_duplicate_answer,
                )
            finally:
                client.close()
            record = state.probes.record(chosen, report.to_json())
        finally:
            engine.dispose()
    body: dict[str, Any] = {
        "probe_id": record.id,
        "probed_at": record.probed_at.isoformat(),
        **report.to_json(),
    }
    stop = blocking(report.table)
    if json_output:
        print_json(body)
    else:
        typer.echo(f"probe #{record.id} of business {chosen} (recorded; later runs use it)")
        width = max(len(row.statement) for row in report.table)
        for row in report.table:
            typer.echo(f"  {MARKS[row.status]} {row.statement:<{width}}  -> {row.action}")
            if row.detail:
                typer.echo(f"      {row.detail}")
    if stop:
        common.diagnostic("probe: " + "; ".join(f"{row.key}: {row.detail or row.statement}" for row in stop))
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("probe")(probe)
