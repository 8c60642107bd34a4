"""Errors the v1 API adds to the core's tree (``perkamo_core.errors``); both answer as their status.

::

    CoreError
    ├── ValidationError (400)
    │   └── BodyTooLarge (400, code "payload_too_large")   the body exceeds the size limit
    └── AuthenticationError (401)
        └── SignatureError (401)                          signature missing where required
                                                          ("signature_required"), malformed or
                                                          wrong ("invalid_signature"), or outside
                                                          the time window ("stale_signature")
"""

from __future__ import annotations

from perkamo_core.errors import AuthenticationError, ValidationError


class BodyTooLarge(ValidationError):
    """The request body is larger than the server accepts."""

    default_code = "payload_too_large"


class SignatureError(AuthenticationError):
    """The request signature is missing, malformed, stale or does not match (401)."""

    default_code = "invalid_signature"
