"""Typed errors of the bridge, classified by what the caller should do next.

::

    BridgeError                      base; ``message`` says what failed and what to do next
    ├── ConfigurationError           settings are missing or contradictory (CLI exit 3)
    │   └── CredentialsRejectedError Perkville or Perkamo refused the configured credentials (3)
    ├── LeaseHeldError               someone else is running this (business, direction) (1)
    ├── LeaseLostError               this runner's lease was taken over; the page was rolled back
    ├── SourceError                  Perkville could not be read (bad pages, paging) (1)
    │   └── SourceUnavailableError   Perkville did not answer, even after retries: retry later (4)
    ├── TargetError                  the Perkamo target failed as a whole (not one record) (1)
    │   └── TargetUnavailableError   Perkamo did not answer, even after retries: retry later (4)
    └── RunFailedError               a run stopped for a reason none of the above names (1)

``RetryLater`` marks the two "unavailable" errors. ``classify`` is the one translation of what
the connectors and the database raise into these: ``bridge.leased.recorded`` applies it when a run
fails (so the error reaches the CLI with its class), and the CLI maps each class to its exit code
(``bridge.cli.common.exit_code_for``). ``database_error`` is its database part: a database that
cannot be opened, reached or written is a ``ConfigurationError`` naming
``PERKBRIDGE_DATABASE_URL``; never the SQL, its parameters or the URL's password.
``describe_failure`` is the one line a run log or a job's status stores for any failure.

Per-record problems are never exceptions: they become dead letters and the run goes on.
Messages never contain tokens, keys, passwords or URLs with query strings.
"""

from __future__ import annotations

import re
from typing import Any


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    run_id: int | None = None
    """The run it ended, once ``for_run`` named it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def for_run(self, what: str, run_id: int, message: str) -> BridgeError:
        """This error as the end of run ``run_id``: ``{what} {run_id} failed: {message}``."""
        self.message = f"{what} {run_id} failed: {message}"
        self.args = (self.message,)
        self.run_id = run_id
        return self


class RetryLater:
    """Marks an error that says nothing is wrong with the settings or the data: the other side did
    not answer. Running the same command later is the fix (CLI exit 4)."""


class ConfigurationError(BridgeError):
    """Settings are missing or contradictory; the message names the setting."""


class LeaseHeldError(BridgeError):
    """Another runner holds the lease for this (business, direction)."""

    def __init__(self, message: str, *, name: str, owner: str | None) -> None:
        super().__init__(message)
        self.name = name
        self.owner = owner


class LeaseLostError(BridgeError):
    """The lease expired and another runner took it; the current page was not committed."""


class CredentialsRejectedError(ConfigurationError):
    """Perkville or Perkamo refused the configured credentials (even after re-authenticating)."""


class SourceError(BridgeError):
    """Perkville could not be read: an unusable page or paging that cannot be followed."""


class SourceUnavailableError(SourceError, RetryLater):
    """Perkville did not answer (network, 5xx, 429) even after every retry."""


class TargetError(BridgeError):
    """The Perkamo target failed as a whole, not one record."""


class TargetUnavailableError(TargetError, RetryLater):
    """The remote Perkamo did not answer (network, 5xx, 429) even after every retry."""


class RunFailedError(BridgeError):
    """A run stopped before its end; ``run_id`` points at the run log entry."""

    def __init__(self, message: str, *, run_id: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


VALID_DATABASE_URLS = "sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/dbname"

# (pattern in the driver's lower-cased message, what is wrong, what to do); first match wins.
_DATABASE_PROBLEMS: tuple[tuple[str, str, str], ...] = (
    ("unable to open database file", "cannot open the database file",
     "check that its directory exists and is writable"),
    ("file is not a database", "the file is not a SQLite database",
     "point it at a perkbridge database or at a new file"),
    ("readonly database", "the database is read-only (read-only mount, immutable file or mode=ro)",
     "give a writable database"),
    ("read-only", "the database is read-only", "give a writable database"),
    ("disk is full", "the disk holding the database is full", "free space and run again"),
    ("disk i/o error", "the database file cannot be read or written (disk I/O error)",
     "check the disk and the file"),
    ("password authentication failed", "the database server refused the user or password",
     "check the credentials in the URL"),
    (r'fatal:\s+(database|role) "[^"]*" does not exist', "the database or role does not exist on the server",
     "create it first"),
    ("connection refused", "cannot connect to the database server (connection refused)",
     "check host and port and that the server is running"),
    ("could not translate host name", "the database host name does not resolve", "check the host"),
    ("name or service not known", "the database host name does not resolve", "check the host"),
    ("timeout", "the database server did not answer in time",
     "check host and port and that the server is running"),
    ("connection failed", "cannot connect to the database server",
     "check host and port and that the server is running"),
    ("could not connect", "cannot connect to the database server",
     "check host and port and that the server is running"),
)


def describe_database(url: str) -> str:
    """Where ``url`` points, without password or query string: ``sqlite file X`` or ``host:port/db``."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is described by the caller
        return "an unparsable URL"
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ":memory:"
        if name.startswith("file:"):
            name = name[len("file:"):].split("?", 1)[0]
        return f"sqlite file {name}"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()} {parsed.host or 'localhost'}{port}/{parsed.database or ''}"


def database_error(exc: BaseException, url: str | None = None) -> BridgeError | None:
    """The bridge's error for a database failure anywhere in ``exc``'s chain, else ``None``.

    The message names ``PERKBRIDGE_DATABASE_URL``, says what is wrong and what to do; it never
    carries the SQL, its bound parameters (member data) or the URL's password.
    """
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from perkamo_core.db import UnsupportedDatabaseError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ArgumentError, NoSuchModuleError, UnsupportedDatabaseError)):
            # UnsupportedDatabaseError's text is ours and never repeats the URL; the others' may.
            why = f" ({current})" if isinstance(current, UnsupportedDatabaseError) else ""
            return ConfigurationError(
                f"PERKBRIDGE_DATABASE_URL is not a usable database URL{why}; use {VALID_DATABASE_URLS}"
            )
        if isinstance(current, DBAPIError):
            return _classify_dbapi_error(current, url)
        current = current.__cause__ or current.__context__
    return None


_PERKVILLE_CREDENTIALS = (
    "PERKVILLE_CLIENT_ID, PERKVILLE_CLIENT_SECRET, PERKVILLE_USERNAME and PERKVILLE_PASSWORD "
    "(or PERKVILLE_ACCESS_TOKEN)"
)


def classify(exc: BaseException, database_url: str | None = None) -> BridgeError | None:
    """The bridge's error for ``exc``: what the caller should do next, or ``None`` if unknown.

    ``database_url`` lets a database failure say which database (never its password).

    The cause chain is read from the outside in and the first error that says what to do wins:
    a database failure (``database_error``); Perkville or Perkamo refusing the credentials;
    either side not answering after its retries (retry later); the connectors' own
    configuration errors. Else a ``BridgeError`` in the chain stands as it is.
    """
    from connectors.perkamo.errors import PerkamoApiError, PerkamoConnectionError
    from connectors.perkville.errors import AuthError, RetriableError
    from connectors.perkville.errors import ConfigurationError as PerkvilleConfigError

    problem = database_error(exc, database_url)
    if problem is not None:
        return problem
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    outer = next((e for e in chain if isinstance(e, BridgeError)), None)
    said = outer.message if outer is not None else None
    for item in chain:
        if isinstance(item, AuthError):
            return CredentialsRejectedError(
                f"Perkville refused the credentials ({item}); check {_PERKVILLE_CREDENTIALS}"
            )
        if isinstance(item, RetriableError):
            return SourceUnavailableError(
                f"{said or f'Perkville: {item}'}; Perkville did not answer after every retry: "
                "nothing is lost, run the same command again later"
            )
        if isinstance(item, PerkvilleConfigError):
            return ConfigurationError(str(item))
        if isinstance(item, PerkamoConnectionError) or (
            isinstance(item, PerkamoApiError) and (item.status == 429 or item.status >= 500)
        ):
            return TargetUnavailableError(
                f"{said or f'Perkamo: {item}'}; Perkamo did not answer after every retry: "
                "nothing is lost, run the same command again later"
            )
        if isinstance(item, PerkamoApiError) and item.status in (401, 403):
            return CredentialsRejectedError(
                f"Perkamo refused PERKAMO_SECRET_KEY ({item.status}); check the key and its scopes"
            )
    return outer


def describe_failure(exc: BaseException) -> str:
    """One line for the run log and the scheduler's status table: what failed, never the SQL, its
    parameters or a driver's detail (a database failure is described by ``database_error``)."""
    if isinstance(exc, BridgeError):
        text = exc.message
    else:
        problem = database_error(exc)
        if problem is not None:
            return problem.message
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _classify_dbapi_error(exc: Any, url: str | None) -> BridgeError:
    where = f" ({describe_database(url)})" if url else ""
    driver_text = str(getattr(exc, "orig", None) or "").lower()
    for fragment, what, todo in _DATABASE_PROBLEMS:
        if re.search(fragment, driver_text):
            return ConfigurationError(f"PERKBRIDGE_DATABASE_URL{where}: {what}; {todo}")
    kind = type(getattr(exc, "orig", None) or exc).__name__
    return BridgeError(
        f"database error ({kind}) on PERKBRIDGE_DATABASE_URL{where}; "
        "check the database and run the command again"
    )
