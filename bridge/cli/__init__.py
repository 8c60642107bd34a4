"""The ``perkbridge`` command line: one Typer app, command groups registered from sibling modules.

``--config FILE`` may appear anywhere on the command line (or come from ``PERKBRIDGE_CONFIG``);
settings are read from it and the environment once, on first use.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from bridge.cli import common


class _RootGroup(TyperGroup):
    """The one seam every command leaves through: a closed stdout ends quietly (exit 0), and a
    database failure becomes the one-line ``PERKBRIDGE_DATABASE_URL`` error (exit 3)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)  # --help prints from here
        except BrokenPipeError:
            common.silence_stdout()
            raise typer.Exit(common.EXIT_OK) from None
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            _usage_error(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            common.silence_stdout()
            raise typer.Exit(common.EXIT_OK) from None
        except (typer.Exit, typer.Abort):
            raise  # already reported; its __context__ may be the error it reported
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            _usage_error(exc)
        except Exception as exc:
            common.fail_database(exc)  # re-raises anything that is not a database error


def _usage_error(exc: typer.TyperException) -> NoReturn:
    """Under ``PERKBRIDGE_LOG_FORMAT=json`` a usage error is one JSON line too (else click's text)."""
    if common.STATE.log_format != "json":
        raise exc
    format_message = getattr(exc, "format_message", None)
    common.fail(format_message() if format_message else str(exc), getattr(exc, "exit_code", common.EXIT_USAGE))


app = typer.Typer(
    cls=_RootGroup,
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
    # Their imports allocate most of start-up's objects (a few hundred thousand), which live as
    # long as the process: the collector is paused meanwhile instead of walking them a few
    # hundred times (about 0.1 CPU-s of every command's start-up; bench/README.md).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _import_and_register()
    finally:
        if collecting:
            gc.enable()


def _import_and_register() -> None:
    from bridge.cli import (
        audit_cmd,
        core_cmds,
        deadletters_cmd,
        inspect_cmds,
        jobs_cmd,
        probe_cmd,
        rollback_cmd,
        run_cmds,
        sandbox_cmd,
        schedule_cmd,
        serve_cmd,
        worker_cmd,
    )

    for module in (
        core_cmds, serve_cmd, sandbox_cmd, run_cmds, probe_cmd, inspect_cmds, deadletters_cmd, schedule_cmd,
        audit_cmd,
        rollback_cmd,
        jobs_cmd,
        worker_cmd,
    ):
        module.register(app)


_register_commands()


@app.command()
def version() -> None:
    """Print the installed perkbridge version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("perkbridge"))


def _rich_broken_pipe(console: Any) -> None:
    # rich's default exits 1 by itself; hand the closed pipe to the root group instead, so
    # that tables and --help end like every other output (quietly, exit 0).
    console.quiet = True
    raise BrokenPipeError


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from rich.console import Console

    Console.on_broken_pipe = _rich_broken_pipe  # type: ignore[method-assign,assignment]
    args = list(sys.argv[1:] if argv is None else argv)
    config_file, args = common.extract_config_option(args)
    common.STATE.config_file = config_file or os.environ.get("PERKBRIDGE_CONFIG")
    common.STATE._settings = None
    common.configure_logging(common.early_log_format(common.STATE.config_file))
    try:
        app(args=args, prog_name="perkbridge")
    finally:
        common.flush_stdout_quietly()


def run() -> NoReturn:
    """The ``perkbridge`` process (the console script, ``python -m bridge``): ``main``, then
    ``leave`` with its exit status. An exception other than ``SystemExit`` (Ctrl-C) is left to
    the interpreter, as before."""
    try:
        main()
    except SystemExit as exc:
        status = exc.code
    else:
        status = None
    leave(status)


def leave(status: int | str | None) -> NoReturn:
    """End the process with ``status`` (as ``sys.exit`` reads it) without tearing the interpreter
    down.

    Everything the interpreter's own exit does that anyone can see still happens, in its order:
    threads that are not daemons are waited for, the exit handlers run (log handlers flushed,
    temporary directories removed, every database engine still open closed: see
    ``perkamo_core.db``), and stdout and stderr are flushed. What is skipped is freeing each of
    the few hundred thousand objects start-up made, one by one, before the memory goes back to
    the system anyway: 0.2-0.3 s of every command (``bench/README.md``), as multiprocessing's
    child processes skip it.
    """
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:
        print(status, file=sys.stderr)
        code = 1
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    common.flush_stdout_quietly()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code & 0xFF)
