"""``perkbridge audit keygen|export|verify``: a signed audit pack per run (``bridge/audit``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from bridge.cli import common
from bridge.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE, fail, print_json
from bridge.cli.runs import JsonOpt, SpaceOpt, errors

audit_app = typer.Typer(
    name="audit", help="Signed audit packs: one zip per run that shows what moved.", no_args_is_help=True
)

KEY_SETTING = "[audit] private_key_path (or PERKBRIDGE_AUDIT_KEY)"


@audit_app.command("keygen")
def keygen(
    public: Path = typer.Option(..., "--public", help="Where to write the public key (PEM)."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files."),
) -> None:
    """Write an Ed25519 key pair: the private key where [audit] private_key_path points (mode 0600)."""
    from bridge.audit.signing import KeyFileError
    from bridge.audit.signing import keygen as write_pair

    private = _private_key_path()
    try:
        write_pair(private, public, overwrite=force)
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"could not write the key pair ({type(exc).__name__}); check the directories", EXIT_FAILURE)
    typer.echo(f"wrote the public key to {public}; the private key is at {KEY_SETTING} (mode 0600)")


@audit_app.command("export")
def export(
    run_id: int = typer.Option(..., "--run", help="The run to export (perkbridge status lists runs)."),
    out: Path = typer.Option(..., "--out", help="The zip file to write."),
    space: str | None = SpaceOpt,
    json_output: bool = JsonOpt,
) -> None:
    """Write the run's signed audit pack: manifest, reconcile, id map, dead letters, ledger chain."""
    from importlib.metadata import version

    from bridge.audit import pack
    from bridge.audit.export import export_run
    from bridge.audit.ledger import LedgerUnavailable
    from bridge.audit.pack import PackError
    from bridge.audit.signing import KeyFileError
    from bridge.rollback import UnknownRunError
    from bridge.wiring import open_engine

    with errors():
        settings = common.settings()
        key = _private_key_path()
        try:
            pack.check_writable(out)  # before Perkville is read for reconcile.csv
        except PackError as exc:
            fail(str(exc), EXIT_USAGE)
        engine = open_engine(settings)
        try:
            done = export_run(
                settings=settings, engine=engine, run_id=run_id, space=space, private_key=key, out=out,
                exported_at=_now(), tool_version=version("perkbridge"),
            )
        except UnknownRunError as exc:
            fail(exc.message, EXIT_USAGE)
        except KeyFileError as exc:
            fail(str(exc), EXIT_CONFIG)
        except (LedgerUnavailable, PackError) as exc:
            fail(f"run {run_id}: {exc}", EXIT_FAILURE)
        finally:
            engine.dispose()
    if json_output:
        print_json(
            {
                "path": str(done.path),
                "run_id": run_id,
                "ledger_entries": done.ledger.entries,
                "ledger_head": done.ledger.head,
                "parts": done.digests,
            }
        )
    else:
        typer.echo(
            f"wrote {out}: run {run_id}, {done.ledger.entries} applied events, ledger head {done.ledger.head}"
        )


@audit_app.command("verify")
def verify(
    pack_file: Path = typer.Argument(..., help="The audit pack (zip)."),
    public_key: Path = typer.Option(..., "--public-key", help="The signer's public key (PEM)."),
    against_db: bool = typer.Option(
        False,
        "--against-db",
        help="Also recompute the ledger chain from the database (PERKBRIDGE_DATABASE_URL).",
    ),
) -> None:
    """Check the signature and every checksum; exit 1 naming each part that differs."""
    from bridge.audit.signing import KeyFileError, load_public
    from bridge.audit.verify import verify_pack

    try:
        key = load_public(public_key)
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE)
    with errors():
        findings = verify_pack(pack_file, key, ledger_from_db=_ledger_from_db if against_db else None)
    if findings:
        fail(f"{pack_file} does not verify: " + "; ".join(f"part {f}" for f in findings), EXIT_FAILURE)
    checked = (
        "signature, checksums and the ledger chain against the database"
        if against_db
        else ("signature and checksums")
    )
    typer.echo(f"{pack_file}: verified ({checked})")


def _ledger_from_db(manifest: dict[str, Any]) -> str:
    from bridge.audit.export import run_chain
    from bridge.audit.ledger import LedgerUnavailable
    from bridge.wiring import open_engine, open_state

    engine = open_engine(common.settings())
    try:
        run_id, space = int(manifest["run"]["id"]), str(manifest["space"])
        try:
            return run_chain(engine, open_state(engine), run_id, space).text
        except LedgerUnavailable as exc:
            return f"(the database cannot give the chain: {exc})\n"
    finally:
        engine.dispose()


def _now() -> datetime:
    """The export time written in the manifest (the one thing two exports of a run differ in)."""
    return datetime.now(UTC)


def _private_key_path() -> Path:
    path = common.settings().audit.private_key_path
    if not path:
        fail(f"no audit signing key configured: set {KEY_SETTING}", EXIT_CONFIG)
    return Path(path).expanduser()


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app)
