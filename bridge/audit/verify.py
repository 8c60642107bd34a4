"""``perkbridge audit verify``: the signature, every checksum, and (asked) the ledger chain against
the database. Each problem names the part it is in; an empty list means the pack is intact."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.audit import pack
from bridge.audit.signing import signature_ok


@dataclass(frozen=True)
class Finding:
    """One problem: the part it is in (``zip`` for the archive itself) and what is wrong."""

    part: str
    problem: str

    def __str__(self) -> str:
        return f"{self.part}: {self.problem}"


def read_pack(path: Path) -> tuple[dict[str, bytes], list[Finding]]:
    """The members that could be read, and a finding for each that could not (or is extra/missing)."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        return {}, [Finding("zip", f"{path} not found")]
    except (zipfile.BadZipFile, OSError) as exc:
        return {}, [Finding("zip", f"not a readable zip archive ({type(exc).__name__})")]
    members: dict[str, bytes] = {}
    findings: list[Finding] = []
    with archive:
        names = archive.namelist()
        for name in names:
            if name not in pack.MEMBERS:
                findings.append(Finding(name, "is not a part of an audit pack"))
            elif names.count(name) > 1:
                findings.append(Finding(name, "appears more than once"))
        for name in pack.MEMBERS:
            if name not in names:
                findings.append(Finding(name, "is missing (or its name was changed)"))
                continue
            try:
                members[name] = archive.read(name)
            except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as exc:
                findings.append(Finding(name, f"is damaged in the zip ({_reason(exc)})"))
    return members, findings


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 120 else type(exc).__name__


def verify_pack(
    path: Path,
    public_key: Ed25519PublicKey,
    *,
    ledger_from_db: Callable[[dict[str, Any]], str] | None = None,
) -> list[Finding]:
    """Every problem of the pack at ``path``; ``ledger_from_db(manifest)`` gives the chain text
    the database holds now for the manifest's run (``--against-db``)."""
    members, findings = read_pack(path)
    sums = members.get(pack.CHECKSUMS)
    signature = members.get(pack.SIGNATURE)
    parts = {name: members[name] for name in pack.PARTS if name in members}
    if sums is not None and signature is not None:
        if not signature_ok(public_key, sums, signature):
            # The signature is over ``checksums``: if it still lists the parts as they are,
            # the signature is what changed (or the key is another's); else ``checksums`` did.
            if len(parts) == len(pack.PARTS) and pack.checksums(parts) == sums:
                findings.append(
                    Finding(
                        pack.SIGNATURE,
                        "does not verify with this public key "
                        "(the signature changed, or the pack was signed by another key)",
                    )
                )
            else:
                findings.append(Finding(pack.CHECKSUMS, "does not match its signature (checksums changed)"))
            return findings
        findings.extend(_part_findings(parts, sums))
    if not findings and len(members) == len(pack.MEMBERS) and pack.zip_bytes(members) != _read_bytes(path):
        findings.append(
            Finding(
                "zip",
                "the archive is not the canonical zip of its parts "
                "(a header, the directory or a comment changed)",
            )
        )
    if ledger_from_db is not None and not findings:
        findings.extend(_against_db(parts, ledger_from_db))
    return findings


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read()


def _part_findings(parts: dict[str, bytes], sums: bytes) -> list[Finding]:
    listed: dict[str, str] = {}
    for line in sums.decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    found = []
    for name, data in parts.items():
        if listed.get(name) != pack.sha256(data):
            found.append(Finding(name, "differs from its signed checksum (the part changed)"))
    return found


def _against_db(parts: dict[str, bytes], ledger_from_db: Callable[[dict[str, Any]], str]) -> list[Finding]:
    try:
        manifest = json.loads(parts[pack.MANIFEST])
    except (KeyError, ValueError):
        return [Finding(pack.MANIFEST, "is not readable JSON")]
    recorded = parts[pack.LEDGER].decode("utf-8", "replace").splitlines()
    current = ledger_from_db(manifest).splitlines()
    if recorded == current:
        return []
    for n, (was, now) in enumerate(zip(recorded, current)):
        if was != now:
            where = "the header" if n == 0 else "the head line" if was.startswith("head") else f"entry {n}"
            return [Finding(pack.LEDGER, f"differs from the chain the database gives at {where}")]
    return [Finding(pack.LEDGER, f"has {len(recorded)} lines, the database's chain {len(current)}")]
