"""``StateCollector`` on a state database written through the stores: write-back items, the learned
rate's look-back, Perkville answers, a database that cannot be read; ``[serve] metrics = false``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from bridge.cli.serve_cmd import build_app
from bridge.metrics import StateCollector
from bridge.state import RunCounts, StateStore
from perkamo_core.db import create_db_engine
from tests.perkamo_core.api.server import live_server


def samples(engine: Engine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(engine))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.db
def test_writeback_items_perkville_answers_and_the_learned_rate(db_engine: Engine) -> None:
    state = StateStore(db_engine)
    state.migrate()
    runs = state.runs
    for written, dead in ((4, 1), (2, 0)):
        rid = runs.start("b1", direction="writeback", kind="writeback", target="perkville")
        with db_engine.begin() as conn:
            runs.add(conn, rid, RunCounts(read=written + dead + 1, applied=written, skipped=1, dead_lettered=dead))
        runs.finish(rid, "succeeded", details={"perkville": {"status_2xx": written, "status_4xx": dead,
                                                             "throttled": 1}})
    rid = runs.start("b1", direction="import", kind="sync")
    runs.finish(rid, "succeeded", details={"request_rate": 7.5, "perkville": {"status_2xx": 10, "status_5xx": 2}})
    got = samples(db_engine)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert value("perkbridge_state_up") == 1
    assert value("perkbridge_writeback_items_total", business="b1", outcome="applied") == 6
    assert value("perkbridge_writeback_items_total", business="b1", outcome="dead_lettered") == 1
    assert value("perkbridge_writeback_items_total", business="b1", outcome="skipped") == 2
    assert value("perkbridge_perkville_requests_total", business="b1", status_class="2xx") == 16
    assert value("perkbridge_perkville_requests_total", business="b1", status_class="4xx") == 1
    assert value("perkbridge_perkville_requests_total", business="b1", status_class="5xx") == 2
    assert value("perkbridge_perkville_throttled_total", business="b1") == 2
    assert value("perkbridge_runs", business="b1", direction="writeback", status="succeeded") == 2
    assert value("perkbridge_perkville_request_rate", business="b1") == 7.5 == runs.learned_rate("b1")
    # Five later runs without a rate: RunLog.learned_rate looks no further, and neither does /metrics.
    for _ in range(5):
        runs.finish(runs.start("b1", direction="writeback", kind="writeback"), "succeeded")
    assert runs.learned_rate("b1") is None
    assert ("perkbridge_perkville_request_rate", (("business", "b1"),)) not in samples(db_engine)


def test_a_database_that_cannot_be_read_is_state_up_0_without_its_url(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no bridge tables
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(engine))
        text = generate_latest(registry).decode()
    finally:
        engine.dispose()
    assert "perkbridge_state_up 0.0" in text
    assert "empty.db" not in text


@pytest.mark.parametrize("metrics", [True, False])
def test_serve_metrics_switch(tmp_path: Path, metrics: bool) -> None:
    app = build_app(f"sqlite:///{tmp_path / 'serve.db'}", rate_limit=None, require_signatures=False,
                    metrics=metrics)
    with live_server(app) as url:
        response = httpx.get(f"{url}/metrics", timeout=30)
        assert response.status_code == (200 if metrics else 404)
        assert "/metrics" not in httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
