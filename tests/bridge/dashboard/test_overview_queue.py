"""The overview shows the job queue of ``perkbridge worker`` on PostgreSQL, and nothing on SQLite."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from bridge.queue.ops import enqueue_backfill, opened_app
from tests.bridge.dashboard.conftest import SignedIn, dashboard_settings

pytestmark = pytest.mark.db


def test_the_overview_shows_queue_depth_and_failed_jobs_on_postgresql(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    page = signed_in.client.get("/dashboard").text
    if bridge.engine.dialect.name != "postgresql":
        assert "Job queue" not in page  # no queue on SQLite: nothing to show
        return
    assert 'data-queue="depth">0<' in page
    settings = dashboard_settings(bridge)
    with opened_app(settings) as app:
        waiting = enqueue_backfill(app, bridge.business, {"mode": "history"})
        failed = enqueue_backfill(app, "other-business", {"mode": "history"})
    with bridge.engine.begin() as conn:
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = :id"), {"id": failed})
    page = signed_in.client.get("/dashboard").text
    assert 'data-queue="depth">1<' in page and 'data-queue="failed">1<' in page
    failed_rows = re.search(r"<h3>Failed jobs</h3>(.*?)</table>", page, re.S)
    assert failed_rows and f"#{failed}" in failed_rows.group(1) and "other-business" in failed_rows.group(1)
    assert f"#{waiting}" not in failed_rows.group(1)
