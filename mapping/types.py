"""Value objects the mapping layer returns: Perkamo calls, id-map entries, issues and skips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CustomerIdAssignment",
    "IdStrategy",
    "IdMapEntry",
    "IdentifyCall",
    "IdentifyResult",
    "MappingIssue",
    "MappingResult",
    "PerkamoEvent",
    "ProgramTranslation",
    "Severity",
    "Skipped",
    "WritebackCode",
    "WritebackDecision",
    "PerkvilleTransactionPayload",
]

Severity = Literal["error", "warning"]
IdStrategy = Literal["perkville_user", "external_member", "email"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class MappingIssue(BaseModel):
    """A problem with one record, returned as data (never raised).

    ``severity="error"``: the record produced no Perkamo call and should be dead-lettered.
    ``severity="warning"``: the call was produced without the named field (or with a caveat).
    """

    model_config = _FROZEN

    record_id: str | None
    field: str | None
    reason: str
    raw: Any = None
    severity: Severity = "error"
    record_type: str | None = None


class Skipped(BaseModel):
    """A record deliberately not mapped (e.g. a ``VOID_REF`` row), counted by the bridge as skipped."""

    model_config = _FROZEN

    record_id: str | None
    reason: str
    raw: Any = None
    record_type: str | None = None


# The instance slots every pydantic model has, written through their descriptors: one C call each,
# cheaper than ``object.__setattr__`` (which looks the descriptor up again on every call).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_EVENT_FIELDS = frozenset({"user_id", "event", "transaction_id", "context", "occurred_at"})
_RESULT_FIELDS = frozenset({"events", "issues", "skipped"})


def trusted_event(
    user_id: str, event: str, transaction_id: str, context: dict[str, Any], occurred_at: datetime | None
) -> PerkamoEvent:
    """A ``PerkamoEvent`` from values already typed by the mapping (no validation; the hot path).

    Equal to ``PerkamoEvent(...)`` of the same values; what ``model_construct`` does, minus its
    per-field alias handling.
    """
    made = PerkamoEvent.__new__(PerkamoEvent)
    _set_dict(made, {"user_id": user_id, "event": event, "transaction_id": transaction_id,
                     "context": context, "occurred_at": occurred_at})
    _set_fields_set(made, set(_EVENT_FIELDS))
    _set_extra(made, None)
    _set_private(made, None)
    return made


def trusted_result(events: list[PerkamoEvent]) -> MappingResult:
    """A ``MappingResult`` holding only ``events`` (no issues, no skips), built without validation."""
    made = MappingResult.__new__(MappingResult)
    _set_dict(made, {"events": events, "issues": [], "skipped": []})
    _set_fields_set(made, set(_RESULT_FIELDS))
    _set_extra(made, None)
    _set_private(made, None)
    return made


class PerkamoEvent(BaseModel):
    """One event for ``POST /v1/events`` (or ``CoreService.ingest``), with its deterministic id."""

    model_config = _FROZEN

    user_id: str
    event: str
    transaction_id: str
    context: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/events``; ``occurred_at`` as ISO-8601 UTC with ``Z``.

        Non-integral points stay ``Decimal`` in the context; encode them as JSON numbers.
        """
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "event": self.event,
            "transaction_id": self.transaction_id,
            "context": dict(self.context),
        }
        if self.occurred_at is not None:
            body["occurred_at"] = self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return body


class IdentifyCall(BaseModel):
    """One ``identify`` call: the customer id, its traits and the Perkville user it came from."""

    model_config = _FROZEN

    user_id: str
    traits: dict[str, Any] = Field(default_factory=dict)
    perkville_user_id: str


class MappingResult(BaseModel):
    """What mapping one Perkville record produced: events, issues and deliberate skips."""

    model_config = _FROZEN

    events: list[PerkamoEvent] = Field(default_factory=list)
    issues: list[MappingIssue] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no issue of severity ``error`` was found (warnings allowed)."""
        return not any(issue.severity == "error" for issue in self.issues)


class IdMapEntry(BaseModel):
    """One row of the id map: which customer id a Perkville user got, by which strategy and source.

    ``strategy`` is the configured strategy; ``source`` is what actually produced the id (differs
    from ``strategy`` after a fallback, and ``note`` then says why).
    """

    model_config = _FROZEN

    customer_id: str
    perkville_user_id: str
    strategy: IdStrategy
    source: IdStrategy
    source_value: str
    note: str | None = None


class CustomerIdAssignment(BaseModel):
    """The result of ``to_customer_id``: the id, its id-map entry and any warnings."""

    model_config = _FROZEN

    customer_id: str
    entry: IdMapEntry
    issues: list[MappingIssue] = Field(default_factory=list)


class IdentifyResult(BaseModel):
    """The result of ``to_identify``: the call (``None`` when the user is unusable), id map, issues."""

    model_config = _FROZEN

    call: IdentifyCall | None
    entry: IdMapEntry | None
    issues: list[MappingIssue] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the identify call was produced (warnings allowed)."""
        return self.call is not None


class PerkvilleTransactionPayload(BaseModel):
    """What write-back sends to Perkville's Transaction API for one Perkamo event."""

    model_config = _FROZEN

    perk_id: str
    trans_source_id: str
    perkville_user_id: str | None = None
    email: str | None = None
    external_member_id: str | None = None
    """The external system's member id naming the customer (id strategy ``external_member``)."""
    location_id: str | None = None
    quantity: int = 1
    transaction_dt: str | None = None
    limit_to_once_per_calendar_day: bool = False

    def to_wire(self, *, external_member_field: str = "external_member_id") -> dict[str, Any]:
        """The POST body (field names as far as known; see perkville-api.md §10).

        ``external_member_field`` is the wire name of ``external_member_id`` (unknown, so a setting).
        """
        body: dict[str, Any] = {
            "perk": f"/v2/perks/{self.perk_id}/",
            "quantity": self.quantity,
            "trans_source_id": self.trans_source_id,
        }
        if self.perkville_user_id is not None:
            body["user"] = f"/v2/users/{self.perkville_user_id}/"
        if self.email is not None:
            body["user__emails__email"] = self.email
        if self.external_member_id is not None:
            body[external_member_field] = self.external_member_id
        if self.location_id is not None:
            body["location"] = f"/v2/locations/{self.location_id}/"
        if self.transaction_dt is not None:
            body["transaction_dt"] = self.transaction_dt
        if self.limit_to_once_per_calendar_day:
            body["limit_to_once_per_calendar_day"] = True
        return body


WritebackCode = Literal[
    "born_in_perkville", "migration_event", "no_perk_for_event", "bad_perk", "no_transaction_id",
    "no_event_name", "not_round_trippable", "no_perkville_member",
]


class WritebackDecision(BaseModel):
    """Either a payload to send to Perkville, or why the event is not written back.

    ``code`` is a stable machine-readable reason (match on it, not on ``reason``'s wording).
    """

    model_config = _FROZEN

    payload: PerkvilleTransactionPayload | None = None
    reason: str | None = None
    code: WritebackCode | None = None
    transaction_id: str | None = None


class ProgramTranslation(BaseModel):
    """Perkamo program modules translated from Perkville perks, with what could not be translated."""

    model_config = _FROZEN

    modules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    issues: list[MappingIssue] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
