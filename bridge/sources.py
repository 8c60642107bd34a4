"""The seams between the bridge and Perkville: what the pipeline, dry run and reconcile read
(``PerkvilleSource``) and what write-back writes (``PerkvilleWriter``).

``connectors.perkville.PerkvilleClient`` satisfies both (checked by mypy where the client is wired
and by ``tests/bridge/test_sources.py``); tests may hand the pipeline any other implementation.
Every ``iter_*`` yields raw pages in offset order; closing the iterator ends the stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from connectors.perkville import AwardResult, RecordedAnswer
from connectors.perkville.paging import Page

__all__ = ["AwardResult", "Page", "PerkvilleSource", "PerkvilleWriter", "request_rate", "request_stats", "stats_since"]


def request_rate(source: object) -> float | None:
    """The requests per second a source's adaptive budget allows now; None for an unpaced or
    test source (only ``PerkvilleClient`` has a ``budget``)."""
    rate = getattr(getattr(source, "budget", None), "rate", None)
    return round(float(rate), 2) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def request_stats(source: object) -> dict[str, int]:
    """The counters a source keeps of its requests (``PerkvilleClient.stats``: requests, 429s,
    answers by status class, …); empty for a source that keeps none."""
    stats = getattr(source, "stats", None)
    if not isinstance(stats, dict):
        return {}
    return {str(k): int(v) for k, v in stats.items() if isinstance(v, int) and not isinstance(v, bool)}


def stats_since(source: object, before: dict[str, int]) -> dict[str, int]:
    """What the source's counters grew by since ``before`` (``request_stats`` then): one run's
    share of a client that serves several runs."""
    return {name: n - before.get(name, 0) for name, n in request_stats(source).items()}


def allows_filter(source: object, resource: str, param: str) -> bool | None:
    """What the API's probed schema says of ``param`` on ``resource``: True / False, or None when
    unknown (not probed, no schema served, or a source without one)."""
    check = getattr(source, "allows_filter", None)
    return check(resource, param) if callable(check) else None


@runtime_checkable
class PerkvilleSource(Protocol):
    """Read access to one Perkville account (raw Tastypie JSON, the source's clock and zone)."""

    def iter_businesses(self, **params: Any) -> Iterator[Page]: ...

    def iter_locations(self, business: object = None, **params: Any) -> Iterator[Page]: ...

    def iter_perks(self, business: object = None, **params: Any) -> Iterator[Page]: ...

    def iter_users(
        self,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]: ...

    def iter_connections(
        self,
        business: object = None,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]: ...

    def iter_transactions(
        self,
        business: object = None,
        *,
        transaction_dt_gte: datetime | None = None,
        transaction_dt_lt: datetime | None = None,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        order_by: str | Sequence[str] | None = None,
        **params: Any,
    ) -> Iterator[Page]: ...

    def iter_external_members(self, business: object = None, **params: Any) -> Iterator[Page]:
        """Nothing (after one warning) where the External Member API is not available."""
        ...

    def fetch_newest(
        self, resource: str, business: object = None, *, field: str = "last_mod_dt", **params: Any
    ) -> Page:
        """One request: the rows of ``resource`` with the highest ``field`` (``page.ordered``
        False when the server ignored the order)."""
        ...

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """One API call (a single record: ``GET transactions/17/``); the decoded JSON."""
        ...

    def close(self) -> None: ...


class PerkvilleWriter(Protocol):
    """What write-back calls on Perkville."""

    duplicate_answers: tuple[RecordedAnswer, ...]
    """Answers to a repeated ``trans_source_id`` recorded by ``perkbridge probe --write-test``."""

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
        """``POST transactions/``; a duplicate ``trans_source_id`` is an idempotent success."""
        ...

    def upsert_external_member(
        self, member: Mapping[str, Any], *, resource_uri: str | None = None
    ) -> dict[str, Any] | None: ...
