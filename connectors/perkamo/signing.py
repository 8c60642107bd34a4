"""Perkamo v1 request signing: HMAC-SHA256 over ``v1.{ts}.{METHOD}.{path}.{sha256(body)}``.

The key is the server API key itself (perkamo-api.md §3).  The signature header is ``v1=`` plus
the lowercase hex digest; the timestamp header is Unix seconds as a decimal string.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "x-perkamo-timestamp"
SIGNATURE_HEADER = "x-perkamo-signature"


def base_string(timestamp: str, method: str, path: str, body: bytes) -> str:
    """The string that is signed: version, timestamp, method, path and the body's SHA-256."""
    body_hash = hashlib.sha256(body).hexdigest() if body else ""
    return ".".join((SIGNATURE_VERSION, timestamp, method.upper(), path, body_hash))


def sign(api_key: str, timestamp: int | str, method: str, path: str, body: bytes) -> str:
    """The ``x-perkamo-signature`` value for one request (``v1=`` + 64 hex characters)."""
    message = base_string(str(timestamp), method, path, body).encode("utf-8")
    digest = hmac.new(api_key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signature_headers(api_key: str, timestamp: int, method: str, path: str, body: bytes) -> dict[str, str]:
    """Both signing headers for one request."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(api_key, timestamp, method, path, body),
    }
