"""Perkville v2 connector: OAuth2 password grant, paging, limits, writes, and a local sandbox."""

from __future__ import annotations

from connectors.perkville.client import PerkvilleClient
from connectors.perkville.datetimes import format_filter_datetime, parse_perkville_datetime
from connectors.perkville.duplicates import RecordedAnswer, is_duplicate_answer
from connectors.perkville.errors import (
    AuthError,
    ConfigurationError,
    InvalidPageError,
    NotFound,
    PaginationError,
    PerkvilleError,
    PerkvilleHTTPError,
    RequestRejected,
    RetriableError,
    RetryBudgetExhausted,
)
from connectors.perkville.paging import ID_FIELDS, OffsetPaginator, Page, PageRequest, sanitize_path
from connectors.perkville.writes import AwardResult

__all__ = [
    "ID_FIELDS",
    "AuthError",
    "AwardResult",
    "ConfigurationError",
    "InvalidPageError",
    "NotFound",
    "OffsetPaginator",
    "Page",
    "PageRequest",
    "PaginationError",
    "PerkvilleClient",
    "PerkvilleError",
    "PerkvilleHTTPError",
    "RecordedAnswer",
    "RequestRejected",
    "RetriableError",
    "RetryBudgetExhausted",
    "format_filter_datetime",
    "is_duplicate_answer",
    "parse_perkville_datetime",
    "sanitize_path",
]
