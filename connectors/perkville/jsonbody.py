"""Decoding Perkville's JSON bodies: orjson where it gives what the standard library gives.

A page of 1,000 transactions (about 500 kB) decodes in about 1.5 ms with orjson against 3.5 ms
with ``json.loads``. The two differ on a few inputs: orjson turns an integer beyond 64 bits into
a float, where ``json`` keeps it exact, and it refuses what ``json`` accepts (``NaN``, ``1e400``,
a lone surrogate escape, a byte-order mark, UTF-16). A body holding a run of 19 or more digits
anywhere (the shortest integer that can pass 64 bits), or one orjson refuses, goes to ``json``:
every body decodes to exactly what ``json.loads`` returns, or fails as it fails (``ValueError``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
"""Every ASCII digit becomes ``0`` and every other byte a space (for ``bytes.translate``)."""
_LONG_RUN = b"0" * 19
"""After the translation, a run of 19 digits; an integer of fewer digits fits orjson's 64 bits."""


def decode_json(content: bytes) -> Any:
    """``json.loads(content)``, computed by orjson when that gives the same value."""
    if _LONG_RUN not in content.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return json.loads(content)
