"""Build an audit pack: its parts, their checksums, the signature, and the zip that holds them.

Parts, in zip order: ``manifest.json``, ``reconcile.csv``, ``idmap.csv``, ``deadletters.jsonl``,
``ledger.sha256``; then ``checksums`` (``sha256sum`` format, one line per part) and
``SIGNATURE`` (Ed25519 over ``checksums``). Members are stored uncompressed with one fixed
timestamp and mode, so the same run exported twice gives the same bytes except the manifest's
``exported_at`` (and through it the manifest's checksum and the signature), and the archive is
the one canonical zip of its parts: ``verify`` rebuilds it, so a changed byte anywhere in the
file (a header, the directory) fails too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from bridge.audit.ledger import Chain
from bridge.redaction import redact_message
from bridge.state import RunRecord, StateStore
from config.settings import Settings

FORMAT = "perkbridge-audit-pack/1"
MANIFEST = "manifest.json"
RECONCILE = "reconcile.csv"
IDMAP = "idmap.csv"
DEAD_LETTERS = "deadletters.jsonl"
LEDGER = "ledger.sha256"
PARTS = (MANIFEST, RECONCILE, IDMAP, DEAD_LETTERS, LEDGER)
CHECKSUMS = "checksums"
SIGNATURE = "SIGNATURE"
MEMBERS = (*PARTS, CHECKSUMS, SIGNATURE)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackError(Exception):
    """The pack cannot be built as asked (the message says why; it never holds a secret)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksums(parts: Mapping[str, bytes]) -> bytes:
    """The ``checksums`` part: ``<sha256>  <name>`` per part, in pack order (``sha256sum -c``)."""
    return "".join(f"{sha256(parts[name])}  {name}\n" for name in PARTS).encode()


def settings_without_secrets(settings: Settings, secrets: Sequence[str]) -> dict[str, Any]:
    """The settings as data: secret fields masked, the database password hidden, every known
    secret value removed from every text, and the audit key's path left out (only whether set)."""
    from sqlalchemy.engine import make_url

    body = settings.model_dump(mode="json")
    try:
        body["database_url"] = make_url(settings.database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is kept out whole
        body["database_url"] = "(hidden: not a parseable URL)"
    body["audit"] = {"private_key_path": "set" if settings.audit.private_key_path else None}
    scrubbed: dict[str, Any] = _scrub(body, secrets)
    return scrubbed


def _scrub(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return redact_message(value, secrets)
    if isinstance(value, dict):
        return {str(k): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def program_digests(engine: Engine, space: str) -> dict[str, dict[str, str]]:
    """Each program module active in ``space``: its version and the sha256 of its canonical JSON."""
    from perkamo_core.storage import program_modules, spaces

    with engine.connect() as conn:
        rows = conn.execute(
            select(program_modules.c.module, program_modules.c.version, program_modules.c.body)
            .join(spaces, spaces.c.id == program_modules.c.space_id)
            .where(spaces.c.slug == space, program_modules.c.active.is_(True))
            .order_by(program_modules.c.module)
        ).all()
    return {
        str(module): {"version": str(version), "sha256": sha256(_canonical(body))}
        for module, version, body in rows
    }


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def manifest(
    *,
    run: RunRecord,
    space: str,
    settings: Settings,
    secrets: Sequence[str],
    programs: Mapping[str, Mapping[str, str]],
    ledger: Chain,
    exported_at: datetime,
    tool_version: str,
) -> bytes:
    body = {
        "format": FORMAT,
        "exported_at": exported_at.isoformat(),
        "tool_version": tool_version,
        "run": {
            "id": run.id,
            "direction": run.direction,
            "kind": run.kind,
            "status": run.status,
            "target": run.target,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "duration_ms": run.duration_ms,
            "error": redact_message(run.error, secrets) if run.error else None,
            "counts": run.counts.as_dict(),
            "counts_by_kind": run.details.get("kinds", {}),
        },
        "business": run.business,
        "space": space,
        "mode": run.mode,
        "settings": settings_without_secrets(settings, secrets),
        "program": dict(programs),
        "ledger": {"entries": ledger.entries, "head": ledger.head},
    }
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def idmap_csv(state: StateStore, business: str) -> bytes:
    out = io.StringIO(newline="")
    state.id_map.export_csv(business, out)
    return out.getvalue().encode()


def dead_letters_jsonl(state: StateStore, business: str, run_id: int, secrets: Sequence[str]) -> bytes:
    """The business's dead letters whose latest failure was in this run (any status), by id, each
    as the CLI and the dashboard show it: secret-looking fields of its raw record and the
    settings' secret values masked (``DeadLetter.redacted``)."""
    lines = [
        json.dumps(letter.redacted(secrets).to_json(), sort_keys=True, ensure_ascii=False, default=_iso) + "\n"
        for letter in state.dead_letters.list(business, status=None, run_id=run_id)
    ]
    return "".join(lines).encode()


def _iso(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def check_no_secret(parts: Mapping[str, bytes], secrets: Sequence[str]) -> None:
    """Refuse a pack any part of which holds a secret value (names the part, never the value)."""
    for name, data in parts.items():
        for secret in secrets:
            if len(secret) >= 6 and secret.encode() in data:
                raise PackError(
                    f"part {name} would hold the value of a secret setting; nothing written (a secret "
                    "that is also an ordinary word of the data, such as an id, triggers this too: "
                    "choose a longer, random one)"
                )


def zip_bytes(members: Mapping[str, bytes]) -> bytes:
    """The canonical archive of ``members``: ``MEMBERS`` order, stored (not compressed, so every
    byte of a part is a byte of the file and no zlib version changes the result), one fixed
    timestamp and mode. ``verify`` rebuilds it to find a change outside the parts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in MEMBERS:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def write_zip(out: Path, members: Mapping[str, bytes]) -> None:
    """Write the canonical archive of ``members`` to ``out`` atomically (temp file + rename)."""
    out = out.resolve()
    check_writable(out)
    data = zip_bytes(members)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".audit-", suffix=".zip", dir=out.parent)
    except OSError as exc:
        raise PackError(f"cannot write {out}: {exc.strerror or type(exc).__name__}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PackError(f"cannot write {out}: {exc.strerror or type(exc).__name__}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(out: Path) -> None:
    """``out`` can be a new or replaced file: its folder exists and it is not a folder itself."""
    if out.is_dir():
        raise PackError(f"{out} is a directory; give the path of the zip file to write")
    if not out.resolve().parent.is_dir():
        raise PackError(f"the folder of {out} does not exist")
