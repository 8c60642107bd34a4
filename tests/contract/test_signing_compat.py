"""The client's signatures and the server's verification agree (perkamo-api.md §3), for any request."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.perkamo import sign
from perkamo_core.api.errors import SignatureError
from perkamo_core.api.signing import verify_signature

keys = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60).map(lambda k: "sk_test_" + k)
paths = st.from_regex(r"/v1/[a-z:./%0-9_-]{1,40}", fullmatch=True)
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE"])
timestamps = st.integers(min_value=1_000_000_000, max_value=4_000_000_000)


@settings(max_examples=150)
@given(key=keys, timestamp=timestamps, method=methods, path=paths, body=st.binary(max_size=300), skew=st.integers(-300, 300))
def test_a_client_signature_verifies_within_the_window(
    key: str, timestamp: int, method: str, path: str, body: bytes, skew: int
) -> None:
    signature = sign(key, timestamp, method, path, body)
    verify_signature(
        key, timestamp=str(timestamp), signature=signature, method=method, path=path, body=body, now=timestamp + skew
    )


@settings(max_examples=150)
@given(key=keys, timestamp=timestamps, path=paths, body=st.binary(min_size=1, max_size=300), data=st.data())
def test_any_changed_byte_breaks_the_signature(key: str, timestamp: int, path: str, body: bytes, data: st.DataObject) -> None:
    signature = sign(key, timestamp, "POST", path, body)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(SignatureError):
        verify_signature(
            key, timestamp=str(timestamp), signature=signature, method="POST", path=path, body=tampered, now=timestamp
        )
    with pytest.raises(SignatureError):
        verify_signature(
            key + "x", timestamp=str(timestamp), signature=signature, method="POST", path=path, body=body, now=timestamp
        )
