"""Whether the staff account sees the whole business (pure).

Perkville's docs say a staff member limited to some locations sees only the customers of those
locations [confirmed]; the API gives no error, the lists are just shorter. What can be observed:
the locations the account lists, and the locations the rows it *can* read point to (a member's
home location, where a transaction happened). A location referenced but not listed is evidence
of a limited account; a listed location nobody refers to is only a hint. ``expected_locations``
(an operator's count) makes the check exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import SourceError
from bridge.source_clock import to_row_id


@dataclass(frozen=True)
class Reach:
    """What the staff account sees; ``full`` True / False / None (unknown)."""

    full: bool | None
    listed: tuple[str, ...]
    unlisted: Mapping[str, int] = field(default_factory=dict)  # location -> rows pointing to it
    expected: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "listed": list(self.listed),
            "unlisted": dict(self.unlisted),
            "expected": self.expected,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reach:
        full = data.get("full")
        return cls(
            full=full if isinstance(full, bool) else None,
            listed=tuple(str(x) for x in data.get("listed") or ()),
            unlisted={str(k): int(v) for k, v in (data.get("unlisted") or {}).items()},
            expected=data.get("expected"),
            note=str(data.get("note") or ""),
        )


LOCATION_FIELDS = ("home_location", "location", "last_visited_location")


class PartialReachError(SourceError):
    """The staff account sees only some locations' customers: an import would be partial."""


def refuse_partial(reach: Reach, allow_partial: bool) -> str | None:
    """Raise ``PartialReachError`` for a partial reach unless allowed; the note to keep if allowed."""
    if reach.full is not False:
        return None
    if not allow_partial:
        raise PartialReachError(
            f"backfill refused before writing anything: {reach.note}; use a staff account with access "
            "to every location, or pass --allow-partial to import only what this account sees"
        )
    return f"partial import allowed (--allow-partial): {reach.note}"


def uri_id(value: Any) -> str | None:
    """A row's relation id as text (``bridge.pipeline.records.trailing_id``, which this module
    cannot import: the pipeline imports it)."""
    number = to_row_id(value)
    return None if number is None else str(number)


def referenced_locations(rows: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many rows point to each location (by id), from the usual location fields."""
    seen: Counter[str] = Counter()
    for row in rows:
        for name in LOCATION_FIELDS:
            ident = uri_id(row.get(name))
            if ident is not None:
                seen[ident] += 1
    return seen


def assess(
    listed: Iterable[Any], referenced: Mapping[str, int], *, expected_locations: int | None = None
) -> Reach:
    """Compare the locations listed with those the readable rows point to."""
    shown = tuple(sorted({ident for item in listed if (ident := uri_id(item)) is not None}))
    unlisted = {loc: count for loc, count in sorted(referenced.items()) if loc not in shown}
    if unlisted:
        names = ", ".join(f"{loc} ({count} rows)" for loc, count in unlisted.items())
        return Reach(
            False,
            shown,
            unlisted,
            expected_locations,
            f"the staff account lists {len(shown)} location(s) but rows point to {len(unlisted)} "
            f"more it cannot see: {names}",
        )
    if expected_locations is not None and len(shown) < expected_locations:
        return Reach(
            False,
            shown,
            {},
            expected_locations,
            f"the staff account lists {len(shown)} location(s); the business has {expected_locations}",
        )
    if expected_locations is not None:
        return Reach(True, shown, {}, expected_locations, f"all {len(shown)} location(s) listed")
    unused = [loc for loc in shown if loc not in referenced]
    if unused:
        return Reach(
            None,
            shown,
            {},
            None,
            f"no row read points to location(s) {', '.join(unused)}; give --expect-locations to be sure",
        )
    return Reach(True, shown, {}, None, f"every location rows point to is listed ({len(shown)})")
