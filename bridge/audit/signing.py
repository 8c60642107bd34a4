"""Ed25519 keys and signatures for audit packs (``cryptography``).

The private key is PEM (PKCS#8, unencrypted) in a file of mode 0600; the public key is PEM
(SubjectPublicKeyInfo). A pack's ``SIGNATURE`` part is ``ed25519 <base64 signature>\\n`` over
the bytes of its ``checksums`` part. Errors name files, never key material.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEME = "ed25519"
PRIVATE_KEY = "the audit private key ([audit] private_key_path / PERKBRIDGE_AUDIT_KEY)"


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key (the message names the file)."""


def keygen(private_path: Path, public_path: Path, *, overwrite: bool = False) -> None:
    """Write a new key pair: the private key with mode 0600 (created so, never widened first)."""
    for path, label in ((private_path, PRIVATE_KEY), (public_path, f"public key {public_path}")):
        if path.exists() and not overwrite:
            raise KeyFileError(f"{label} already exists; nothing written (pass --force to replace it)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if overwrite and private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    os.chmod(private_path, 0o600)  # whatever the umask did
    public_path.write_bytes(public_pem)


def load_private(path: Path) -> Ed25519PrivateKey:
    """The signing key; errors name the setting, never the path (which is not logged)."""
    data = _read(path, PRIVATE_KEY, name=False)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{PRIVATE_KEY} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{PRIVATE_KEY} is not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"public key {path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """The ``SIGNATURE`` part for ``message``."""
    return sign_text(key.sign(message))


def sign_text(raw: bytes) -> bytes:
    return f"{SCHEME} {base64.b64encode(raw).decode()}\n".encode()


def signature_ok(key: Ed25519PublicKey, message: bytes, signature_part: bytes) -> bool:
    """Whether ``signature_part`` (a ``SIGNATURE`` part) signs ``message`` with ``key``."""
    try:
        scheme, _, encoded = signature_part.decode("ascii").strip().partition(" ")
        raw = base64.b64decode(encoded, validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return False
    # Only the one canonical text counts: any other byte (padding bits, spaces) is a change.
    if scheme != SCHEME or signature_part != sign_text(raw):
        return False
    try:
        key.verify(raw, message)
    except InvalidSignature:
        return False
    return True


def _read(path: Path, what: str, *, name: bool = True) -> bytes:
    where = f"{what} {path}" if name else what
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{where}: no such file (perkbridge audit keygen writes a key pair)") from None
    except IsADirectoryError:
        raise KeyFileError(f"{where} is a directory, not a key file") from None
    except PermissionError:
        raise KeyFileError(f"{where} is not readable; check its permissions") from None
