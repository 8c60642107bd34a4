"""Cursors, signposts, look-back, cut-over and lag in the source's own clock (pure functions).

Perkville stamps ``last_mod_dt`` and ``transaction_dt`` with its own clock, as naive times in a
zone the bridge is told (``PERKVILLE_TIMEZONE``) and may be told wrong.  Nothing here compares
those stamps with this machine's clock: every bound sent back to Perkville is derived from a
stamp Perkville itself sent, read in the same zone, so it turns back into Perkville's own text
whatever that zone setting says and however far off either clock is.  ``docs/bridge.md``,
"Cursors and the source's clock", explains the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from connectors.perkville.datetimes import parse_perkville_datetime, to_tzinfo

SYNC_RESOURCES = ("users", "connections", "transactions")
"""The resources incremental sync reads by ``last_mod_dt``, each with its own cursor."""

_ONE_HOUR_EAST = timezone(timedelta(hours=1))


def to_stamp(value: object, tz: str) -> datetime | None:
    """A Perkville ``*_dt`` value as cursors keep it: read in ``tz`` (aware UTC), or None.

    None for null, empty or unreadable values.  A naive time that does not exist in ``tz`` (the
    hour skipped when summer time starts, which a source in another zone can send) would turn
    back into text up to an hour *later* than Perkville's own; it is moved back by that much, so
    a filter made from it never passes the row it came from.
    """
    try:
        moment = parse_perkville_datetime(value, tz)
    except ValueError:
        return None
    if moment is None or not isinstance(value, str):
        return moment
    zone = to_tzinfo(tz)
    if zone is UTC:
        return moment
    shown = moment.astimezone(zone).replace(tzinfo=None)
    own = parse_perkville_datetime(value, UTC)
    assert own is not None  # parsed above
    own_text = own.replace(tzinfo=None)
    if shown <= own_text or own == parse_perkville_datetime(value, _ONE_HOUR_EAST):
        return moment  # the same text back (or the value carries its own offset)
    return moment - (shown - own_text)


def newest(stamps: list[datetime | None]) -> datetime | None:
    """The latest of ``stamps`` (None when there is none)."""
    return max((s for s in stamps if s is not None), default=None)


def next_cursor(
    before: datetime | None,
    read_newest: datetime | None,
    signpost: datetime | None,
    *,
    ordered: bool,
) -> datetime | None:
    """Where a resource's cursor stands after a pass that read rows from ``before − overlap`` on.

    - A pass that read nothing leaves it where it was.
    - Rows read in ``last_mod_dt`` order: the newest stamp read.  A row changed while the pass
      ran gets a stamp at least as new as everything read so far, so it lies ahead and is read.
    - Rows read in any other order: the newest stamp read, but never past the signpost (the
      newest change the source held when the run started): a row read early and changed later in
      the pass is then read again next time.  Without a signpost it stays.
    - It never moves back.
    """
    if read_newest is None:
        return before
    if ordered:
        candidate: datetime | None = read_newest
    else:
        candidate = None if signpost is None else min(read_newest, signpost)
    if candidate is None or (before is not None and candidate <= before):
        return before
    return candidate


def lag_seconds(cursor: datetime | None, source_newest: datetime | None) -> float | None:
    """How far the cursor is behind the source's newest change, both in the source's clock."""
    if cursor is None or source_newest is None:
        return None
    return max((source_newest - cursor).total_seconds(), 0.0)


def lookback_start(signpost: datetime, days: int, floor: datetime | None = None) -> datetime:
    """Start of the late-void look-back: ``days`` before the source's newest change (not before
    the balance-mode cut-over ``floor``)."""
    start = signpost - timedelta(days=days)
    return start if floor is None else max(start, floor)


@dataclass(frozen=True)
class CutOver:
    """Balance mode's cut-over: a position in Perkville's ``(transaction_dt, transaction_id)`` order.

    ``at`` is the second after the newest ``transaction_dt`` Perkville held when the backfill
    started, ``last_id`` that newest row's id.  The opening balances carry every row up to that
    row; every row after it is replayed — including one recorded later in that same last second
    (its id is higher), which ``at`` alone would leave out.  ``last_id`` None: the cut-over is
    ``at`` alone (as kept by earlier versions).
    """

    at: datetime
    last_id: int | None = None

    @classmethod
    def after(cls, newest_transaction_dt: datetime, last_id: int | None) -> CutOver:
        return cls(newest_transaction_dt.replace(microsecond=0) + _SECOND, last_id)

    @property
    def floor(self) -> datetime:
        """The lowest ``transaction_dt`` a row after the cut-over can have."""
        return self.at if self.last_id is None else self.at - _SECOND

    def carries(self, transaction_dt: datetime | None, transaction_id: object) -> bool:
        """Whether the opening balances already hold this row (it is before the cut-over)."""
        if transaction_dt is None or transaction_dt >= self.at:
            return False
        if transaction_dt < self.floor:
            return True
        number = to_row_id(transaction_id)
        return number is not None and self.last_id is not None and number <= self.last_id

    def to_text(self) -> str:
        """``at`` (ISO-8601 UTC), then ``|last_id`` when known: the ``cutover`` cursor's value."""
        return self.at.isoformat() + ("" if self.last_id is None else f"|{self.last_id}")

    @classmethod
    def from_text(cls, text: str) -> CutOver:
        moment, _, number = text.partition("|")
        return cls(datetime.fromisoformat(moment), int(number) if number else None)


_SECOND = timedelta(seconds=1)


def to_row_id(value: object) -> int | None:
    """A row id (``17``, ``"17"``, ``/v2/transactions/17/``) as a number, or None."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().rstrip("/").rsplit("/", 1)[-1]
    return int(text) if text.isdigit() else None
