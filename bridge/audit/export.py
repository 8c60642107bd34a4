"""``perkbridge audit export``: gather a run's parts from the database, sign them, write the zip.

``export_run`` is the whole use case (the CLI's ``audit export`` and the dashboard's download):
it reads Perkville for ``reconcile.csv``, then ``export_pack`` signs and writes the parts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from bridge.audit import pack
from bridge.audit.ledger import Chain, chain, run_entries
from bridge.audit.signing import load_private, sign
from bridge.state import RunRecord, StateStore
from config.settings import Settings


@dataclass(frozen=True)
class Exported:
    """What was written: the file, the ledger chain's head and size, and each part's sha256."""

    path: Path
    ledger: Chain
    digests: dict[str, str]


def run_chain(engine: Engine, state: StateStore, run_id: int, space: str) -> Chain:
    """The ledger chain of run ``run_id`` as the database holds it now."""
    return chain(run_entries(engine, state.run_events, run_id, space))


def export_pack(
    *,
    settings: Settings,
    engine: Engine,
    state: StateStore,
    run: RunRecord,
    space: str,
    reconcile_csv: bytes,
    private_key: Path,
    out: Path,
    secrets: Sequence[str],
    exported_at: datetime,
    tool_version: str,
) -> Exported:
    key = load_private(private_key)  # first: a bad key costs no database reads
    ledger = run_chain(engine, state, run.id, space)
    parts = {
        pack.MANIFEST: pack.manifest(
            run=run,
            space=space,
            settings=settings,
            secrets=secrets,
            programs=pack.program_digests(engine, space),
            ledger=ledger,
            exported_at=exported_at,
            tool_version=tool_version,
        ),
        pack.RECONCILE: reconcile_csv,
        pack.IDMAP: pack.idmap_csv(state, run.business),
        pack.DEAD_LETTERS: pack.dead_letters_jsonl(state, run.business, run.id, secrets),
        pack.LEDGER: ledger.text.encode(),
    }
    pack.check_no_secret(parts, secrets)
    sums = pack.checksums(parts)
    pack.write_zip(out, {**parts, pack.CHECKSUMS: sums, pack.SIGNATURE: sign(key, sums)})
    return Exported(out, ledger, {name: pack.sha256(data) for name, data in parts.items()})


def export_run(
    *,
    settings: Settings,
    engine: Engine,
    run_id: int,
    space: str | None,
    private_key: Path,
    out: Path,
    exported_at: datetime,
    tool_version: str,
) -> Exported:
    """Export run ``run_id``'s signed pack to ``out``: reconcile the run's business against
    Perkville now (``reconcile.csv``), then gather, sign and write the parts (``export_pack``).

    ``space``: the Space of the ledger chain; by default the one the run applied its events to.
    Raises ``UnknownRunError`` when the run is not in the log.
    """
    from bridge.rollback import UnknownRunError
    from bridge.wiring import RunParts, open_state, secret_values

    state = open_state(engine)
    run = state.runs.get(run_id)
    if run is None:
        raise UnknownRunError(f"no run {run_id}; see: perkbridge status")
    parts = RunParts(settings, engine, run.business, space=space)
    try:
        recorded = state.run_events.spaces(run_id)
        chosen = space or (recorded[0] if len(recorded) == 1 else parts.space)
        csv_text = io.StringIO(newline="")
        parts.reconciler().compare(csv_out=csv_text)
        return export_pack(
            settings=settings,
            engine=engine,
            state=state,
            run=run,
            space=chosen,
            reconcile_csv=csv_text.getvalue().encode(),
            private_key=private_key,
            out=out,
            secrets=(*secret_values(settings), *database_password(settings)),
            exported_at=exported_at,
            tool_version=tool_version,
        )
    finally:
        parts.close()


def database_password(settings: Settings) -> tuple[str, ...]:
    """The database URL's password, if any (a secret the pack must not hold)."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(settings.database_url).password
    except Exception:  # noqa: BLE001 - an unparseable URL is left out of the manifest whole
        return ()
    return (str(password),) if password else ()
