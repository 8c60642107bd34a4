"""CLI commands over the embedded Perkamo core: ``space``, ``keys``, ``program``, ``identify``,
``emit`` and ``customer`` (names and output shapes as ARCHITECTURE §5 fixes them)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bridge.cli import common
from perkamo_core.errors import (
    CoreError,
    NotFoundError,
    ProgramValidationError,
    ValidationError,
)
from perkamo_core.models import SERVER_SCOPES

if TYPE_CHECKING:  # the database and the core are imported by the commands that use them
    from perkamo_core.service import CoreService

PROGRAM_GROUP = "program"

SpaceOption = Annotated[
    str | None,
    typer.Option("--space", help="Space slug (default: PERKAMO_SPACE); created on first use."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


@contextmanager
def core_errors() -> Iterator[None]:
    """Turn core errors into one-line messages and exit codes (2 invalid input, 1 other, 3 database)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    try:
        yield
    except ProgramValidationError as exc:
        common.fail(f"invalid program ({exc.path or '(root)'}): {exc.message}", common.EXIT_FAILURE)
    except ValidationError as exc:
        where = f" ({exc.field})" if exc.field else ""
        common.fail(f"{exc.message}{where}", common.EXIT_USAGE)
    except NotFoundError as exc:
        common.fail(exc.message, common.EXIT_FAILURE)
    except CoreError as exc:
        common.fail(exc.message, common.EXIT_FAILURE)
    except (ArgumentError, DBAPIError) as exc:
        common.fail_database(exc)


@contextmanager
def open_service() -> Iterator[CoreService]:
    """A core service on the configured database, migrated to the current schema; its engine is
    disposed when the command ends."""
    from sqlalchemy.exc import ArgumentError

    from perkamo_core.db import UnsupportedDatabaseError, create_db_engine
    from perkamo_core.service import CoreService

    url = common.settings().database_url
    try:
        engine = create_db_engine(url)
    except (ArgumentError, UnsupportedDatabaseError) as exc:
        common.fail_database(exc)
    try:
        service = CoreService(engine)
        with core_errors():
            service.migrate()
        yield service
    finally:
        engine.dispose()


def _space(service: CoreService, space: str | None) -> str:
    slug = space or common.settings().perkamo_space
    with core_errors():
        service.ensure_space(slug)
    return slug


def _read_program_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        common.fail(f"cannot read {path}: {exc.strerror}", common.EXIT_USAGE)
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"), parse_float=Decimal)
        else:
            data = json.loads(raw, parse_float=Decimal)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        common.fail(f"{path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}",
                    common.EXIT_USAGE)
    if not isinstance(data, dict) or not data:
        common.fail(f"{path} must be an object whose keys are module names", common.EXIT_USAGE)
    return data


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    space_app = typer.Typer(help="Spaces of the embedded core.", no_args_is_help=True)
    keys_app = typer.Typer(help="Server API keys of the embedded core.", no_args_is_help=True)
    program_app = typer.Typer(help="Program modules of a Space.", no_args_is_help=True)
    app.add_typer(space_app, name="space")
    app.add_typer(keys_app, name="keys")
    app.add_typer(program_app, name=PROGRAM_GROUP)

    @space_app.command("create")
    def space_create(
        slug: Annotated[str, typer.Argument(help="Space slug, e.g. commerce-test.")],
        environment: Annotated[str, typer.Option("--environment", help="test or live.")] = "test",
        timezone: Annotated[str, typer.Option("--timezone", help="IANA zone for per-day limits.")] = "UTC",
        as_json: JsonOption = False,
    ) -> None:
        """Create a Space (or show it, when it already exists)."""
        with open_service() as service:
            with core_errors():
                info = service.ensure_space(slug, environment=environment, timezone=timezone)
            payload = {"space": info.slug, "environment": info.environment, "timezone": info.timezone}
            if as_json:
                common.print_json(payload)
            else:
                typer.echo(f"Space {info.slug} ({info.environment}, timezone {info.timezone})")

    @keys_app.command("create")
    def keys_create(
        space: SpaceOption = None,
        scope: Annotated[
            list[str] | None,
            typer.Option(
                "--scope",
                help=f"Repeatable; default all of {', '.join(SERVER_SCOPES)}; also: dashboard "
                "(sign in to /dashboard, read /metrics).",
            ),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Create a server key; it is printed once and stored only hashed."""
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                created = service.create_api_key(slug, scope or None)
            if as_json:
                common.print_json({"key": created.key, "space": created.space, "scopes": list(created.scopes)})
            else:
                typer.echo(created.key)
                common.diagnostic(
                    f"Created {created.key_id} for Space {created.space} with scopes "
                    f"{' '.join(created.scopes)}. Store the key now: it is not shown again."
                )

    @keys_app.command("revoke")
    def keys_revoke(
        key_id: Annotated[str, typer.Argument(help="The key's id (key_…), as `keys create` printed it.")],
        as_json: JsonOption = False,
    ) -> None:
        """Revoke a server key: the API refuses it, and dashboard sessions made with it end."""
        with open_service() as service:
            with core_errors():
                service.revoke_api_key(key_id)
            if as_json:
                common.print_json({"key_id": key_id, "revoked": True})
            else:
                typer.echo(f"Revoked {key_id}.")

    @program_app.command("load")
    def program_load(
        path: Annotated[Path, typer.Argument(help="JSON or TOML file: {module name: module body}.")],
        space: SpaceOption = None,
        version: Annotated[str | None, typer.Option("--version", help="Version label.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Load program modules; each becomes the new active version (all or nothing)."""
        modules = _read_program_file(path)
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                service.load_program(slug, modules, version=version)
                active = [v for v in service.program_versions(slug) if v["active"] and v["module"] in modules]
            if as_json:
                common.print_json({"space": slug, "modules": active})
            else:
                typer.echo(f"Space {slug}: " + ", ".join(f"{v['module']} {v['version']}" for v in active) + " active")

    @program_app.command("show")
    def program_show(space: SpaceOption = None, as_json: JsonOption = False) -> None:
        """Print the Space's blueprint JSON (as GET /v1/program returns it)."""
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                common.print_json(service.program(slug))

    @app.command("identify")
    def identify(
        user_id: Annotated[str, typer.Argument(help="Customer id.")],
        traits: Annotated[str | None, typer.Option("--traits", help="JSON object of traits.")] = None,
        space: SpaceOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Create a customer or merge traits into its traits."""
        parsed = common.parse_json_option(traits, "--traits")
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                common.print_json(service.identify(slug, user_id, parsed))

    @app.command("emit")
    def emit(
        user_id: Annotated[str, typer.Argument(help="Customer id.")],
        event: Annotated[str, typer.Argument(help="Event key, e.g. purchase.completed.")],
        context: Annotated[str | None, typer.Option("--context", help="JSON object of facts.")] = None,
        txid: Annotated[str | None, typer.Option("--txid", help="transaction_id (default tx_<uuid>).")] = None,
        occurred_at: Annotated[
            str | None, typer.Option("--occurred-at", help="ISO-8601 time (default now).")
        ] = None,
        space: SpaceOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Ingest one event and print the result exactly as POST /v1/events returns it."""
        from perkamo_core.models import EventInput

        parsed = _parse_context(context)
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                result = service.ingest(slug, EventInput(
                    user_id=user_id, event=event, transaction_id=txid, context=parsed,
                    occurred_at=occurred_at,
                ))
            common.print_json(result)

    @app.command("customer")
    def customer(
        user_id: Annotated[str, typer.Argument(help="Customer id.")],
        space: SpaceOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Print the customer JSON exactly as GET /v1/customer/{id} returns it."""
        with open_service() as service:
            slug = _space(service, space)
            with core_errors():
                common.print_json(service.customer(slug, user_id))


def _parse_context(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        common.fail(f"--context is not valid JSON: {exc.msg} at position {exc.pos}", common.EXIT_USAGE)
    if not isinstance(value, dict):
        common.fail("--context must be a JSON object", common.EXIT_USAGE)
    return value


def program_app(app: typer.Typer) -> typer.Typer:
    """The ``program`` command group registered on ``app`` (other modules add commands to it)."""
    for group in app.registered_groups:
        if group.name == PROGRAM_GROUP and group.typer_instance is not None:
            return group.typer_instance
    raise LookupError("the program group is not registered; call core_cmds.register(app) first")
