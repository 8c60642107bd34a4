"""The client's reads of Perkville's list resources: businesses, locations, perks, users,
connections and transactions (with windows and order), a list's newest rows, and external
members.

``ReadMethods`` is mixed into ``PerkvilleClient``. It only says what to ask each resource for and
calls the client's ``iter_pages`` (paced, retried, overlapped where the list allows it, guarded);
the values stay as Perkville sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from connectors.perkville.datetimes import format_filter_datetime
from connectors.perkville.errors import ConfigurationError, NotFound
from connectors.perkville.guard import trailing_id
from connectors.perkville.paging import ID_FIELDS, Page, sanitize_path

if TYPE_CHECKING:
    from connectors.perkville.guard import StreamGuard

log = logging.getLogger("connectors.perkville")


class ReadMethods:
    """The list reads of the client (``iter_*``, ``fetch_newest``, ``iter_windows``)."""

    if TYPE_CHECKING:
        tz: tzinfo
        stats: dict[str, int]
        _external_members_path: str
        _external_members_enabled: bool

        def iter_pages(
            self,
            path: str,
            params: Mapping[str, Any] | None = None,
            *,
            page_size: int | None = None,
            _guard: StreamGuard | None = None,
        ) -> Iterator[Page]: ...

        def _url(self, path: str) -> str: ...

    def _params(self, business: object, params: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if business is not None:
            out["business"] = trailing_id(business)
        for key, value in params.items():
            if value is None:
                continue
            out[key] = format_filter_datetime(value, self.tz) if isinstance(value, datetime) else value
        return out

    def iter_businesses(self, **params: Any) -> Iterator[Page]:
        """Businesses the staff account can see."""
        return self.iter_pages("businesses/", self._params(None, params))

    def iter_locations(self, business: object = None, **params: Any) -> Iterator[Page]:
        """Locations of a business (with ``external_location_id``)."""
        return self.iter_pages("locations/", self._params(business, params))

    def iter_perks(self, business: object = None, **params: Any) -> Iterator[Page]:
        """Perks (earning and redeeming rules); pass ``classification="REDEEM"`` to narrow."""
        return self.iter_pages("perks/", self._params(business, params))

    def iter_users(
        self,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Users, optionally changed within ``[last_mod_dt_gte, last_mod_dt_lt)``."""
        params.update(last_mod_dt__gte=last_mod_dt_gte, last_mod_dt__lt=last_mod_dt_lt)
        return self.iter_pages("users/", self._params(None, params))

    def iter_connections(
        self,
        business: object = None,
        *,
        last_mod_dt_gte: datetime | None = None,
        last_mod_dt_lt: datetime | None = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Connections (customer ↔ business, with ``point_balance``), optionally changed in a window."""
        params.update(last_mod_dt__gte=last_mod_dt_gte, last_mod_dt__lt=last_mod_dt_lt)
        return self.iter_pages("connections/", self._params(business, params))

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
    ) -> Iterator[Page]:
        """The points ledger (earns, redemptions, voids) with optional windows and order."""
        params.update(
            transaction_dt__gte=transaction_dt_gte,
            transaction_dt__lt=transaction_dt_lt,
            last_mod_dt__gte=last_mod_dt_gte,
            last_mod_dt__lt=last_mod_dt_lt,
        )
        if order_by:
            params["order_by"] = [order_by] if isinstance(order_by, str) else list(order_by)
        return self.iter_pages("transactions/", self._params(business, params))

    def fetch_newest(
        self, resource: str, business: object = None, *, field: str = "last_mod_dt", **params: Any
    ) -> Page:
        """One request: the (at most two) rows of ``resource`` with the highest ``field``.

        Asks ``order_by=-field,-id``; ``page.ordered`` is False when the two rows show the server
        ignoring that order (they are then just rows it holds, not the newest).  An empty page:
        nothing matches.  The values stay as Perkville sent them (its clock, its zone).
        """
        name = resource.strip("/")
        query = dict(params)
        query["order_by"] = [f"-{field}", f"-{ID_FIELDS.get(name, 'id')}"]
        pages = self.iter_pages(f"{name}/", self._params(business, query), page_size=2)
        first = next(pages, None)
        close = getattr(pages, "close", None)  # a generator: let it finish now
        if close is not None:
            close()
        return first or Page(objects=[], meta={}, path=f"{name}/")

    def iter_external_members(self, business: object = None, **params: Any) -> Iterator[Page]:
        """External member records; yields nothing (after one warning) if the endpoint does not exist."""
        if not self._external_members_enabled:
            return
        try:
            yield from self.iter_pages(self._external_members_path, self._params(business, params))
        except NotFound:
            self._disable_external_members()

    @property
    def external_members_enabled(self) -> bool:
        return self._external_members_enabled

    @property
    def external_members_path(self) -> str:
        return self._external_members_path

    def _disable_external_members(self) -> None:
        if self._external_members_enabled:
            log.warning(
                "perkville: %s answered 404; the External Member API is not available to this "
                "client, so external member sync is disabled for this run",
                sanitize_path(self._url(self._external_members_path)),
            )
        self._external_members_enabled = False

    def iter_windows(
        self,
        resource: str,
        *,
        field: str,
        start: datetime,
        end: datetime,
        window: timedelta,
        business: object = None,
        **params: Any,
    ) -> Iterator[Page]:
        """Read ``[start, end)`` in consecutive ``field`` windows, each ordered by ``(field, id)``.

        If the server is caught ignoring the window filter, the current window is finished with
        client-side filtering and the rest of the range is read in ONE client-filtered scan
        (instead of one full scan per window).
        """
        if window <= timedelta(0):
            raise ConfigurationError("window must be positive")
        name = resource.strip("/")
        id_field = ID_FIELDS.get(name, "id")
        lower = start
        while lower < end:
            upper = min(end, lower + window)
            before = self.stats["dropped_rows"]
            query = dict(params)
            query.update({f"{field}__gte": lower, f"{field}__lt": upper, "order_by": [field, id_field]})
            yield from self.iter_pages(f"{name}/", self._params(business, query))
            lower = upper
            if self.stats["dropped_rows"] > before and lower < end:
                query = dict(params)
                query.update({f"{field}__gte": lower, f"{field}__lt": end, "order_by": [field, id_field]})
                yield from self.iter_pages(f"{name}/", self._params(business, query))
                return
