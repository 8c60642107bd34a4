"""The sandbox's tiered variant: connection levels that follow the members' lifetime points.

The generated levels are drawn at random from ``None``, ``"Silver"`` and ``"Gold"``, unrelated to
the points. ``Sandbox(tiered_levels=True)`` (``perkbridge sandbox --tiered-levels``) relabels every
connection after generation instead: per business, by lifetime earned points (ties by connection
id), the lowest quarter has no level, then ``"Bronze"``, ``"Silver"`` and ``"Gold"``. It draws no
random number, so every other generated value is the same as without it for the same seed.
"""

from __future__ import annotations

from typing import Any

TIERED_LEVELS: tuple[str | None, ...] = (None, "Bronze", "Silver", "Gold")


def level_connections_by_lifetime(ledger: Any, levels: tuple[str | None, ...] = TIERED_LEVELS) -> None:
    """Give each connection of ``ledger`` the level of its lifetime-points quantile (see above)."""
    with ledger.lock:
        for business in ledger.businesses.values():
            ranked = sorted(
                business.connection_ids, key=lambda cid: (ledger.aggregates[cid].lifetime, cid)
            )
            for rank, cid in enumerate(ranked):
                ledger.connections[cid]["level"] = levels[rank * len(levels) // len(ranked)]
        ledger.version += 1
