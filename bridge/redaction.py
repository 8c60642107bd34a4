"""Redaction, the bridge's only implementation: secret-free copies of raw records (a dead letter's
raw Perkville record, on the dashboard and in ``deadletters list``) and of messages (a run's error,
its log lines, a dead letter's detail, a command's error line, the audit pack).

Pure: ``redact_record(value)`` returns a copy in which the value of every secret-looking key
(password, secret, token, API key, authorization, cookie, credentials, …; any case, any
separator, at any depth of dicts and lists) is ``MARKER``, and every string has its
``key=value`` / ``key: value`` secrets, ``Bearer``/``Basic`` credentials, a URL's
``user:password@`` and ``sk_…`` keys replaced by ``MARKER`` too. The input is never changed.
``redact_message(text, known)`` is ``redact_text`` for a message that is stored or printed: it
also drops every URL's query string (``?…``) and keeps at most ``MESSAGE_LIMIT`` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MARKER = "***"
MESSAGE_LIMIT = 2000

# Parts of a key name (lower-cased, separators dropped) that make its value a secret.
_SECRET_PARTS = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey",
    "authorization", "cookie", "credential", "sessionid", "signature",
)
# Whole key names (lower-cased, separators dropped) that are secrets but too short to match inside others.
_SECRET_NAMES = frozenset({"pwd", "pass", "key", "auth", "session", "jwt", "otp", "pin", "sid", "xperkamoapikey"})

# A secret-looking name followed by = or : and its value, inside free text (query strings, JSON
# text, headers). The name may carry a prefix (``refresh_token``, ``X-Api-Key``, ``db_password``).
_NAME = (
    r"[A-Za-z0-9_\-]*(?:password|passwd|passphrase|secret|token|api[_\-]?key|access[_\-]?key|"
    r"private[_\-]?key|authorization|cookie|credentials?|session[_\-]?id|signature)|pwd|pass|auth|jwt"
)
# (pattern, replacement) in order: a named secret's value, then scheme credentials anywhere,
# a URL's password, and key-like tokens.
_INLINE: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            rf"(?i)(?<![A-Za-z0-9])((?:{_NAME})[\"']?\s*[:=]\s*[\"']?)"
            r"((?:bearer|basic|token|digest)\s+)?[^\s\"'&,;}<>]+"
        ),
        rf"\1\2{MARKER}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._\-~+/]+=*"), rf"\1 {MARKER}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+@"), rf"\1{MARKER}@"),
    (re.compile(r"\b(?:sk|pk|rk)_(?:test|live)_[A-Za-z0-9_\-]+"), MARKER),
)
# A URL's query string (a message keeps the URL, never its parameters).
_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def is_secret_key(name: str) -> bool:
    """Whether a key's value is a secret, from its name alone (``Client-Secret``, ``apiKey``, …)."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return flat in _SECRET_NAMES or any(part in flat for part in _SECRET_PARTS)


def redact_text(text: str, known: Iterable[str | None] = ()) -> str:
    """``text`` with inline secrets replaced by ``MARKER``: ``password=…``, ``"token": "…"``,
    ``Authorization: Bearer …``, a URL's ``user:password@``, ``sk_live_…`` style keys, and any
    of the ``known`` secret values (the settings' own, of four characters or more; ``None``
    is skipped)."""
    for secret in known:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MARKER)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def redact_message(message: str, known: Iterable[str | None] = ()) -> str:
    """``message`` (an error, a log line, a detail) as it may be stored or shown: ``redact_text``,
    then every URL's query string replaced by ``?…``, at most ``MESSAGE_LIMIT`` characters."""
    return _URL_QUERY.sub(r"\1?…", redact_text(message, known))[:MESSAGE_LIMIT]


def redact_record(value: Any, known: Iterable[str | None] = ()) -> Any:
    """A copy of ``value`` (JSON-like: dicts, lists, scalars) with every secret replaced by
    ``MARKER``; ``known``: secret values to remove wherever they appear in a string."""
    known = tuple(known)
    if isinstance(value, Mapping):
        return {
            key: MARKER if isinstance(key, str) and is_secret_key(key) and value[key] is not None
            else redact_record(value[key], known)
            for key in value
        }
    if isinstance(value, (list, tuple)):
        return [redact_record(item, known) for item in value]
    if isinstance(value, str):
        return redact_text(value, known)
    return value
