"""Balance mode's late voids: a void after the cut-over of a row from before it becomes that
row's reversal (the opening balance still held the row). A step over the mapped pages of the
transactions phase; the original row is read back through ``refetch``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from bridge.pipeline.pages import close_quietly
from bridge.pipeline.records import PageRecord, trailing_id
from bridge.source_clock import CutOver, to_stamp
from bridge.sources import Page
from mapping.events import EVENT_VOIDED, to_events


def with_late_voids(
    mapped: Iterator[tuple[Page, list[PageRecord]]],
    cutover: CutOver,
    customer_ids: Mapping[str, str] | None,
    *,
    refetch: Callable[[str], Mapping[str, Any]],
    business: str,
    timezone: str,
) -> Iterator[tuple[Page, list[PageRecord]]]:
    """Balance mode: a void after the cut-over of a row from before it becomes its reversal.

    Perkville's ``point_balance`` at the cut-over still held the row, and the opening balance
    carried it; the void takes it out again.  The ``VOID_REF`` row (dated at the void, so inside
    the window) names the voided row, which is read and mapped; only its reversal event
    (``void:`` id) is sent — never the original, which the opening balance already counts.
    A voided row from after the cut-over is in the window itself and maps as usual.  A row of
    the cut-over's last second that the opening balances carry (``CutOver.carries``) is
    skipped.
    """
    tz = timezone
    try:
        for page, records in mapped:
            for record in records:
                if not isinstance(record.raw, Mapping):
                    continue
                status = str(record.raw.get("transaction_status") or "").upper()
                if cutover.carries(
                    to_stamp(record.raw.get("transaction_dt"), tz), record.raw.get("transaction_id")
                ):
                    if record.problem is None:  # a void among them too: already in the balance
                        record.skipped, record.events = True, []
                    continue
                if not record.skipped:
                    continue
                voided = trailing_id(record.raw.get("voided_transaction"))
                if status != "VOID_REF" or voided is None:
                    continue
                original = refetch(voided)
                if not original:
                    continue
                result = to_events(
                    original,
                    business_id=business,
                    timezone=timezone,
                    customer_ids=customer_ids,
                )
                reversal = [e for e in result.events if e.event == EVENT_VOIDED]
                if (
                    result.ok
                    and len(reversal) == 1
                    and cutover.carries(
                        to_stamp(original.get("transaction_dt"), tz), original.get("transaction_id")
                    )
                ):
                    record.skipped = False
                    record.events = reversal
            yield page, records
    finally:
        close_quietly(mapped)


def with_voided_originals(
    mapped: Iterator[tuple[Page, list[PageRecord]]],
    customer_ids: Mapping[str, str] | None,
    *,
    refetch: Callable[[str], Mapping[str, Any]],
    business: str,
    timezone: str,
) -> Iterator[tuple[Page, list[PageRecord]]]:
    """Sync by ``transaction_dt``: a void of a row older than the window still reverses it.

    The reversal comes from the voided row, not from its ``VOID_REF`` (ARCHITECTURE, voids), and
    a row older than the look-back is not read again. Its ``VOID_REF`` row is dated at the void,
    so inside the window: the row it names is read back and mapped, and all its events are sent
    (the original again, a duplicate by its id, and the reversal). A voided row the pass has
    already read (it comes first in ``transaction_dt`` order) is not read back.
    """
    seen: set[str] = set()
    try:
        for page, records in mapped:
            for record in records:
                raw = record.raw if isinstance(record.raw, Mapping) else None
                if raw is None:
                    continue
                own = trailing_id(raw.get("transaction_id"))
                if own is not None:
                    seen.add(own)
                status = str(raw.get("transaction_status") or "").upper()
                voided = trailing_id(raw.get("voided_transaction"))
                if status != "VOID_REF" or voided is None or voided in seen or not record.skipped:
                    continue
                original = refetch(voided)
                if not original:
                    continue
                result = to_events(original, business_id=business, timezone=timezone, customer_ids=customer_ids)
                if result.ok and any(e.event == EVENT_VOIDED for e in result.events):
                    record.skipped = False
                    record.events = list(result.events)
            yield page, records
    finally:
        close_quietly(mapped)
