"""What ``perkbridge status`` reports, as one value: the CLI prints it, the dashboard renders it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bridge.source_clock import lag_seconds
from bridge.state import StateStore, utcnow


def status_report(state: StateStore, business: str | None, limit: int) -> dict[str, Any]:
    """Recent runs, cursors with their lag, leases, dead-letter counts, the id map's size, the
    learned Perkville request rate and the last probe (``status --json`` and the dashboard)."""
    now = utcnow()
    cursors = []
    for cursor in state.cursors.all(business):
        item: dict[str, Any] = {
            "business": cursor.business,
            "resource": cursor.resource,
            "value": cursor.value,
            "updated_at": cursor.updated_at,
            "source_newest": cursor.source_newest,
        }
        # Lag is in the source's clock: its newest change when the last run looked, minus the
        # cursor (never this machine's clock, which says nothing about what the source holds).
        try:
            item["lag_seconds"] = lag_seconds(
                datetime.fromisoformat(cursor.value),
                datetime.fromisoformat(cursor.source_newest) if cursor.source_newest else None,
            )
        except ValueError:
            item["lag_seconds"] = None
        cursors.append(item)
    leases = [
        {"name": lease.name, "owner": lease.owner, "expires_at": lease.expires_at, "expired": lease.expired(now)}
        for lease in state.leases.all()
    ]
    return {
        "business": business,
        "runs": [run.to_json() for run in state.runs.recent(business, limit)],
        "cursors": cursors,
        "leases": leases,
        "dead_letters": state.dead_letters.counts(business),
        "id_map": state.id_map.count(business),
        # The Perkville request rate the adaptive budget learned; the next run starts there.
        "request_rate": state.runs.learned_rate(business) if business else None,
        "probe": probe_summary(state, business),
    }


def probe_summary(state: StateStore, business: str | None) -> dict[str, Any] | None:
    """The business's last ``perkbridge probe``: when, and what it found contradicted or unknown."""
    recorded = state.probes.latest(business) if business else None
    if recorded is None:
        return None
    rows = recorded.report.get("assumptions") or []
    return {
        "probe_id": recorded.id,
        "probed_at": recorded.probed_at.isoformat(),
        "contradicted": [row.get("key") for row in rows if row.get("status") == "contradicted"],
        "unknown": [row.get("key") for row in rows if row.get("status") == "unknown"],
    }
