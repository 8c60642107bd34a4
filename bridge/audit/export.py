"""``perkbridge audit export``: gather a run's parts from the database, sign them, write the zip."""

from __future__ import annotations

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
        pack.DEAD_LETTERS: pack.dead_letters_jsonl(state, run.business, run.id),
        pack.LEDGER: ledger.text.encode(),
    }
    pack.check_no_secret(parts, secrets)
    sums = pack.checksums(parts)
    pack.write_zip(out, {**parts, pack.CHECKSUMS: sums, pack.SIGNATURE: sign(key, sums)})
    return Exported(out, ledger, {name: pack.sha256(data) for name, data in parts.items()})
