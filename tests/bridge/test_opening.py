"""A run's opening (``bridge.opening``): the token and the signposts read while the command starts
up, reused by the run once, read again where the probed schema wants another field, and failures
handed to the run as its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.opening import SourceOpening
from bridge.signposts import read_signposts
from connectors.perkville import PerkvilleClient
from connectors.perkville.errors import AuthError
from connectors.perkville.sandbox import Sandbox
from connectors.perkville.schema import discover

RESOURCES = ("users", "connections", "transactions")


@pytest.fixture
def box(sandbox: Sandbox) -> Sandbox:
    return sandbox


def _client(box: Sandbox, **overrides: object) -> PerkvilleClient:
    kwargs = {**box.client_kwargs(), "requests_per_second": None, **overrides}
    return PerkvilleClient(**kwargs)


def _requests(box: Sandbox) -> int:
    return int(box.stats()["requests"])


def test_the_run_reuses_the_opening_signposts_once(box: Sandbox) -> None:
    business = str(box.business_ids[0])
    with _client(box) as direct:
        expected = read_signposts(direct, business, "UTC")
    with _client(box) as client:
        opening = SourceOpening(client, business, "UTC")
        early = opening.signposts()
        assert early == expected
        assert {field for field, _ in early.values()} == {"last_mod_dt"}
        before = _requests(box)
        assert read_signposts(client, business, "UTC", earlier=early) == expected
        assert _requests(box) == before, "a signpost already read was asked for again"
        assert opening.signposts() is None, "the signposts serve the one run they were read for"


def test_a_signpost_read_by_another_field_than_the_schema_wants_is_read_again(box: Sandbox) -> None:
    business = str(box.business_ids[0])
    with _client(box) as client:
        opening = SourceOpening(client, business, "UTC")
        early = opening.signposts()
        assert early is not None and early["transactions"][0] == "last_mod_dt"
        # The run learns the probed schema only once its state is open, after the opening: here
        # one whose transactions list no last_mod_dt filter.
        box.set_behaviour(hidden_transaction_fields=["last_mod_dt"], unknown_filters="ignore")
        client.use_schema(discover(client, RESOURCES))
        before = _requests(box)
        found = read_signposts(client, business, "UTC", earlier=early)
    assert _requests(box) - before == 1  # transactions only, by transaction_dt
    assert found["transactions"][0] == "transaction_dt" and found["transactions"][1] is not None
    assert found["users"] == early["users"] and found["connections"] == early["connections"]


def test_a_rejected_token_is_raised_to_the_run(box: Sandbox) -> None:
    with _client(box, password="not-the-password") as client:
        opening = SourceOpening(client, str(box.business_ids[0]), "UTC")
        with pytest.raises(AuthError):
            opening.signposts()


def test_a_refused_signpost_leaves_the_reading_to_the_run(box: Sandbox) -> None:
    # A server that refuses an ordering the probed schema would have withheld answers 4xx: the
    # run, schema in hand, reads the signposts itself.
    box.set_behaviour(hidden_transaction_fields=["last_mod_dt"], unknown_filters="ignore")
    business = str(box.business_ids[0])
    with _client(box) as client:
        opening = SourceOpening(client, business, "UTC")
        assert opening.signposts() is None
        client.use_schema(discover(client, RESOURCES))
        found = read_signposts(client, business, "UTC", earlier=None)
    assert found["transactions"][0] == "transaction_dt" and found["transactions"][1] is not None


def test_importing_the_cli_leaves_the_database_layer_and_the_connector_for_later() -> None:
    # What lets a run's first requests leave while the rest is imported (and --help stay quick).
    heavy = ("sqlalchemy", "httpx", "authlib", "perkamo_core.service", "connectors.perkville", "bridge.wiring")
    code = f"import sys, bridge.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.db
@pytest.mark.parametrize("opened_first", [True, False], ids=["opening", "no-opening"])
def test_a_run_starts_from_the_rate_the_business_s_last_run_learned(
    box: Sandbox, db_url: str, opened_first: bool
) -> None:
    from bridge.opening import open_source
    from bridge.wiring import RunParts, open_engine, open_state
    from config.settings import load_settings
    from tests.bridge.conftest import sandbox_settings

    settings = load_settings(None, environ=sandbox_settings(box, db_url))
    business = str(box.business_ids[0])
    engine = open_engine(settings)
    try:
        runs = open_state(engine).runs
        earlier = runs.start(business, direction="import", kind="sync")
        runs.finish(earlier, "succeeded", details={"request_rate": 3.25})
        opening = open_source(settings, business) if opened_first else None
        if opening is not None:
            assert opening.signposts() is not None  # its requests went out at the default start
        parts = RunParts(settings, engine, business, opening=opening)
        try:
            assert parts.source is not None and parts.source.budget.rate == 3.25
        finally:
            parts.close()
    finally:
        engine.dispose()
