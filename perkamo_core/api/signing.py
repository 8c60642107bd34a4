"""Verification of Perkamo v1 request signatures (``x-perkamo-timestamp``, ``x-perkamo-signature``).

The signed string is ``v1.{timestamp}.{METHOD}.{path}.{sha256_hex(raw body) or ""}`` and the
signature is ``v1=`` + hex HMAC-SHA256 of it keyed with the API key itself (perkamo-api.md §3).
The raw received body bytes are hashed, never a re-serialization; the digest comparison is
constant-time and timestamps outside the tolerance window are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from perkamo_core.api.errors import SignatureError

TIMESTAMP_HEADER = "x-perkamo-timestamp"
SIGNATURE_HEADER = "x-perkamo-signature"
DEFAULT_TOLERANCE_SECONDS = 300

_SIGNATURE_RE = re.compile(r"v1=[0-9a-f]{64}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def expected_signature(api_key: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    """The ``v1=…`` signature a correct client sends for these request parts."""
    body_hash = hashlib.sha256(body).hexdigest() if body else ""
    message = ".".join(("v1", timestamp, method.upper(), path, body_hash)).encode("utf-8")
    return "v1=" + hmac.new(api_key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(
    api_key: str,
    *,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Raise ``SignatureError`` unless ``signature`` signs this request at a timestamp near ``now``."""
    if signature is None:
        raise SignatureError(
            "this Space requires signed requests: send x-perkamo-timestamp and x-perkamo-signature",
            code="signature_required",
        )
    if timestamp is None or not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError(
            "x-perkamo-timestamp must be the Unix time in seconds when a request is signed",
            code="invalid_signature",
        )
    if abs(now - int(timestamp)) > tolerance_seconds:
        raise SignatureError(
            f"x-perkamo-timestamp is more than {tolerance_seconds} seconds away from the server clock",
            code="stale_signature",
        )
    candidate = signature.strip().lower()
    expected = expected_signature(api_key, timestamp, method, path, body)
    # Compare even malformed candidates so that timing does not reveal which check failed.
    matches = hmac.compare_digest(candidate.encode("ascii", "replace"), expected.encode("ascii"))
    if not matches or not _SIGNATURE_RE.fullmatch(candidate):
        raise SignatureError(
            "x-perkamo-signature does not match the request (method, path, raw body, timestamp)",
            code="invalid_signature",
        )
