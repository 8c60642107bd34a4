"""``decode_json`` gives exactly what ``json.loads`` gives, or fails as it fails."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pytest

from connectors.perkville.jsonbody import decode_json


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (``1 == 1.0`` is not enough; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


BODIES = [
    b'{"meta": {"limit": 1000, "next": null}, "objects": [{"transaction_id": 10000001, "points": -5}]}',
    b'{"a": 1, "a": 2}',  # the last of a repeated key
    b"[9223372036854775807, -9223372036854775808, 18446744073709551615]",  # within 64 bits
    b"[18446744073709551616, -9223372036854775809, 123456789012345678901234567890]",  # beyond
    b'{"id": 99999999999999999999, "title": "1234567890123456789 in a string"}',
    b"[1e400, -1e400, NaN, Infinity, -Infinity, 1.5e-400, -0.0, -0, 1E2]",
    b'["\\ud800", "\\u0000", "caf\\u00e9", "\xc3\xa9"]',
    b"\xef\xbb\xbf{}",  # a byte-order mark
    '{"k": "v"}'.encode("utf-16"),
    b"  {}  ",
    b'[0.1, 0.2, 1.0000000000000002, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308]',
]


@pytest.mark.parametrize("body", BODIES)
def test_the_same_value_as_json_loads(body: bytes) -> None:
    assert _same(decode_json(body), json.loads(body))


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1', b"[1,]", b"01", b'"\xff"', b"{} x"])
def test_what_json_loads_refuses_is_refused_as_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ValueError):
        decode_json(body)


def test_random_numbers_decode_to_the_same_values() -> None:
    rng = random.Random(14)
    floats = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
    values: list[Any] = [repr(f) for f in floats if math.isfinite(f)]
    values += [str(rng.randint(-(2**70), 2**70)) for _ in range(500)]
    values += [f"{rng.randint(0, 10**17)}.{rng.randint(0, 10**6)}e{rng.randint(-320, 300)}" for _ in range(500)]
    for text in values:
        body = f'{{"n": [{text}]}}'.encode()
        assert _same(decode_json(body), json.loads(body)), text
