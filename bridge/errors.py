"""Typed errors of the bridge, classified by what the caller should do next.

::

    BridgeError                      base; ``message`` says what failed and what to do next
    ├── ConfigurationError           settings are missing or contradictory (CLI exit 3)
    ├── LeaseHeldError               another runner holds the (business, direction) lease
    ├── LeaseLostError               this runner's lease was taken over; the page was rolled back
    ├── SourceError                  Perkville could not be read (auth, retry budget, bad pages)
    ├── TargetError                  the Perkamo target failed as a whole (not one record)
    └── RunFailedError               a run stopped; the run log holds the secret-free reason

Per-record problems are never exceptions: they become dead letters and the run goes on.
Messages never contain tokens, keys, passwords or URLs with query strings.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(BridgeError):
    """Settings are missing or contradictory; the message names the setting."""


class LeaseHeldError(BridgeError):
    """Another runner holds the lease for this (business, direction)."""

    def __init__(self, message: str, *, name: str, owner: str | None) -> None:
        super().__init__(message)
        self.name = name
        self.owner = owner


class LeaseLostError(BridgeError):
    """The lease expired and another runner took it; the current page was not committed."""


class SourceError(BridgeError):
    """Perkville could not be read: authentication, retry budget, or an unusable page."""


class TargetError(BridgeError):
    """The Perkamo target failed as a whole (unreachable, unauthorised), not one record."""


class RunFailedError(BridgeError):
    """A run stopped before its end; ``run_id`` points at the run log entry."""

    def __init__(self, message: str, *, run_id: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
