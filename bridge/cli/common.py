"""What every CLI command shares: settings, exit codes, JSON output and one-line errors."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NoReturn

import typer

from config import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1  # run failure or reconcile mismatch
EXIT_USAGE = 2
EXIT_CONFIG = 3


@dataclass
class CliState:
    """Per-invocation state: the ``--config`` path and the settings, read once on first use."""

    config_file: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_file)
            except ConfigError as exc:
                fail(str(exc), EXIT_CONFIG)
        return self._settings


STATE = CliState()


def settings() -> Settings:
    """The settings of this invocation (exit 3 with a one-line message when invalid)."""
    return STATE.settings()


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print a one-line error on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone (``| head``), so that no later write
    or the interpreter's final flush fails with ``BrokenPipeError``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will flush to a closed pipe


def flush_stdout_quietly() -> None:
    """Flush stdout at exit; a reader that went away is not an error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    except (OSError, ValueError):
        pass


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(payload: Any, *, indent: int | None = 2) -> str:
    """JSON with Decimals as JSON numbers, datetimes as ISO-8601."""
    return json.dumps(payload, default=_default, indent=indent, ensure_ascii=False)


def print_json(payload: Any, *, indent: int | None = 2) -> None:
    sys.stdout.write(dumps(payload, indent=indent) + "\n")
    sys.stdout.flush()


def parse_json_option(raw: str | None, option: str) -> dict[str, Any]:
    """Parse a ``--context``/``--traits`` JSON object or exit 2 naming the option."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"{option} is not valid JSON: {exc.msg} at position {exc.pos}", EXIT_USAGE)
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object", EXIT_USAGE)
    return value


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn a ``ConfigError`` raised inside the block into exit code 3."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise a database failure, or a Perkville URL that cannot be requested, inside the block
    as the bridge's one-line error (no SQL, no parameters, no password); a closed stdout and exits
    pass through untouched."""
    from bridge.errors import ConfigurationError, database_error
    from connectors.perkville.errors import ConfigurationError as PerkvilleConfigError

    try:
        yield
    except (typer.Exit, BrokenPipeError):
        raise
    except Exception as exc:
        problem = database_error(exc, _database_url())
        if problem is not None:
            raise problem from None
        cause: BaseException | None = exc
        for _ in range(20):  # a chain is short; the bound guards against a cycle
            if cause is None or isinstance(cause, PerkvilleConfigError):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, PerkvilleConfigError):
            raise ConfigurationError(str(cause)) from None
        raise


def _database_url() -> str | None:
    try:
        return STATE.settings().database_url
    except BaseException:  # noqa: BLE001 - the settings may be what is broken
        return None


def fail_database(exc: BaseException) -> NoReturn:
    """Exit with the one-line database error for ``exc`` (3 configuration, 1 otherwise)."""
    from bridge.errors import ConfigurationError, database_error

    problem = database_error(exc, _database_url())
    if problem is None:
        raise exc
    fail(problem.message, EXIT_CONFIG if isinstance(problem, ConfigurationError) else EXIT_FAILURE)


def extract_config_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--config FILE`` (anywhere on the command line) out of ``argv``."""
    rest: list[str] = []
    config_file: str | None = None
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--":
            rest.extend(argv[index:])
            break
        if arg == "--config":
            if index + 1 >= len(argv):
                fail("--config needs a file path", EXIT_USAGE)
            config_file = argv[index + 1]
            skip = True
        elif arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config_file, rest
