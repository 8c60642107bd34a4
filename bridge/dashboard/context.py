"""What every dashboard page works with: the state database, the embedded core, the settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from bridge.dashboard.background import Background
from bridge.dashboard.sessions import SessionSigner
from bridge.state import StateStore
from bridge.state.schema import cursors, runs
from bridge.state.stores import read_connection

if TYPE_CHECKING:
    from fastapi import Request

    from config.settings import Settings
    from perkamo_core.service import CoreService


@dataclass
class Dashboard:
    """The dashboard's parts, one per app (``app.state.dashboard``)."""

    engine: Engine
    state: StateStore
    service: CoreService
    settings: Settings
    signer: SessionSigner
    clock: Callable[[], float] = field(default=time.time)
    background: Background = field(default_factory=Background)
    """Runs started by a page and left going (a rollback), stopped when the server shuts down."""

    @property
    def space(self) -> str:
        """The Perkamo Space the bridge writes to (``PERKAMO_SPACE``)."""
        return self.settings.perkamo_space

    def zone(self, business: str | None = None) -> ZoneInfo:
        """The business's time zone (``PERKVILLE_TIMEZONE``; one per deployment today)."""
        return ZoneInfo(self.settings.perkville_timezone)

    def businesses(self) -> list[str]:
        """Every business the bridge knows: configured, or seen in runs or cursors."""
        known: dict[str, None] = {}
        for name in [*self.settings.schedule.businesses, self.settings.perkville_business_id or ""]:
            if name.strip():
                known[name.strip()] = None
        with read_connection(self.engine) as c:
            for (name,) in c.execute(select(runs.c.business).distinct()):
                known[name] = None
            for (name,) in c.execute(select(cursors.c.business).distinct()):
                known[name] = None
        return sorted(known)


def dashboard_of(request: Request) -> Dashboard:
    """The ``Dashboard`` of the app serving ``request``."""
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard
