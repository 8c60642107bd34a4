"""Redaction of raw records (secret-looking keys at any depth, inline secrets in strings) and of
messages (the same, plus URL query strings dropped and a bounded length)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.redaction import MARKER, MESSAGE_LIMIT, is_secret_key, redact_message, redact_record, redact_text


@pytest.mark.parametrize(
    "key",
    [
        "password", "PASSWORD", "Password", "db_password", "passwd", "pwd", "secret", "client_secret",
        "clientSecret", "Client-Secret", "token", "access_token", "refreshToken", "id_token", "api_key",
        "apiKey", "API-KEY", "x-api-key", "X-Perkamo-Api-Key", "authorization", "Authorization",
        "cookie", "Set-Cookie", "credentials", "session_id", "sessionId", "private_key", "signature",
        "key", "auth",
    ],
)
def test_secret_looking_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "id", "user", "points", "classification", "trans_source_id", "transaction_dt", "resource_uri",
        "last_mod_dt", "voucher", "perk", "business", "email", "first_name", "monkey", "keystone_id",
        "passage", "title", "quantity", "negative", "location",
    ],
)
def test_ordinary_perkville_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_a_nested_record_keeps_its_shape_and_loses_its_secrets() -> None:
    raw: dict[str, Any] = {
        "id": 7,
        "points": 120,
        "password": "hunter2",
        "user": {"email": "a@example.com", "Api_Key": "k-123", "tokens": ["t1", "t2"]},
        "history": [{"client_secret": {"nested": "s3cr3t"}}, {"note": "ok", "cookie": "sid=abc"}],
        "empty_token": None,
    }
    before = copy.deepcopy(raw)
    out = redact_record(raw)
    assert out == {
        "id": 7,
        "points": 120,
        "password": MARKER,
        "user": {"email": "a@example.com", "Api_Key": MARKER, "tokens": MARKER},
        "history": [{"client_secret": MARKER}, {"note": "ok", "cookie": MARKER}],
        "empty_token": None,
    }
    assert raw == before  # a copy: the input is unchanged


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("https://api.example.com/v2/users/?password=hunter2&page=2", "hunter2", "page=2"),
        ("https://x.test/cb?code=1&access_token=abc.def-ghi&x=1", "abc.def-ghi", "code=1"),
        ("GET /v2/?api_key=sk9f8e7d&limit=5", "sk9f8e7d", "limit=5"),
        ('{"token": "tok-123", "id": 5}', "tok-123", '"id": 5'),
        ("Authorization: Bearer eyJhbGciOi.J9.x", "eyJhbGciOi", "Authorization"),
        ("header authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "header"),
        ("postgresql+psycopg://perk:hunter2@db:5432/x", "hunter2", "perk:"),
        ("key sk_live_abcDEF123 was rejected", "sk_live_abcDEF123", "was rejected"),
        ("client_secret : 's p' and more", "'s", "and more"),
        ("PASSWORD=Hunter2;next=1", "Hunter2", "next=1"),
    ],
)
def test_inline_secrets_in_strings(text: str, gone: str, kept: str) -> None:
    out = redact_text(text)
    assert gone not in out and MARKER in out and kept in out, out


def test_known_secret_values_go_wherever_they_appear() -> None:
    raw = {"note": "paid with K3yValue-99 at the desk", "list": ["K3yValue-99"], "n": 1}
    assert redact_record(raw, known=("K3yValue-99", "abc")) == {
        "note": f"paid with {MARKER} at the desk", "list": [MARKER], "n": 1
    }
    assert redact_text("abc stays: too short to be a secret", known=("abc",)).startswith("abc")


def test_plain_text_is_left_as_it_is() -> None:
    text = "transaction 1234 has classification MYSTERY; see https://api.perkville.com/v2/transactions/1234/"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("message", "secret", "absent"),
    [
        ("token=abcd1234", None, "abcd1234"),
        ('{"access_token": "tok-9"}', None, "tok-9"),
        ("GET https://api.test/v2/users/?access=me&key=1 failed", None, "key=1"),
        ("failed with pw Secret#Pass", "Secret#Pass", "Secret#Pass"),
        ("x-perkamo-api-key: pk-abc-123 refused", None, "pk-abc-123"),
        ("Authorization: Bearer eyJhbGciOi.J9.x", None, "eyJhbGciOi"),
        ("key sk_live_abcDEF123 was rejected", None, "abcDEF123"),
    ],
    ids=["token-kv", "json-token", "url-query", "known-secret", "api-key-header", "bearer", "sk-key"],
)
def test_redact_message(message: str, secret: str | None, absent: str) -> None:
    out = redact_message(message, [secret])
    assert absent not in out and (MARKER in out or "?…" in out), out


def test_a_message_keeps_its_urls_without_their_query_strings() -> None:
    out = redact_message("GET https://api.test/v2/users/?access=me&page=2 failed: HTTP 500")
    assert out == "GET https://api.test/v2/users/?… failed: HTTP 500"
    plain = "transaction 1234 failed; see https://api.perkville.com/v2/transactions/1234/"
    assert redact_message(plain) == plain


def test_a_message_is_bounded_and_none_or_short_known_values_are_skipped() -> None:
    assert len(redact_message("x" * (MESSAGE_LIMIT + 500))) == MESSAGE_LIMIT
    assert redact_message("abc and K3yValue-99", [None, "", "abc", "K3yValue-99"]) == f"abc and {MARKER}"


# Hypothesis: JSON-like records with secrets planted under secret keys at any depth.
_SECRET_KEYS = st.sampled_from(["password", "Client_Secret", "apiKey", "token", "Authorization", "cookie"])
_PLAIN_KEYS = st.sampled_from(["id", "user", "points", "note", "items", "title", "business"])
_SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=12, max_size=20).map(lambda s: "Z" + s)
_PLAIN_TEXT = st.text(alphabet="abcdefghij 0123456789.-/", max_size=20)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), _PLAIN_TEXT)


def _records(secret: str) -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_PLAIN_KEYS, children, max_size=4),
            st.dictionaries(_SECRET_KEYS, st.just(secret), min_size=1, max_size=2),
            st.builds(lambda k: {"url": f"https://h.test/p?{k}={secret}&page=1"}, _SECRET_KEYS),
        )

    return st.recursive(_SCALARS, extend, max_leaves=20)


@given(st.data())
def test_no_planted_secret_survives_and_redaction_is_idempotent(data: st.DataObject) -> None:
    secret = data.draw(_SECRET)
    record = data.draw(_records(secret))
    before = copy.deepcopy(record)
    out = redact_record(record)
    assert secret not in json.dumps(out)
    assert redact_record(out) == out
    assert record == before


@given(st.recursive(_SCALARS, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_PLAIN_KEYS, c))))
def test_records_without_secrets_are_unchanged(record: Any) -> None:
    assert redact_record(record) == record
