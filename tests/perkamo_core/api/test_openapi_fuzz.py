"""No client input produces a 5xx: schemathesis drives every operation of ``/openapi.json``."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import Engine

from perkamo_core.api import create_app
from tests.perkamo_core.api.support import MutableClock, make_core

pytestmark = pytest.mark.slow


def test_openapi_document_lists_every_route(db_engine: Engine) -> None:
    service, _ = make_core(db_engine)
    document = create_app(service).openapi()
    assert set(document["paths"]) == {
        "/healthz",
        "/v1/identify",
        "/v1/events",
        "/v1/events:batch",
        "/v1/customer/{user_id}",
        "/v1/profile/{user_id}",
        "/v1/rewards/redeem",
        "/v1/program",
        "/v1/usage",
        "/v1/admin/config/{module}",
    }
    events = document["paths"]["/v1/events"]["post"]["responses"]
    assert "422" not in events and {"400", "401", "403", "429"} <= set(events)


@pytest.mark.parametrize(
    ("mode", "examples"),
    [
        pytest.param(schemathesis.GenerationMode.POSITIVE, 120, id="positive"),
        pytest.param(schemathesis.GenerationMode.NEGATIVE, 120, id="negative"),
    ],
)
def test_no_client_input_yields_a_server_error(
    db_engine: Engine, mode: schemathesis.GenerationMode, examples: int
) -> None:
    service, keys = make_core(db_engine, MutableClock())
    app = create_app(service, rate_limit=None)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = schema.as_strategy(generation_mode=mode, headers={"x-perkamo-api-key": keys.full})
    seen: set[int] = set()

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error])
        seen.add(response.status_code)

    run()
    assert seen and all(status < 500 for status in seen)
    if mode is schemathesis.GenerationMode.POSITIVE:
        assert 200 in seen, "some generated requests succeed"
    else:
        assert 400 in seen, "invalid input is answered with 400"
