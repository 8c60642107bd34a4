"""Where the source's clock stands as a run starts: its newest change per resource, and the
balance-mode cut-over. A few requests each; the answers stay in the source's clock and zone.

Outside the pipeline package so that a command can read them before it imports the database
layer (``bridge.opening``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.source_clock import SYNC_RESOURCES, CutOver, newest, to_row_id, to_stamp
from bridge.sources import PerkvilleSource, allows_filter

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


Signposts = dict[str, tuple[str, datetime | None]]
"""Per synced resource: the field its newest stamp was read by, and that stamp (``None``: no rows)."""


def read_signposts(
    source: PerkvilleSource, business: str, timezone: str, *, earlier: Signposts | None = None
) -> Signposts:
    """The newest ``last_mod_dt`` of each synced resource (one request each; ``None``: no rows).

    A server that ignores ``order_by`` answers some other row, which is older: that only keeps
    the cursors of unordered passes lower (more is read again), and the balance-mode cut-over
    does not rely on it (``find_cutover``). ``earlier``: signposts this run already read (while
    it started up: ``bridge.opening``); one read by the field the source now wants is not asked
    again.
    """
    found: Signposts = {}
    for resource in SYNC_RESOURCES:
        field = cursor_field(source, resource)
        before = earlier.get(resource) if earlier else None
        if before is not None and before[0] == field:
            found[resource] = before
            continue
        page = source.fetch_newest(resource, business, field=field)
        found[resource] = (field, newest([to_stamp(row.get(field), timezone) for row in page.objects]))
    return found


def cursor_field(source: PerkvilleSource, resource: str) -> str:
    """``last_mod_dt``, or ``transaction_dt`` for transactions when the probed schema lists no
    ``last_mod_dt`` filter on them (sync then reads by date with the look-back)."""
    if resource == "transactions" and allows_filter(source, resource, "last_mod_dt__gte") is False:
        return "transaction_dt"
    return "last_mod_dt"


def find_cutover(
    source: PerkvilleSource, business: str, timezone: str, signposts: Mapping[str, datetime | None]
) -> CutOver:
    """The balance-mode cut-over: just after the newest row by ``(transaction_dt, transaction_id)``
    Perkville holds now (``CutOver``).

    The newest row is asked for, then confirmed by asking for every row from its second on, so a
    server that ignores ``order_by`` still gives the right answer (in a few more requests). With
    no transactions at all: the newest change of any resource (``signposts``); with no data at
    all, the epoch (everything later is replayed).
    """

    def top(rows: Iterable[Mapping[str, Any]]) -> tuple[datetime, int] | None:
        keys = [
            (stamp, to_row_id(row.get("transaction_id")) or -1)
            for row in rows
            if (stamp := to_stamp(row.get("transaction_dt"), timezone)) is not None
        ]
        return max(keys, default=None)

    found = top(source.fetch_newest("transactions", business, field="transaction_dt").objects)
    while found is not None:
        rows: list[Mapping[str, Any]] = []
        for page in source.iter_transactions(business, transaction_dt_gte=found[0]):
            rows.extend(page.objects)
        beyond = top(rows)
        if beyond is None or beyond <= found:
            return CutOver.after(found[0], found[1] if found[1] >= 0 else None)
        found = beyond
    others = newest(list(signposts.values()))
    return CutOver(others if others is not None else EPOCH)
