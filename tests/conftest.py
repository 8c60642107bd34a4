"""Shared fixtures: one clean database per test on every configured backend.

Database-facing tests take the ``db_url`` (or ``db_engine``) fixture, which is parametrized over
``sqlite`` and ``postgresql``.  PostgreSQL comes from ``PERKBRIDGE_TEST_POSTGRES_URL`` (an admin
URL; ``scripts/test`` starts a throw-away server and sets it).  Each test gets a database of its
own.  Under ``CI`` a missing PostgreSQL is a failure, never a skip.
``PERKBRIDGE_TEST_DB=sqlite`` (or ``postgresql``) limits a local run to one backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine, text

from perkamo_core.db import create_db_engine, normalize_url

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

_ALL_BACKENDS = ("sqlite", "postgresql")


def _backends() -> list[str]:
    chosen = os.environ.get("PERKBRIDGE_TEST_DB", "all")
    if chosen == "all":
        return list(_ALL_BACKENDS)
    if chosen not in _ALL_BACKENDS:
        raise pytest.UsageError(f"PERKBRIDGE_TEST_DB must be sqlite, postgresql or all, not {chosen}")
    return [chosen]


def _postgres_admin_url() -> str:
    url = os.environ.get("PERKBRIDGE_TEST_POSTGRES_URL")
    if not url:
        message = "PERKBRIDGE_TEST_POSTGRES_URL is not set: run the suite with scripts/test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return normalize_url(url)


def _create_postgres_database(admin_url: str) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _drop_postgres_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=_backends())
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend name of this test run: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of its own on the current backend."""
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'perkbridge-test.db'}"
        return
    with postgres_database() as url:
        yield url


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of its own for the block, dropped after it."""
    admin_url = _postgres_admin_url()
    url = _create_postgres_database(admin_url)
    try:
        yield url
    finally:
        _drop_postgres_database(admin_url, url)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own, for what exists on PostgreSQL only (the job queue)."""
    with postgres_database() as url:
        yield url


def _engine_on(url: str) -> Iterator[Engine]:
    engine = create_db_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine (project settings) on the test's own database."""
    yield from _engine_on(db_url)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on ``pg_url``'s database."""
    yield from _engine_on(pg_url)
