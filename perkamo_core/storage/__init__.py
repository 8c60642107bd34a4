"""Storage of the embedded core: its tables, how values are stored, and its schema migrations.

Layout (every row belongs to one Space):

- ``core_spaces``, ``core_api_keys`` (sha256 of the key, never the key), ``core_program_modules``
  (every upload a version, one active per module).
- ``core_customers``: traits and the engine's compact state document (balances and lifetime
  totals per wallet, perks, counters, achievements, streaks) plus ``core_perks`` (unlocked perks),
  all loadable by customer id for one event or a whole page. ``core_balances`` (customer,
  wallet, balance, lifetime) is a view over the state documents since migration 4 (it was a
  materialized copy rewritten on every page).
- ``core_events``: the append-only event log, ``UNIQUE(space_id, transaction_id)``, with the
  stored wire result so a duplicate answers with the first outcome; indexed on
  ``(space_id, customer_id, id)`` so the latest events of a customer are an index range scan.
- ``core_ledger``: every wallet movement (events and redemptions); a balance is its ledger's sum.
  Indexed by ``event_id`` and ``redemption_id`` (append-only indexes; migration 3).
- ``core_redemptions`` (``UNIQUE(space_id, transaction_id)``), ``core_usage`` (meters per billing
  period), ``core_outbox`` (applied events and identify calls in commit order for write-back).

Decimals are stored as text (exact on both backends); datetimes as timezone-aware UTC.

Modules: ``columns`` (JSON text, Decimal text, UTC datetime), ``tables`` (the tables and the
view), ``schema`` (``MIGRATIONS``, ``migrate_core``).
"""

from __future__ import annotations

from perkamo_core.storage.columns import (
    _ENCODER,
    DecimalText,
    JSONText,
    UTCDateTime,
    dump_json,
    load_json,
    load_json_exact,
)
from perkamo_core.storage.schema import COMPONENT, MIGRATIONS, migrate_core
from perkamo_core.storage.tables import (
    api_keys,
    balances,
    customers,
    events,
    ledger,
    metadata,
    outbox,
    perks,
    program_modules,
    redemptions,
    spaces,
    usage,
    views,
)

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "DecimalText",
    "JSONText",
    "UTCDateTime",
    "_ENCODER",
    "api_keys",
    "balances",
    "customers",
    "dump_json",
    "events",
    "ledger",
    "load_json",
    "load_json_exact",
    "metadata",
    "migrate_core",
    "outbox",
    "perks",
    "program_modules",
    "redemptions",
    "spaces",
    "usage",
    "views",
]
