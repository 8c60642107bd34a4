"""``ledger.sha256``: a hash chain over every transaction id a run applied and its wallet deltas.

The run's applied ids come from ``bridge_run_events`` (commit order: page by page, in the order
each page sent them); each id's wallet deltas are the core's ledger rows of that event
(``core_ledger.event_id``), summed per wallet. Entry ``n`` is the JSON
``[transaction_id, {wallet: delta}]`` (wallets sorted, deltas as plain decimals) and

    chain_0 = sha256("perkbridge-ledger-v1")
    chain_n = sha256(chain_{n-1} + "\\n" + entry_n)     (hex digests, UTF-8)

so changing, dropping, adding or reordering any entry changes every later link and the head.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine, select

from bridge.state import RunEvents, plain_decimal

SEED = hashlib.sha256(b"perkbridge-ledger-v1").hexdigest()
HEADER = "# perkbridge ledger chain v1: seq, chain sha256, [transaction_id, {wallet: delta}]\n"
CHUNK = 500


class LedgerUnavailable(Exception):
    """The run's applied events are not in this database (a remote target's Perkamo holds them)."""


@dataclass(frozen=True)
class Chain:
    """The chain's text (the ``ledger.sha256`` part), its head and its number of entries."""

    text: str
    head: str
    entries: int


def entry_line(transaction_id: str, deltas: dict[str, Decimal]) -> str:
    body = {wallet: str(plain_decimal(deltas[wallet])) for wallet in sorted(deltas)}
    return json.dumps([transaction_id, body], ensure_ascii=False, separators=(",", ":"))


def chain(entries: Iterable[tuple[str, dict[str, Decimal]]]) -> Chain:
    """The chain over ``(transaction_id, deltas)`` in the order given."""
    lines = [HEADER]
    link = SEED
    n = 0
    for n, (transaction_id, deltas) in enumerate(entries, start=1):
        entry = entry_line(transaction_id, deltas)
        link = hashlib.sha256(f"{link}\n{entry}".encode()).hexdigest()
        lines.append(f"{n}\t{link}\t{entry}\n")
    lines.append(f"head\t{link}\t{n}\n")
    return Chain("".join(lines), link, n)


def run_entries(
    engine: Engine, run_events: RunEvents, run_id: int, space: str
) -> Iterator[tuple[str, dict[str, Decimal]]]:
    """``(transaction_id, wallet deltas)`` of every event run ``run_id`` applied, in commit order."""
    batch: list[str] = []
    for event in run_events.of_run(run_id):
        page_space, transaction_id = event.space, event.transaction_id
        if page_space is not None and page_space != space:
            raise LedgerUnavailable(
                f"run {run_id} applied events to Space {page_space!r}, not {space!r}; "
                f"pass --space {page_space}"
            )
        batch.append(transaction_id)
        if len(batch) >= CHUNK:
            yield from _deltas(engine, space, batch)
            batch = []
    if batch:
        yield from _deltas(engine, space, batch)


def _deltas(
    engine: Engine, space: str, transaction_ids: Sequence[str]
) -> list[tuple[str, dict[str, Decimal]]]:
    from perkamo_core.storage import events, ledger, spaces

    with engine.connect() as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == space)).scalar()
        found = (
            {}
            if space_id is None
            else dict(
                conn.execute(
                    select(events.c.transaction_id, events.c.id).where(
                        events.c.space_id == space_id, events.c.transaction_id.in_(list(transaction_ids))
                    )
                ).all()
            )
        )
        missing = [t for t in transaction_ids if t not in found]
        if missing:
            raise LedgerUnavailable(
                f"{len(missing)} event(s) the run applied are not in this database's Space {space!r} "
                f"(first: {missing[0]}); a run of the remote target keeps its ledger in that Perkamo"
            )
        sums: dict[int, dict[str, Decimal]] = defaultdict(dict)
        rows = conn.execute(
            select(ledger.c.event_id, ledger.c.wallet, ledger.c.amount)
            .where(ledger.c.event_id.in_(list(found.values())))
            .order_by(ledger.c.id)
        ).all()
    for event_id, wallet, amount in rows:
        wallets = sums[int(event_id)]
        wallets[str(wallet)] = wallets.get(str(wallet), Decimal(0)) + Decimal(str(amount))
    return [(t, sums.get(int(found[t]), {})) for t in transaction_ids]
