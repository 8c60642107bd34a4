"""The client's writes: awards that survive unknown answers, external members, connection status.

``WriteMethods`` is mixed into ``PerkvilleClient``; it only calls the client's ``send`` (one
paced, retried request that also returns the ``Location`` header).  An award is idempotent by its
``trans_source_id``:

1. a refusal that reads as "already recorded" (``connectors.perkville.duplicates``) is an
   idempotent success, ``AwardResult(duplicate=True)``;
2. any other refusal (a 4xx but 401/403), and a POST still unanswered after the retry budget (5xx,
   network, truncated answers), first reads the row back, ``GET transactions/?business=…&
   trans_source_id=…``: a row with exactly our ``trans_source_id`` (and business) means the write
   happened, so it is a duplicate as well (``read_back=True``);
3. only then does a once-a-day refusal become ``limited`` and anything else raise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connectors.perkville.datetimes import format_filter_datetime
from connectors.perkville.duplicates import (
    DuplicatePredicate,
    RecordedAnswer,
    Verdict,
    duplicate_signal,
    is_once_per_day,
    read_back_verdict,
)
from connectors.perkville.errors import (
    ConfigurationError,
    NotFound,
    PerkvilleError,
    PerkvilleHTTPError,
    RetryBudgetExhausted,
)
from connectors.perkville.guard import trailing_id

log = logging.getLogger("connectors.perkville")

CONNECTION_STATUSES = frozenset({"ACTIVE", "INACTIVE"})
READ_BACK_RETRIES = 2
"""Retries of the read-back GET (the POST before it has already spent a whole budget)."""

_AWARD_FIELDS = frozenset(
    {
        "perk",
        "quantity",
        "trans_source_id",
        "limit_to_once_per_calendar_day",
        "user",
        "user__emails__email",
        "connection",
        "location",
        "business",
        "points",
        "transaction_dt",
    }
)
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AwardResult:
    """Outcome of ``award_points``: created, an idempotent duplicate, or refused by the once-a-day rule.

    ``transaction`` is the created row when Perkville answered with one (a Tastypie server answers
    201 with an empty body by default); ``resource_uri`` is the row's URI from the answer's body or
    its ``Location`` header, when either gave it.  ``read_back`` says the duplicate was confirmed by
    reading the row back after a refusal or an unanswered POST.
    """

    trans_source_id: str
    created: bool
    duplicate: bool = False
    limited: bool = False
    transaction: dict[str, Any] | None = None
    resource_uri: str | None = None
    read_back: bool = False

    @property
    def transaction_id(self) -> str | None:
        """The row's id, from the answered row or the trailing segment of its URI."""
        if self.transaction and self.transaction.get("transaction_id") is not None:
            return str(self.transaction["transaction_id"])
        return trailing_id(self.resource_uri) if self.resource_uri else None


@dataclass(frozen=True)
class Answer:
    """One successful answer: the decoded JSON (None when empty) and the ``Location`` header."""

    payload: Any
    location: str | None = None


def check_field_name(name: str, setting: str = "external_member_field") -> str:
    """A wire field name for the award body: an identifier, not one the connector already sends."""
    if not isinstance(name, str) or not _FIELD_NAME.match(name):
        raise ConfigurationError(f"{setting} must be a field name such as 'external_member_id', not {name!r}")
    if name in _AWARD_FIELDS:
        raise ConfigurationError(f"{setting} {name!r} is already a field of the award body; pick another")
    return name


class WriteMethods:
    """``award_points``, ``upsert_external_member`` and ``update_connection_status`` of the client.

    ``duplicate_answers`` (answers recorded by ``perkbridge probe --write-test``) and
    ``is_duplicate`` (an extra predicate) widen what counts as "already recorded"; both are plain
    attributes the client's constructor sets and a caller may replace.
    """

    duplicate_answers: tuple[RecordedAnswer, ...] = ()
    is_duplicate: DuplicatePredicate | None = None
    external_member_field: str = "external_member_id"

    if TYPE_CHECKING:
        tz: tzinfo
        api_url: str
        _external_members_path: str
        _external_members_enabled: bool

        def send(
            self,
            method: str,
            path: str,
            *,
            params: Mapping[str, Any] | None = None,
            body: Mapping[str, Any] | None = None,
            max_retries: int | None = None,
        ) -> Answer: ...

        def _disable_external_members(self) -> None: ...

    # ----------------------------------------------------------------- awards
    def award_points(
        self,
        *,
        perk: object,
        trans_source_id: str,
        user: object = None,
        email: str | None = None,
        connection: object = None,
        external_member_id: object = None,
        location: object = None,
        business: object = None,
        quantity: int = 1,
        points: int | None = None,
        transaction_dt: datetime | None = None,
        limit_to_once_per_calendar_day: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> AwardResult:
        """``POST transactions/``; a duplicate ``trans_source_id`` is an idempotent success.

        The customer is a ``user``, an ``email``, a ``connection`` or an ``external_member_id``
        (the external system's member id, sent as ``external_member_field``).
        """
        if not trans_source_id:
            raise ConfigurationError("award_points needs a trans_source_id (it makes retries safe)")
        if user is None and email is None and connection is None and external_member_id is None:
            raise ConfigurationError(
                "award_points needs a user, an email, a connection or an external_member_id"
            )
        body: dict[str, Any] = {
            "perk": _uri("perks", perk),
            "quantity": quantity,
            "trans_source_id": trans_source_id,
            "limit_to_once_per_calendar_day": bool(limit_to_once_per_calendar_day),
        }
        if user is not None:
            body["user"] = _uri("users", user)
        if email is not None:
            body["user__emails__email"] = email
        if connection is not None:
            body["connection"] = _uri("connections", connection)
        if external_member_id is not None:
            body[self.external_member_field] = str(external_member_id)
        if location is not None:
            body["location"] = _uri("locations", location)
        if business is not None:
            body["business"] = _uri("businesses", business)
        if points is not None:
            body["points"] = int(points)
        if transaction_dt is not None:
            body["transaction_dt"] = format_filter_datetime(transaction_dt, self.tz)
        body.update(extra or {})
        try:
            answer = self.send("POST", "transactions/", body=body)
        except PerkvilleHTTPError as exc:
            if exc.status in (401, 403) or not 400 <= exc.status < 500:
                raise
            return self._refused_award(exc, trans_source_id, business)
        except RetryBudgetExhausted as exc:
            verdict, row = self._read_back(trans_source_id, business)
            if verdict == "found":
                log.info(
                    "perkville: POST transactions/ for trans_source_id %s stayed unanswered (%s), but the "
                    "row is recorded (read back); counted once, as a duplicate",
                    trans_source_id,
                    exc.last_error,
                )
                return _duplicate(trans_source_id, row)
            raise
        payload = answer.payload
        created = dict(payload) if isinstance(payload, Mapping) else None
        uri = created.get("resource_uri") if created else None
        return AwardResult(
            trans_source_id,
            created=True,
            transaction=created,
            resource_uri=str(uri) if isinstance(uri, str) and uri else answer.location,
        )

    def _refused_award(self, exc: PerkvilleHTTPError, trans_source_id: str, business: object) -> AwardResult:
        signal = duplicate_signal(
            exc.status,
            exc.body,
            trans_source_id=trans_source_id,
            recorded=self.duplicate_answers,
            predicate=self.is_duplicate,
        )
        if signal == "duplicate":
            log.info("perkville: trans_source_id %s already recorded; treating as done", trans_source_id)
            return AwardResult(trans_source_id, created=False, duplicate=True)
        verdict, row = self._read_back(trans_source_id, business)
        if verdict == "found":
            log.info(
                "perkville: POST transactions/ for trans_source_id %s was refused with HTTP %d, but the "
                "row is recorded (read back); counted once, as a duplicate",
                trans_source_id,
                exc.status,
            )
            return _duplicate(trans_source_id, row)
        if signal == "maybe" and verdict == "unknown":
            # The answer suggests a duplicate (it names trans_source_id, or it is the answer the
            # probe recorded) and the read-back could not tell (the filter seems ignored).
            log.warning(
                "perkville: POST transactions/ for trans_source_id %s was refused with HTTP %d, an "
                "answer that suggests it is already recorded; the read-back could not confirm it, so "
                "it is treated as already recorded",
                trans_source_id,
                exc.status,
            )
            return AwardResult(trans_source_id, created=False, duplicate=True)
        if is_once_per_day(exc.body):
            log.info("perkville: %s refused by limit_to_once_per_calendar_day", trans_source_id)
            return AwardResult(trans_source_id, created=False, limited=True)
        raise exc

    def _read_back(self, trans_source_id: str, business: object) -> tuple[Verdict, Mapping[str, Any] | None]:
        """``GET transactions/?business=…&trans_source_id=…``; ``unknown`` when that read fails too."""
        params: dict[str, Any] = {"trans_source_id": trans_source_id, "limit": 20}
        if business is not None:
            params["business"] = trailing_id(business)
        try:
            answer = self.send("GET", "transactions/", params=params, max_retries=READ_BACK_RETRIES)
        except PerkvilleError as exc:
            log.info(
                "perkville: reading trans_source_id %s back failed (%s); the write stays unconfirmed",
                trans_source_id,
                type(exc).__name__,
            )
            return "unknown", None
        payload = answer.payload
        rows = payload.get("objects") if isinstance(payload, Mapping) else None
        if not isinstance(rows, list):
            return "unknown", None
        verdict, row = read_back_verdict(rows, trans_source_id=trans_source_id, business=business)
        if verdict == "unknown":
            log.warning(
                "perkville: GET transactions/?trans_source_id= answered rows of other trans_source_ids; the "
                "server seems to ignore that filter, so a refused write cannot be confirmed by reading it back"
            )
        return verdict, row

    # ----------------------------------------------------------------- external members, connections
    def upsert_external_member(
        self, member: Mapping[str, Any], *, resource_uri: str | None = None
    ) -> dict[str, Any] | None:
        """POST (create or update) an external member, or PATCH one through its ``resource_uri``.

        Returns the record Perkville answered, or ``{"resource_uri": …}`` from the ``Location``
        header of an empty answer, or ``{}``; None when the External Member API is absent.
        """
        if not self._external_members_enabled:
            return None
        path = self._external_members_path
        target = self._record_path(resource_uri) if resource_uri is not None else None
        try:
            if target is not None:
                answer = self.send("PATCH", target, body=member)
            else:
                answer = self.send("POST", path, body=member)
        except NotFound:
            if target is not None and self._external_members_probe():
                raise
            self._disable_external_members()
            return None
        if isinstance(answer.payload, Mapping):
            return dict(answer.payload)
        return {"resource_uri": answer.location} if answer.location else {}

    def _record_path(self, resource_uri: str) -> str:
        """A record's URI as a request path; refused when it is no URI or names another host."""
        text = str(resource_uri).strip()
        parts = urlsplit(text)
        if parts.scheme or parts.netloc:
            api = urlsplit(self.api_url)
            if (parts.scheme.lower(), parts.netloc.lower()) != (api.scheme.lower(), api.netloc.lower()):
                raise ConfigurationError(
                    "resource_uri points at another host; refusing to send the token there"
                )
        elif not text.startswith("/"):
            raise ConfigurationError(
                f"resource_uri must be the record's URI (such as /v2/external-members/12/), not {text!r}"
            )
        return text if text.endswith("/") else text + "/"

    def _external_members_probe(self) -> bool:
        """Whether the external-members list exists (so a 404 meant the record, not the endpoint)."""
        try:
            self.send("GET", self._external_members_path, params={"limit": 1})
        except NotFound:
            return False
        return True

    def update_connection_status(self, connection_id: object, status: str) -> dict[str, Any]:
        """PATCH a connection's ``status`` to ACTIVE (join) or INACTIVE (leave)."""
        value = status.upper()
        if value not in CONNECTION_STATUSES:
            raise ConfigurationError(f"connection status must be ACTIVE or INACTIVE, not {status!r}")
        answer = self.send("PATCH", f"connections/{trailing_id(connection_id)}/", body={"status": value})
        return dict(answer.payload) if isinstance(answer.payload, Mapping) else {}


def _duplicate(trans_source_id: str, row: Mapping[str, Any] | None) -> AwardResult:
    uri = row.get("resource_uri") if row is not None else None
    return AwardResult(
        trans_source_id,
        created=False,
        duplicate=True,
        transaction=dict(row) if row is not None else None,
        resource_uri=str(uri) if isinstance(uri, str) else None,
        read_back=True,
    )


def _uri(resource: str, value: object) -> str:
    text = str(value)
    return text if "/" in text else f"/v2/{resource}/{text}/"


__all__ = [
    "Answer",
    "AwardResult",
    "RecordedAnswer",
    "WriteMethods",
    "check_field_name",
]
