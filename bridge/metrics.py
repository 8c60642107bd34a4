"""``GET /metrics`` on ``perkbridge serve``: Prometheus text format (``prometheus-client``).

Two kinds of value, so that several ``serve`` and ``schedule`` processes on one state database
report correct figures:

- **Shared state** (runs, records, dead letters, cursor lag, the learned Perkville request rate,
  Perkville requests, write-back items) is read **from the state database at scrape time** by
  ``StateCollector``: every ``serve`` process answers the same values, whoever did the work.
- **This process's API requests** (count and latency by route template and status) are kept in
  memory by ``ApiMetrics``; each ``serve`` process reports its own, and Prometheus sums them over
  its targets (its ``instance`` label tells them apart).

Labels carry business ids, directions, resources, kinds, outcomes, reasons, statuses and route
templates only: never a member, a record id, a key or any other customer data.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from bridge.source_clock import lag_seconds
from bridge.state.schema import cursors, dead_letters, runs
from bridge.state.stores import COUNTER_NAMES, read_connection

_log = logging.getLogger(__name__)

OUTCOMES = COUNTER_NAMES[1:]
"""A record read ends in exactly one of these (``read`` is their sum, so it is no label value)."""

RUN_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
API_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
WRITEBACK_DIRECTION = "writeback"
IMPORT_DIRECTION = "import"
RECONCILE_DIRECTION = "reconcile"
LEARNED_RATE_LOOK_BACK = 5


class StateCollector(Collector):
    """The bridge's shared state, read from the state database on every scrape."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "perkbridge_state_up", "1 when the state database was read for this scrape, else 0"
        )
        try:
            families = list(self._families())
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never a stack or a URL
            _log.warning("metrics: the state database could not be read (%s)", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _families(self) -> Iterator[Metric]:
        with read_connection(self._engine) as c:
            run_rows = c.execute(
                select(
                    runs.c.business, runs.c.direction, runs.c.kind, runs.c.status, runs.c.duration_ms,
                    *[runs.c[name] for name in COUNTER_NAMES], runs.c.details,
                ).order_by(runs.c.id)
            ).mappings().all()
            letter_rows = c.execute(
                select(dead_letters.c.business, dead_letters.c.reason, func.count())
                .where(dead_letters.c.status == "open")
                .group_by(dead_letters.c.business, dead_letters.c.reason)
            ).all()
            cursor_rows = c.execute(
                select(cursors.c.business, cursors.c.resource, cursors.c.value, cursors.c.source_newest)
            ).all()
        yield from _run_families(run_rows)
        letters = GaugeMetricFamily(
            "perkbridge_dead_letters_open", "Open dead letters, by business and reason",
            labels=["business", "reason"],
        )
        for business, reason, n in letter_rows:
            letters.add_metric([business, reason], int(n))
        yield letters
        yield _lag_family(cursor_rows)


def _details(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _run_families(rows: Iterable[Any]) -> Iterator[Metric]:
    by_status: dict[tuple[str, str, str], int] = {}
    records: dict[tuple[str, str, str], int] = {}
    writeback: dict[tuple[str, str], int] = {}
    requests: dict[tuple[str, str], int] = {}
    throttled: dict[str, int] = {}
    latest_rates: dict[str, deque[float | None]] = {}  # as RunLog.learned_rate: its look-back of 5 runs
    reconcile: dict[str, tuple[float, float]] = {}
    durations: dict[str, list[float]] = {}
    for row in rows:  # oldest first: the last value seen per business is the newest
        business, direction = row["business"], row["direction"]
        key = (business, direction, row["status"])
        by_status[key] = by_status.get(key, 0) + 1
        if row["duration_ms"] is not None and row["status"] != "running":
            durations.setdefault(direction, []).append(row["duration_ms"] / 1000)
        details = _details(row["details"])
        if direction == IMPORT_DIRECTION:
            kinds = details.get("kinds")
            for kind, counts in (kinds.items() if isinstance(kinds, dict) else ()):
                for outcome in OUTCOMES:
                    n = _number(counts.get(outcome)) if isinstance(counts, dict) else None
                    if n:
                        records[(business, str(kind), outcome)] = records.get((business, str(kind), outcome), 0) + int(n)
        elif direction == WRITEBACK_DIRECTION:
            for outcome in OUTCOMES:
                writeback[(business, outcome)] = writeback.get((business, outcome), 0) + int(row[outcome] or 0)
        elif direction == RECONCILE_DIRECTION and row["status"] != "running":
            checked, mismatched = _number(details.get("checked")), _number(details.get("mismatches"))
            if checked is not None and mismatched is not None:
                reconcile[business] = (checked, mismatched)
        perkville = details.get("perkville")
        if isinstance(perkville, dict):
            for status_class in STATUS_CLASSES:
                n = _number(perkville.get(f"status_{status_class}"))
                if n:
                    requests[(business, status_class)] = requests.get((business, status_class), 0) + int(n)
            n = _number(perkville.get("throttled"))
            if n:
                throttled[business] = throttled.get(business, 0) + int(n)
        rate = _number(details.get("request_rate"))
        if row["details"] is not None:
            latest_rates.setdefault(business, deque(maxlen=LEARNED_RATE_LOOK_BACK)).append(
                rate if rate is not None and rate > 0 else None
            )

    family = GaugeMetricFamily(
        "perkbridge_runs", "Runs in the run log, by business, direction and status (running included)",
        labels=["business", "direction", "status"],
    )
    for labels, n in sorted(by_status.items()):
        family.add_metric(list(labels), n)
    yield family
    yield _duration_family(durations)
    yield _counter(
        "perkbridge_records", "Records the import runs read, by business, kind and outcome (pages committed so far)",
        ["business", "kind", "outcome"], records.items(),
    )
    yield _counter(
        "perkbridge_writeback_items", "Points movements the write-back runs handled, by business and outcome",
        ["business", "outcome"], writeback.items(),
    )
    yield _counter(
        "perkbridge_perkville_requests",
        "Perkville HTTP answers, by business and status class, as finished runs recorded them",
        ["business", "status_class"], requests.items(),
    )
    yield _counter(
        "perkbridge_perkville_throttled", "Perkville 429 answers, by business, as finished runs recorded them",
        ["business"], [((b,), n) for b, n in throttled.items()],
    )
    gauge = GaugeMetricFamily(
        "perkbridge_perkville_request_rate",
        "The Perkville request rate (requests/s) the adaptive budget learned; the next run starts there",
        labels=["business"],
    )
    for business, rates in sorted(latest_rates.items()):
        learned = next((r for r in reversed(rates) if r is not None), None)
        if learned is not None:
            gauge.add_metric([business], learned)
    yield gauge
    checked_family = GaugeMetricFamily(
        "perkbridge_reconcile_checked", "Members the last reconcile of the business compared", labels=["business"]
    )
    mismatch_family = GaugeMetricFamily(
        "perkbridge_reconcile_mismatches",
        "Members whose balances differed in the last reconcile of the business",
        labels=["business"],
    )
    for business, (checked, mismatched) in sorted(reconcile.items()):
        checked_family.add_metric([business], checked)
        mismatch_family.add_metric([business], mismatched)
    yield checked_family
    yield mismatch_family


def _counter(name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], int]]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values):
        family.add_metric(list(key), n)
    return family


def _duration_family(durations: dict[str, list[float]]) -> Metric:
    family = HistogramMetricFamily(
        "perkbridge_run_duration_seconds", "Duration of finished runs, by direction", labels=["direction"]
    )
    for direction, values in sorted(durations.items()):
        buckets: list[tuple[str, float]] = []
        for bound in RUN_SECONDS_BUCKETS:
            buckets.append((_bound(bound), float(sum(1 for v in values if v <= bound))))
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([direction], buckets, sum_value=sum(values))
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def _lag_family(rows: Iterable[Any]) -> Metric:
    """Lag as ``perkbridge status`` computes it: the source's newest change minus the cursor."""
    family = GaugeMetricFamily(
        "perkbridge_cursor_lag_seconds",
        "How far a cursor stands behind the newest change the source held when the last run looked "
        "(the source's own clock), by business and resource",
        labels=["business", "resource"],
    )
    for business, resource, value, source_newest in rows:
        try:
            lag = lag_seconds(
                datetime.fromisoformat(value), datetime.fromisoformat(source_newest) if source_newest else None
            )
        except ValueError:
            continue
        if lag is not None:
            family.add_metric([business, resource], lag)
    return family


# ------------------------------------------------------------------------- this process's API


class ApiMetrics:
    """Pure-ASGI middleware counting this process's HTTP requests and their latency.

    The route label is the matched route's template (``/v1/customer/{user_id:path}``), never the
    raw path, also for a request the gate refused before routing (401, 429); a path no route
    matches is ``unmatched``.
    """

    def __init__(self, app: Any, *, registry: CollectorRegistry, routes: Sequence[Any] = ()) -> None:
        self.app = app
        self.routes = routes
        self.requests = Counter(
            "perkbridge_api_requests", "HTTP requests this serve process answered, by route template, method and status",
            ["route", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "perkbridge_api_request_duration_seconds",
            "Latency of the HTTP requests this serve process answered, by route template and method",
            ["route", "method"], registry=registry, buckets=API_SECONDS_BUCKETS,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or self._template(scope)
            method = str(scope.get("method", ""))
            self.requests.labels(route, method, str(status[0])).inc()
            self.latency.labels(route, method).observe(time.perf_counter() - started)


    def _template(self, scope: Any) -> str:
        from starlette.routing import Match

        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"


def install(app: Any, engine: Engine, *, authorize: Callable[[str], bool] | None = None) -> None:
    """Serve ``GET /metrics`` on the FastAPI ``app``: the state collector plus this process's API metrics.

    With ``authorize`` (``serve`` bound beyond loopback), a scrape must carry
    ``Authorization: Bearer KEY`` for which ``authorize(KEY)`` is true, else it gets 401.
    """
    from starlette.requests import Request
    from starlette.responses import Response

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(engine))
    app.add_middleware(ApiMetrics, registry=registry, routes=app.router.routes)

    def metrics(request: Request) -> Response:  # a plain function: Starlette runs it in a thread
        if authorize is not None:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip() or not authorize(key.strip()):
                return Response(
                    "metrics need Authorization: Bearer <server key with the dashboard or admin:config scope>\n",
                    status_code=401, media_type="text/plain", headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
