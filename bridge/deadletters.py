"""Retry and discard of dead letters, once: ``perkbridge deadletters`` and the dashboard both call these.

A retry maps and delivers open import letters again (``Pipeline.retry_dead_letters``) and hands
open write-back letters to write-back's own retry; a discard marks open letters discarded. Both
refuse, before changing anything, ids that are unknown or not open (``DeadLetterChoiceError``)
and a retry of write-back letters whose settings are missing (``ConfigurationError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError, ConfigurationError
from bridge.pipeline import IMPORT_KINDS, RunSummary
from bridge.progress import Progress
from bridge.state import StateStore
from bridge.state.dead_letters import DeadLetter
from bridge.wiring import RunParts, writeback_config
from bridge.writeback import Writeback, WritebackSummary
from config import Settings


class DeadLetterChoiceError(BridgeError):
    """An id the operator named is not a dead letter of the business, or not open; nothing changed.

    The CLI answers it with exit 2 (a usage error), the dashboard with the message on the page.
    """

    def __init__(self, message: str, *, missing: Sequence[int] = (), closed: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.closed = tuple(closed)


def check_open(state: StateStore, business: str | None, ids: Sequence[int], verb: str) -> None:
    """Every id names an open dead letter (of ``business``), else ``DeadLetterChoiceError``.

    ``verb`` is what would have happened (``retried``, ``discarded``), for the message.
    """
    if not ids:
        return
    found = {d.id: d for d in state.dead_letters.list(business, status=None, ids=ids)}
    missing = [i for i in ids if i not in found]
    where = f" of business {business}" if business else ""
    if missing:
        raise DeadLetterChoiceError(
            f"no dead letter {', '.join(f'#{i}' for i in missing)}{where}; nothing {verb}; "
            "see: perkbridge deadletters list --status all",
            missing=missing,
        )
    closed = [found[i] for i in ids if found[i].status != "open"]
    if closed:
        raise DeadLetterChoiceError(
            "; ".join(f"dead letter #{d.id} is {d.status}, not open" for d in closed)
            + f"; nothing {verb} (only open dead letters are retried or discarded)",
            closed=[d.id for d in closed],
        )


@dataclass(frozen=True)
class RetryPlan:
    """The open dead letters a retry covers, split by who retries them."""

    imports: list[DeadLetter] = field(default_factory=list)
    """Import letters (``connection``, ``transaction``): mapped and delivered again."""
    writebacks: list[DeadLetter] = field(default_factory=list)
    """Write-back letters (``writeback_*``): sent to Perkville again by write-back's retry."""

    @property
    def letters(self) -> list[DeadLetter]:
        return sorted(self.imports + self.writebacks, key=lambda d: d.id)


def plan_retry(
    state: StateStore,
    settings: Settings,
    business: str,
    *,
    reason: str | None = None,
    ids: Sequence[int] | None = None,
) -> RetryPlan:
    """What ``retry`` would do, changing nothing: the open letters it covers.

    Raises ``DeadLetterChoiceError`` for an unknown or closed id and ``ConfigurationError``
    when write-back letters are among them but the write-back settings they need are missing
    (without them they would be dropped unsent).
    """
    check_open(state, business, list(ids or ()), "retried")
    chosen = state.dead_letters.list(business, reason=reason, ids=list(ids) if ids else None)
    writebacks = [d for d in chosen if d.kind not in IMPORT_KINDS]
    wb = settings.writeback
    missing = []
    if writebacks and not wb.enabled:
        missing.append("[writeback] enabled = true (or PERKBRIDGE_WRITEBACK_ENABLED=1)")
    if any(d.kind == "writeback_event" for d in writebacks) and not wb.event_perks:
        missing.append("[writeback] event_perks")
    if any(d.kind == "writeback_identify" for d in writebacks) and not wb.external_members:
        missing.append("[writeback] external_members = true")
    if missing:
        raise ConfigurationError(
            f"{len(writebacks)} write-back dead letters need the write-back settings, which are not "
            f"set: {'; '.join(missing)}; nothing was retried"
        )
    return RetryPlan(imports=[d for d in chosen if d.kind in IMPORT_KINDS], writebacks=writebacks)


@dataclass(frozen=True)
class RetryResult:
    """What a retry did: the import retry run, and the write-back retry run when it had letters."""

    run: RunSummary
    writeback: WritebackSummary | None = None

    @property
    def failing(self) -> int:
        """Letters that failed again (they stay open, with one more attempt)."""
        return self.run.counts.dead_lettered + (self.writeback.dead_lettered if self.writeback else 0)

    @property
    def resolved(self) -> int:
        """Import letters that went through, plus write-back letters written back (or duplicates)."""
        c = self.run.counts
        back = self.writeback
        return c.read - c.dead_lettered + (back.written_back + back.duplicate if back else 0)

    def to_json(self) -> dict[str, Any]:
        """The contract shape of ``deadletters retry --json``."""
        body = self.run.to_json()
        if self.writeback is not None:
            body["writeback"] = self.writeback.to_json()
        return body


def retry(
    parts: RunParts,
    *,
    reason: str | None = None,
    ids: Sequence[int] | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> RetryResult:
    """Map and deliver open dead letters again; those that now go through are resolved.

    ``parts`` must hold a Perkville client. Refusals (see ``plan_retry``) change nothing.
    """
    chosen = list(ids) if ids else None
    plan = plan_retry(parts.state, parts.settings, parts.business, reason=reason, ids=chosen)
    run = parts.pipeline(progress).retry_dead_letters(reason=reason, ids=chosen, wait=wait)
    back = _retry_writeback(parts, plan.writebacks, reason, chosen, wait)
    return RetryResult(run, back)


def _retry_writeback(
    parts: RunParts, letters: list[DeadLetter], reason: str | None, ids: list[int] | None, wait: bool
) -> WritebackSummary | None:
    """Hand open write-back dead letters (kinds ``writeback_*``) to write-back's own retry."""
    if not letters or parts.bundle.service is None:
        return None
    if parts.source is None:
        raise BridgeError("write-back dead letters need the Perkville connection; check PERKVILLE_* settings")
    return Writeback(
        state=parts.state,
        outbox=parts.bundle.service,
        client=parts.source,
        config=writeback_config(parts.settings, parts.business, space=parts.space),
    ).retry_dead_letters(reason=reason, ids=ids, wait=wait)


def discard(
    state: StateStore,
    business: str | None,
    *,
    reason: str | None = None,
    ids: Sequence[int] | None = None,
    everything: bool = False,
) -> int:
    """Mark open dead letters (of ``reason``, these ``ids``, or with ``everything`` all of them)
    discarded: kept for the record, never retried or reopened. Returns how many;
    ``DeadLetterChoiceError`` changes nothing."""
    if reason is None and not ids and not everything:
        raise DeadLetterChoiceError("say what to discard: --reason R, --id N or --all")
    check_open(state, business, list(ids or ()), "discarded")
    return state.dead_letters.discard(business, reason=reason, ids=list(ids) if ids else None)
