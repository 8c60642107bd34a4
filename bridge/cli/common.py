"""What every CLI command shares: settings, exit codes, JSON output and one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
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
EXIT_RETRY_LATER = 4  # Perkville or Perkamo did not answer: nothing is lost, run again later


@dataclass
class CliState:
    """Per-invocation state: the ``--config`` path and the settings, read once on first use."""

    config_file: str | None = None
    log_format: str = "auto"  # PERKBRIDGE_LOG_FORMAT, resolved once by ``configure_logging``
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
    if STATE.log_format == "json":
        diagnostic(message, "ERROR", exit_code=code)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def diagnostic(message: str, level: str = "INFO", **fields: Any) -> None:
    """One line on stderr for the operator (a note, a warning): a JSON object under
    ``PERKBRIDGE_LOG_FORMAT=json``, else ``message`` as it is (``WARNING`` lines get ``warning: ``)."""
    if STATE.log_format == "json":
        body = {"ts": _now_text(), "level": level, "logger": "perkbridge", "msg": message.strip(), **fields}
        sys.stderr.write(json.dumps(body, ensure_ascii=False, default=str) + "\n")
        sys.stderr.flush()
    else:
        typer.echo(f"warning: {message}" if level == "WARNING" else message, err=True)


def _now_text(created: float | None = None) -> str:
    from datetime import UTC, datetime

    moment = datetime.now(UTC) if created is None else datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds")


class JsonLines(logging.Formatter):
    """One JSON object per log record: ``ts``, ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": _now_text(record.created), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


_HANDLER_NAME = "perkbridge-json"


def configure_logging(log_format: str) -> None:
    """Under ``json``: every log record, Python warning and uncaught traceback becomes one JSON
    line on stderr (libraries such as httpx, uvicorn and SQLAlchemy log through the root logger)."""
    STATE.log_format = log_format
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)  # a previous invocation in this process (tests)
    if log_format != "json":
        logging.captureWarnings(False)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLines())
    root.addHandler(handler)
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        logging.getLogger("perkbridge").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))

    def thread_excepthook(args: Any) -> None:
        if args.exc_type is not SystemExit:
            logging.getLogger("perkbridge").error(
                "uncaught %s in thread %s", args.exc_type.__name__, getattr(args.thread, "name", "?"),
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def early_log_format(config_file: str | None) -> str:
    """The log format before any command runs: the settings' if they load, else the environment's
    (a broken config file is reported later, in the format the operator asked for)."""
    try:
        return load_settings(config_file).log_format
    except Exception:  # noqa: BLE001 - reported by the command that needs the settings
        value = os.environ.get("PERKBRIDGE_LOG_FORMAT", "auto").strip().lower()
        return value if value in ("auto", "plain", "json") else "auto"


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


def exit_code_for(error: BaseException) -> int:
    """The exit code of a bridge error: 3 for settings (credentials included), 4 when the other
    side did not answer and running again later is the fix, else 1."""
    from bridge.errors import ConfigurationError, RetryLater

    if isinstance(error, ConfigurationError):
        return EXIT_CONFIG
    if isinstance(error, RetryLater):
        return EXIT_RETRY_LATER
    return EXIT_FAILURE


@contextmanager
def bridge_errors(secrets: Callable[[], tuple[str, ...]] = tuple) -> Iterator[None]:
    """The one seam where a run command's failure becomes one line and its exit code.

    Every error keeps its class up to here (``bridge.errors.classify`` names what the
    connectors and the database raised); the line never carries SQL, bound parameters, a
    password or any value of ``secrets()``. A closed stdout and exits pass through untouched.
    """
    from bridge.errors import BridgeError, classify, describe_failure
    from bridge.redaction import redact_message
    from config import ConfigError

    try:
        yield
    except (typer.Exit, BrokenPipeError):
        raise
    except ConfigError as exc:
        fail(redact_message(str(exc), secrets()), EXIT_CONFIG)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume", EXIT_FAILURE)
    except Exception as exc:
        known = exc if isinstance(exc, BridgeError) else classify(exc, _database_url())
        if known is None:
            fail(redact_message(describe_failure(exc), secrets()), EXIT_FAILURE)
        fail(redact_message(known.message, secrets()), exit_code_for(known))


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
