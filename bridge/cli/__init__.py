"""The ``perkbridge`` command line: one Typer app, command groups registered from sibling modules.

``--config FILE`` may appear anywhere on the command line (or come from ``PERKBRIDGE_CONFIG``);
settings are read from it and the environment once, on first use.
"""

from __future__ import annotations

import os
import sys

import typer

from bridge.cli import common

app = typer.Typer(
    name="perkbridge",
    help="Migrate a loyalty program from Perkville to Perkamo and keep both in step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Migrate a loyalty program from Perkville to Perkamo and keep both in step."""


def _register_commands() -> None:
    # Each module adds its own commands; kept in one place so the contract is easy to audit.
    from bridge.cli import core_cmds, run_cmds, sandbox_cmd, schedule_cmd, serve_cmd

    for module in (core_cmds, serve_cmd, sandbox_cmd, run_cmds, schedule_cmd):
        module.register(app)


_register_commands()


@app.command()
def version() -> None:
    """Print the installed perkbridge version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("perkbridge"))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    config_file, args = common.extract_config_option(args)
    common.STATE.config_file = config_file or os.environ.get("PERKBRIDGE_CONFIG")
    common.STATE._settings = None
    app(args=args, prog_name="perkbridge")
