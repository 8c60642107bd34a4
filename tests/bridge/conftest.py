"""Fixtures for bridge tests: a sandbox on loopback, the bridge wired to it, and state checksums."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from bridge.cli import main
from bridge.pipeline import Mode, Pipeline, PipelineConfig, RunOptions, RunSummary
from bridge.reconcile import Reconciler, ReconcileReport
from bridge.state import StateStore
from bridge.targets import EmbeddedTarget
from bridge.usecases import reconcile
from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from perkamo_core.service import CoreService

SPACE = "test"
MEMBERS = 20
TRANSACTIONS = 300


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(seed=11, members=MEMBERS, transactions=TRANSACTIONS)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def make_client(box: Sandbox, **overrides: Any) -> PerkvilleClient:
    kwargs: dict[str, Any] = {
        "page_size": 50,
        "requests_per_second": None,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "max_retries": 8,
        "timeout": 5.0,
    }
    kwargs.update(overrides)
    return PerkvilleClient(**box.client_kwargs(), **kwargs)


def sandbox_settings(box: Sandbox, db_url: str) -> dict[str, str]:
    """The contract's settings (ARCHITECTURE §5 names) that point perkbridge at ``box`` and ``db_url``."""
    creds = box.credentials
    return {
        "PERKBRIDGE_DATABASE_URL": db_url,
        "PERKVILLE_API_URL": box.api_url,
        "PERKVILLE_TOKEN_URL": box.token_url,
        "PERKVILLE_CLIENT_ID": creds["client_id"],
        "PERKVILLE_CLIENT_SECRET": creds["client_secret"],
        "PERKVILLE_USERNAME": creds["username"],
        "PERKVILLE_PASSWORD": creds["password"],
        "PERKVILLE_BUSINESS_ID": str(box.business_ids[0]),
    }


def subprocess_env(box: Sandbox, db_url: str, **extra: str) -> dict[str, str]:
    """This process's environment minus any perkbridge settings, plus ``box``'s and ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_"))
    }
    env.update(sandbox_settings(box, db_url))
    env.update(extra)
    return env


@dataclass
class Bridge:
    """The bridge wired to one sandbox and one database, embedded target."""

    box: Sandbox
    engine: Engine
    state: StateStore
    service: CoreService
    client: PerkvilleClient
    business: str

    @property
    def target(self) -> EmbeddedTarget:
        return EmbeddedTarget(self.service, self.engine, SPACE)

    def config(self, **changes: Any) -> PipelineConfig:
        return PipelineConfig(business=self.business, **changes)

    def pipeline(self, **changes: Any) -> Pipeline:
        return Pipeline(state=self.state, source=self.client, target=self.target, config=self.config(**changes))

    def backfill(self, mode: str = "history", **options: Any) -> RunSummary:
        return self.pipeline().run(RunOptions(kind="backfill", mode=mode, **options))  # type: ignore[arg-type]

    def sync(self, **options: Any) -> RunSummary:
        return self.pipeline().run(RunOptions(kind="sync", **options))

    def reconcile(self, *, repair: bool = False, mode: Mode = "history") -> ReconcileReport:
        """Read-only comparison; with ``repair`` the use case: sync, compare, adjust."""
        reconciler = Reconciler(
            state=self.state, source=self.client, target=self.target, business=self.business
        )
        return reconcile(self.pipeline(), reconciler, mode=mode, repair=repair)


@contextmanager
def open_bridge(box: Sandbox, db_url: str, **client_overrides: Any) -> Iterator[Bridge]:
    """A migrated database and a client for ``box``'s first business, closed on exit."""
    engine = create_db_engine(db_url)
    state = StateStore(engine)
    state.migrate()
    service = CoreService(engine)
    service.migrate()
    client = make_client(box, **client_overrides)
    try:
        yield Bridge(box, engine, state, service, client, str(box.business_ids[0]))
    finally:
        client.close()
        engine.dispose()


@pytest.fixture
def bridge(db_url: str, sandbox: Sandbox) -> Iterator[Bridge]:
    with open_bridge(sandbox, db_url) as wired:
        yield wired


def checksum(engine: Engine, space: str = SPACE) -> str:
    """A digest of every wallet balance and every logged event (ids, names, users, times, context)."""
    from perkamo_core.storage import balances, customers, events, spaces

    digest = hashlib.sha256()
    with engine.connect() as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == space)).scalar()
        rows = conn.execute(
            select(customers.c.user_id, balances.c.wallet, balances.c.balance)
            .join(balances, balances.c.customer_id == customers.c.id)
            .where(customers.c.space_id == space_id)
            .order_by(customers.c.user_id, balances.c.wallet)
        )
        for row in rows:
            digest.update(json.dumps([row[0], row[1], str(row[2])]).encode())
        rows = conn.execute(
            select(
                events.c.transaction_id,
                events.c.event,
                customers.c.user_id,
                events.c.occurred_at,
                events.c.context,
            )
            .join(customers, customers.c.id == events.c.customer_id)
            .where(events.c.space_id == space_id)
            .order_by(events.c.transaction_id)
        )
        for row in rows:
            digest.update(json.dumps([str(v) for v in row], sort_keys=True).encode())
    return digest.hexdigest()


def event_count(engine: Engine, space: str = SPACE) -> int:
    from sqlalchemy import func

    from perkamo_core.storage import events, spaces

    with engine.connect() as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == space)).scalar()
        return int(
            conn.execute(select(func.count()).select_from(events).where(events.c.space_id == space_id)).scalar()
            or 0
        )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, db_url: str, tmp_path: Path) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith(("PERKVILLE_", "PERKAMO_", "PERKBRIDGE_")):
            monkeypatch.delenv(key)
    values = {
        **sandbox_settings(sandbox, db_url),
        "PERKAMO_SPACE": SPACE,
        "PERKBRIDGE_LOG_FORMAT": "plain",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "perkbridge.toml"
    config.write_text("[perkville]\npage_size = 100\nrequests_per_second = 1000\n")
    return config


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any, str]:
    code = 0
    try:
        main(["--config", str(config), *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    try:
        body: Any = json.loads(out)
    except ValueError:
        body = out
    return code, body, err
