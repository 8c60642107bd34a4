"""``perkbridge sandbox``: serve the bundled Perkville v2 sandbox on loopback until interrupted."""

from __future__ import annotations

import threading

import typer

from bridge.cli import common


def register(app: typer.Typer) -> None:
    """Add ``sandbox`` to ``app``."""

    @app.command()
    def sandbox(
        port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port (0 = any free port)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (keep it on loopback)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generated data (same seed, same data)."),
        businesses: int = typer.Option(1, "--businesses", min=1, help="Number of generated businesses."),
        members: int = typer.Option(200, "--members", min=1, help="Members (connections) per business."),
        transactions: int = typer.Option(2000, "--transactions", min=0, help="Ledger rows per business."),
        redeem_sign: str = typer.Option(
            "negative",
            "--redeem-sign",
            help="How redeemed points are reported: negative (-N, its VOID_REF +N; as Perkville documents "
            "it) or positive (+N, its VOID_REF -N).",
        ),
        timezone: str = typer.Option(
            "UTC", "--timezone", help="Zone of the naive datetimes the sandbox serves."
        ),
        clock_offset: float = typer.Option(
            0.0,
            "--clock-offset",
            help="Run the sandbox's clock SECONDS ahead of this machine's (negative: behind).",
            metavar="SECONDS",
        ),
        latency_ms: float = typer.Option(
            0.0,
            "--latency-ms",
            min=0.0,
            metavar="L",
            help="Answer every token and API request L milliseconds after it arrived (a far-away server).",
        ),
        rate_limit: int = typer.Option(
            0,
            "--rate-limit",
            min=0,
            metavar="R",
            help="Answer 429 with Retry-After past R API requests in any second, like Tastypie's "
            "throttle (0: no budget).",
        ),
        json_output: bool = typer.Option(
            False, "--json", help="Print the URLs and credentials as one JSON line."
        ),
        tiered_levels: bool = typer.Option(
            False, "--tiered-levels",
            help="Connection levels by lifetime points (none, Bronze, Silver, Gold) instead of at random.",
        ),
    ) -> None:
        """Serve a local Perkville v2 sandbox with a generated business (test credentials only)."""
        from connectors.perkville.sandbox import Sandbox

        if redeem_sign not in ("negative", "positive"):
            common.fail("--redeem-sign must be negative or positive", common.EXIT_USAGE)
        try:
            box = Sandbox(
                seed=seed,
                businesses=businesses,
                members=members,
                transactions=transactions,
                timezone=timezone,
                redeem_sign=redeem_sign,
                clock_offset=clock_offset,
                tiered_levels=tiered_levels,
            )
            box.set_network(latency_ms=latency_ms, rate_limit=rate_limit or None)
            box.start(host, port)
        except ValueError as exc:
            common.fail(str(exc), common.EXIT_USAGE)
        except OSError as exc:
            common.fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", common.EXIT_FAILURE)
        info = box.describe()
        if json_output:
            common.print_json(info, indent=None)
        else:
            typer.echo(f"Perkville sandbox listening on {info['base_url']}  (Ctrl-C to stop)")
            typer.echo(f"  PERKVILLE_API_URL={info['api_url']}")
            typer.echo(f"  PERKVILLE_TOKEN_URL={info['token_url']}")
            typer.echo(f"  PERKVILLE_CLIENT_ID={info['client_id']}")
            typer.echo(f"  PERKVILLE_CLIENT_SECRET={info['client_secret']}")
            typer.echo(f"  PERKVILLE_USERNAME={info['username']}")
            typer.echo(f"  PERKVILLE_PASSWORD={info['password']}")
            typer.echo(f"  PERKVILLE_BUSINESS_ID={info['business_ids'][0]}")
            if latency_ms or rate_limit:
                budget = f"{rate_limit} requests/s" if rate_limit else "no request budget"
                typer.echo(f"  network: {latency_ms:g} ms latency, {budget}")
            typer.echo("  (sandbox test credentials only; control routes under " + info["control_url"] + ")")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            box.stop()
