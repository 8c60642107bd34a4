"""Request bodies of the v1 API (strict types, the documented length limits, JSON-safe objects).

Unknown fields are ignored.  ``tenant`` (legacy) and ``space`` are optional everywhere; when
given they must name the Space of the API key (checked by the routes, 403 otherwise).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, WithJsonSchema

from perkamo_core.models import MAX_EVENT, MAX_SPACE_SLUG, MAX_TRANSACTION_ID, MAX_USER_ID

MAX_BATCH = 100
MAX_JSON_DEPTH = 32
MAX_OCCURRED_AT = 64
MAX_VERSION = 64


def check_text(value: str) -> str:
    """``value`` if both databases can store it: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"objects may nest at most {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not key:
                raise ValueError("object keys must be non-empty strings")
            check_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
"""A JSON object whose numbers are finite and whose keys are non-empty."""

Text = Annotated[StrictStr, AfterValidator(check_text)]
"""A string both databases can store (PostgreSQL refuses NUL; UTF-8 refuses lone surrogates)."""

SpaceSlug = Annotated[Text, Field(min_length=1, max_length=MAX_SPACE_SLUG)]
UserId = Annotated[Text, Field(min_length=1, max_length=MAX_USER_ID)]
EventKey = Annotated[Text, Field(min_length=1, max_length=MAX_EVENT)]
TransactionId = Annotated[Text, Field(min_length=1, max_length=MAX_TRANSACTION_ID)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant: SpaceSlug | None = Field(default=None, description="Legacy: the Space slug of the API key.")
    space: SpaceSlug | None = Field(default=None, description="The Space slug of the API key.")


class IdentifyBody(_Body):
    """``POST /v1/identify``."""

    user_id: UserId
    traits: JsonObject | None = None


class EventBody(_Body):
    """``POST /v1/events`` and each item of ``POST /v1/events:batch``."""

    user_id: UserId
    event: EventKey
    transaction_id: TransactionId | None = None
    context: JsonObject | None = None
    occurred_at: Annotated[Text, Field(min_length=1, max_length=MAX_OCCURRED_AT)] | None = None


BatchItem = Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/EventBody"})]
"""One batch item: any JSON value here, validated as an ``EventBody`` by the route on its own
(so a bad item, even one with text the databases cannot store, fails alone)."""


class BatchBody(_Body):
    """``POST /v1/events:batch``: items are validated one by one so a bad item fails alone."""

    events: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]


class RedeemBody(_Body):
    """``POST /v1/rewards/redeem``."""

    user_id: UserId
    reward_key: EventKey
    transaction_id: TransactionId


class ConfigBody(BaseModel):
    """``POST /v1/admin/config/{module}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Annotated[Text, Field(min_length=1, max_length=MAX_VERSION)] | None = None
    active: StrictBool = True
    body: JsonObject
