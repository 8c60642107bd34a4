"""The ids a rollback writes and the ids a rolled-back event is sent under again.

The core never applies a stored ``transaction_id`` twice (a replay is a duplicate, forever). A
rollback therefore does not free an id: it appends the compensating event ``{T}:rollback``, and
the bridge remembers (``bridge_reissues``) that the application of the mapped id T was reversed.
When a later run maps T again, it is sent as ``{T}:again:{n}`` (n = how often T was rolled
back), a new id the core applies once, and a rollback of that run reverses it as
``{T}:again:{n}:rollback``. Every id stays deterministic, so a re-read is still a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.state import RunEvents

MAX_ID_LENGTH = 256
ROLLBACK_SUFFIX = ":rollback"


def bounded_id(full: str, business: str) -> str:
    """``full`` when it fits the core's 256 characters, else ``perkville:{business}:h:{sha256}``."""
    if len(full) <= MAX_ID_LENGTH:
        return full
    digest = hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()
    return f"perkville:{business}:h:{digest}"


def rollback_id(transaction_id: str, business: str) -> str:
    """The id of the event that reverses the application stored under ``transaction_id``."""
    return bounded_id(f"{transaction_id}{ROLLBACK_SUFFIX}", business)


def reissued_id(mapped_id: str, generation: int, business: str) -> str:
    """The id a mapped id is sent under once its application was rolled back ``generation`` times."""
    if generation <= 0:
        return mapped_id
    return bounded_id(f"{mapped_id}:again:{generation}", business)


def reissue_page(
    links: RunEvents, business: str, events: Sequence[Any]
) -> tuple[list[Any], dict[str, str]]:
    """The page's events with rolled-back ids replaced, and ``sent id → mapped id`` of those replaced.

    Events are frozen pydantic models (``mapping.types.PerkamoEvent``); a replaced one is a copy.
    """
    generations = links.generations(business, [e.transaction_id for e in events])
    if not generations:
        return list(events), {}
    out: list[Any] = []
    bases: dict[str, str] = {}
    for event in events:
        generation = generations.get(event.transaction_id, 0)
        if generation:
            sent = reissued_id(event.transaction_id, generation, business)
            bases[sent] = event.transaction_id
            event = event.model_copy(update={"transaction_id": sent})
        out.append(event)
    return out, bases
