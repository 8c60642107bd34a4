"""Delivery counting: what a page's records became, from the target's outcomes (pure).

Every record read counts exactly once: ``read = applied + duplicate + skipped + dead_lettered``.
A record is ``dead_lettered`` if mapping gave it a problem or the target rejected its identify
call or any of its events; ``skipped`` if mapping skipped it on purpose; ``applied`` if its
identify or any event applied; else ``duplicate`` (all duplicates, or nothing to send).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bridge.pipeline.records import PageRecord
from bridge.state import RunCounts
from bridge.targets import Delivery


@dataclass(frozen=True)
class DeadLetter:
    """A record of the page that goes to the dead letters, with why."""

    record: PageRecord
    reason: str
    detail: str


@dataclass(frozen=True)
class PageTally:
    """One page's counts, its dead letters and the records that went through."""

    counts: RunCounts
    dead_letters: tuple[DeadLetter, ...]
    delivered: tuple[PageRecord, ...]
    """Applied, duplicate or skipped: their open dead letters (if any) are resolved."""
    applied_to: frozenset[str] = frozenset()
    """Customer ids of the delivered records' applied events."""


def tally(
    records: Sequence[PageRecord],
    id_outcomes: Sequence[Delivery],
    ev_outcomes: Sequence[Delivery],
) -> PageTally:
    """Count ``records`` against the outcomes of the identify calls and events sent for them.

    The outcomes come in the order the calls were sent: for every record without a problem,
    its identify call (if any), then its events. Records are not changed.
    """
    id_iter: Iterator[Delivery] = iter(id_outcomes)
    ev_iter: Iterator[Delivery] = iter(ev_outcomes)
    counts = RunCounts()
    dead: list[DeadLetter] = []
    delivered: list[PageRecord] = []
    applied_to: set[str] = set()
    applied = duplicate = skipped = 0
    for record in records:
        problem = record.problem
        if problem is None:
            rejected: Delivery | None = None
            any_applied = False
            customers: list[str] = []
            if record.identify is not None:
                outcome = next(id_iter)
                if outcome.status == "rejected":
                    rejected = outcome
                any_applied = outcome.status == "applied"
            for event in record.events:  # consume every outcome of the record
                outcome = next(ev_iter)
                if outcome.status == "rejected":
                    rejected = rejected or outcome
                elif outcome.status == "applied":
                    any_applied = True
                    customers.append(event.user_id)
            if rejected is None:
                if record.skipped:
                    skipped += 1
                elif any_applied:
                    applied += 1
                else:
                    duplicate += 1
                delivered.append(record)
                applied_to.update(customers)
                continue
            problem = (
                f"rejected_{rejected.reason or 'error'}",
                rejected.detail or "the target rejected the record",
            )
        dead.append(DeadLetter(record, *problem))
        counts.count("dead_lettered")
    for name, n in (("applied", applied), ("duplicate", duplicate), ("skipped", skipped)):
        if n:
            counts.count(name, n)
    return PageTally(counts, tuple(dead), tuple(delivered), frozenset(applied_to))
