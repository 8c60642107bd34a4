"""The dead-letter pages through a signed-in TestClient: list and filters, confirmation, retry after
a fix at the source, discard, refusals, forged POSTs, and no secret from a raw record on any page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from bridge.pipeline.options import DIRECTION
from bridge.state import lease_name
from tests.bridge.conftest import SPACE, Bridge
from tests.bridge.dashboard.conftest import SignedIn, dashboard_app, sign_in
from tests.bridge.test_deadletters_cli import _break, _letters

SECRETS = ("hunter2", "t0ps3cretT0ken", "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0", "Sup3rSecretCookie")
LIST = "/dashboard/deadletters"


def _plant_secret_letter(bridge: Bridge) -> int:
    """An open dead letter whose raw record and detail carry secrets; its id."""
    with bridge.engine.begin() as conn:
        bridge.state.dead_letters.put(
            conn,
            business=bridge.business,
            kind="transaction",
            record_id="424242",
            raw={
                "id": 424242,
                "points": "ten",
                "password": "hunter2",
                "user": {"email": "m@example.com", "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0"},
                "resource_uri": "https://api.example.com/v2/transactions/424242/?access_token=t0ps3cretT0ken",
                "headers": [{"name": "Cookie", "cookie": "Sup3rSecretCookie"}],
            },
            reason="bad_points",
            detail="points is not a number (retry with password=hunter2)",
            run_id=None,
        )
    (letter,) = [d for d in bridge.state.dead_letters.list(bridge.business) if d.record_id == "424242"]
    return letter.id


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def _runs(bridge: Bridge) -> list[tuple[int, str]]:
    return [(r.id, r.kind) for r in bridge.state.runs.recent(bridge.business, limit=100)]


def test_the_list_filters_by_reason_and_status_and_shows_the_redacted_raw(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    broken = [str(i) for i in _break(bridge, 2)]
    run_id = bridge.backfill().run_id
    planted = _plant_secret_letter(bridge)

    page = signed_in.client.get(LIST)
    assert page.status_code == 200
    body = page.text
    assert re.search(r"bad_classification <span class=\"num\">2</span>", body)
    assert re.search(r"bad_points <span class=\"num\">1</span>", body)
    assert all(f'<td class="mono">{r}</td>' in body for r in [*broken, "424242"])
    assert f'<a href="/dashboard/runs/{run_id}">{run_id}</a>' in body
    assert f'name="id" value="{planted}"' in body and "<details>" in body
    assert '&#34;password&#34;: &#34;***&#34;' in body and "m@example.com" in body  # redacted, rest kept
    _no_secret(body)

    only = signed_in.client.get(LIST, params={"reason": "bad_points"}).text
    assert '<td class="mono">424242</td>' in only and not any(f'<td class="mono">{r}</td>' in only for r in broken)
    assert 'aria-current="true">bad_points' in only
    resolved = signed_in.client.get(LIST, params={"status": "resolved"}).text
    assert "No resolved dead letters match these filters" in resolved
    other = signed_in.client.get(LIST, params={"business": "no-such-business"}).text
    assert "No open dead letters of business no-such-business" in other and "every record read" in other


def test_an_empty_list_says_what_to_do_next(signed_in: SignedIn) -> None:
    body = signed_in.client.get(LIST).text
    assert "No open dead letters" in body and "after a backfill or sync" in body


def test_retry_confirms_first_then_resolves_what_was_fixed_at_the_source(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    fixed, broken = _break(bridge, 2)
    bridge.backfill()
    letters = _letters(bridge)
    ids = [letters[str(fixed)][0], letters[str(broken)][0]]
    runs_before = _runs(bridge)

    confirm = signed_in.post(f"{LIST}/retry", {"id": ids})
    assert confirm.status_code == 200, confirm.text
    assert f"perkbridge deadletters retry --business {bridge.business} --id {ids[0]} --id {ids[1]}" in confirm.text
    assert "2 import letters will be read again from Perkville" in confirm.text
    assert 'action="/dashboard/deadletters/retry/confirm"' in confirm.text
    assert _letters(bridge) == letters and _runs(bridge) == runs_before  # a confirmation changes nothing

    bridge.box.ledger.txns[fixed].classification = "EARN"  # the cause fixed at the source
    bridge.box.ledger.version += 1
    done = signed_in.post(f"{LIST}/retry/confirm", {"id": ids})

    assert done.status_code == 200, done.text
    (retry_run,) = [r for r in _runs(bridge) if r not in runs_before]
    assert retry_run[1] == "retry"
    assert f'Retry run <a href="/dashboard/runs/{retry_run[0]}">{retry_run[0]}</a>' in done.text
    assert "<strong>1 resolved</strong>" in done.text and "<strong>1 still failing</strong>" in done.text
    after = _letters(bridge, status=None)
    assert after[str(fixed)] == (ids[0], "resolved", 1)
    assert after[str(broken)] == (ids[1], "open", 2)


def test_one_row_button_retries_only_its_letter(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    first, second = _break(bridge, 2)
    bridge.backfill()
    letters = _letters(bridge)
    one = letters[str(first)][0]
    # The row's button sends ``one``; ticked boxes in the same form are not part of it.
    confirm = signed_in.post(f"{LIST}/retry", {"one": one, "id": [letters[str(second)][0]]})
    assert f"--id {one}</code>" in confirm.text and f'name="id" value="{letters[str(second)][0]}"' not in confirm.text
    bridge.box.ledger.txns[first].classification = "EARN"
    bridge.box.ledger.version += 1
    done = signed_in.post(f"{LIST}/retry/confirm", {"id": one})
    assert "<strong>1 resolved</strong>" in done.text
    assert _letters(bridge, status=None)[str(second)] == letters[str(second)]


def test_discard_confirms_then_discards_for_good(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    victims = _break(bridge, 2)
    bridge.backfill()
    letters = _letters(bridge)
    ids = [letters[str(v)][0] for v in victims]

    confirm = signed_in.post(f"{LIST}/discard", {"id": ids})
    assert confirm.status_code == 200 and "This cannot be undone" in confirm.text
    assert f"perkbridge deadletters discard --business {bridge.business} --id {ids[0]} --id {ids[1]}" in confirm.text
    assert _letters(bridge) == letters

    done = signed_in.post(f"{LIST}/discard/confirm", {"id": ids})
    assert done.status_code == 200 and "<strong>2 discarded</strong>" in done.text
    assert {s for _, s, _ in _letters(bridge, status=None).values()} == {"discarded"}
    again = signed_in.post(f"{LIST}/discard/confirm", {"id": ids[:1]})
    assert again.status_code == 409
    assert f"dead letter #{ids[0]} is discarded, not open; nothing discarded" in again.text
    assert "No open dead letters" in signed_in.client.get(LIST).text
    everything = signed_in.client.get(LIST, params={"status": "all"}).text
    assert f'<tr id="letter-{ids[0]}">' in everything and f'name="id" value="{ids[0]}"' not in everything


@pytest.mark.parametrize("path", ["retry", "retry/confirm", "discard", "discard/confirm"])
@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "wrong"])
def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    signed_in: SignedIn, path: str, token: str | None
) -> None:
    bridge = signed_in.bridge
    (victim,) = _break(bridge, 1)
    bridge.backfill()
    bridge.box.ledger.txns[victim].classification = "EARN"
    bridge.box.ledger.version += 1
    letters, runs_before = _letters(bridge, status=None), _runs(bridge)
    (letter_id,) = [i for i, _, _ in letters.values()]

    form = {"id": letter_id, **({"csrf_token": token} if token else {})}
    answer = signed_in.post(f"{LIST}/{path}", form, csrf=False)

    assert answer.status_code == 403
    assert _letters(bridge, status=None) == letters and _runs(bridge) == runs_before


def test_without_a_session_the_pages_show_nothing(dashboard_client: TestClient, bridge: Bridge) -> None:
    _plant_secret_letter(bridge)
    page = dashboard_client.get(LIST, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/dashboard/login")
    assert "424242" not in page.text
    answer = dashboard_client.post(f"{LIST}/discard/confirm", data={"id": "1"}, follow_redirects=False)
    assert answer.status_code == 401 and answer.text == ""
    assert [d.status for d in bridge.state.dead_letters.list(bridge.business)] == ["open"]


def test_unknown_ids_and_empty_selections_are_refused(signed_in: SignedIn) -> None:
    empty = signed_in.post(f"{LIST}/retry", {})
    assert empty.status_code == 400 and "No dead letter was selected" in empty.text
    bogus = signed_in.post(f"{LIST}/discard", {"id": "x1"})
    assert bogus.status_code == 400 and "not a dead letter id" in bogus.text
    unknown = signed_in.post(f"{LIST}/retry/confirm", {"id": 999})
    assert unknown.status_code == 409
    assert "no dead letter #999; nothing retried" in unknown.text
    assert signed_in.bridge.state.runs.recent(signed_in.bridge.business) == []


def test_no_page_shows_a_secret_from_a_raw_record(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    planted = _plant_secret_letter(bridge)
    pages = [
        signed_in.client.get(LIST),
        signed_in.client.get(LIST, params={"status": "all"}),
        signed_in.client.get(LIST, params={"reason": "bad_points"}),
        signed_in.post(f"{LIST}/retry", {"id": planted}),
        signed_in.post(f"{LIST}/discard", {"id": planted}),
        signed_in.post(f"{LIST}/retry/confirm", {"id": planted}),  # fails again: still unmappable
    ]
    assert "<strong>1 still failing</strong>" in pages[-1].text
    pages += [
        signed_in.post(f"{LIST}/discard/confirm", {"id": planted}),
        signed_in.client.get(LIST, params={"status": "discarded"}),
    ]
    assert "<strong>1 discarded</strong>" in pages[-2].text and "424242" in pages[-1].text
    for page in pages:
        assert page.status_code == 200, page.text
        _no_secret(page.text)
    stored = bridge.state.dead_letters.list(bridge.business, status=None)[0]
    assert stored.raw["password"] == "hunter2"  # the record itself is kept as it was


def test_without_perkville_settings_a_retry_says_so_and_discard_still_works(bridge: Bridge) -> None:
    (victim,) = _break(bridge, 1)
    bridge.backfill()
    (letter_id,) = [i for i, _, _ in _letters(bridge).values()]
    bridge.service.ensure_space(SPACE)
    key = bridge.service.create_api_key(SPACE, ["admin:config"]).key
    app = dashboard_app(bridge, PERKVILLE_PASSWORD="", PERKVILLE_CLIENT_SECRET="", PERKVILLE_ACCESS_TOKEN="")
    with TestClient(app) as client:
        assert sign_in(client, key).status_code == 303
        signed = SignedIn(client, key, bridge)
        refused = signed.post(f"{LIST}/retry", {"id": letter_id})
        assert refused.status_code == 503
        assert "Perkville is not configured for this dashboard" in refused.text
        assert "PERKVILLE_CLIENT_SECRET" in refused.text and "discarding works without them" in refused.text
        assert signed.post(f"{LIST}/retry/confirm", {"id": letter_id}).status_code == 503
        assert _letters(bridge)[str(victim)] == (letter_id, "open", 1)
        done = signed.post(f"{LIST}/discard/confirm", {"id": letter_id})
        assert "<strong>1 discarded</strong>" in done.text


def test_a_retry_while_a_sync_holds_the_lease_is_refused_and_changes_nothing(signed_in: SignedIn) -> None:
    bridge = signed_in.bridge
    (victim,) = _break(bridge, 1)
    bridge.backfill()
    letters, runs_before = _letters(bridge), _runs(bridge)
    (letter_id,) = [i for i, _, _ in letters.values()]
    held = bridge.state.leases.try_acquire(lease_name(bridge.business, DIRECTION), "sync-on-host-b", timedelta(minutes=5))
    assert held is not None

    done = signed_in.post(f"{LIST}/retry/confirm", {"id": letter_id})

    assert done.status_code == 409
    assert "is already running (held by sync-on-host-b" in done.text and "Nothing was retried" in done.text
    assert _letters(bridge) == letters and _runs(bridge) == runs_before


def test_a_long_list_pages_and_keeps_its_filters(signed_in: SignedIn, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.dashboard import deadletters as page_module

    monkeypatch.setattr(page_module, "PAGE_SIZE", 1)
    bridge = signed_in.bridge
    first, second = (str(v) for v in _break(bridge, 2))
    bridge.backfill()
    one = signed_in.client.get(LIST, params={"reason": "bad_classification"}).text
    assert f'<td class="mono">{first}</td>' in one and f'<td class="mono">{second}</td>' not in one
    assert "page 1 of 2" in one and 'href="/dashboard/deadletters?reason=bad_classification&amp;page=2"' in one
    two = signed_in.client.get(LIST, params={"reason": "bad_classification", "page": 2}).text
    assert f'<td class="mono">{second}</td>' in two and "page 2 of 2" in two


def test_write_back_letters_without_their_settings_are_refused_like_the_cli_refuses_them(
    signed_in: SignedIn,
) -> None:
    from perkamo_core.models import EventInput
    from tests.bridge.test_writeback import VISIT, _member, _prepared, _writeback

    bridge = signed_in.bridge
    perk = _prepared(bridge)
    user = _member(bridge)
    bridge.service.ingest(SPACE, EventInput(user_id=f"perkville:{user}", event="late.perk", transaction_id="late:1"))
    assert _writeback(bridge, {VISIT: perk["perk_id"], "late.perk": 999_999}).run().dead_lettered == 1
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    runs_before = _runs(bridge)

    for path in ("retry", "retry/confirm"):
        refused = signed_in.post(f"{LIST}/{path}", {"id": letter.id})
        assert refused.status_code == 409
        assert "1 write-back dead letters need the write-back settings" in refused.text
        assert "[writeback] event_perks" in refused.text and "nothing was retried" in refused.text
    assert [d.status for d in bridge.state.dead_letters.list(bridge.business, status=None)] == ["open"]
    assert _runs(bridge) == runs_before


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "0 s"), (45, "45 s"), (12 * 60 + 5, "12 min"), (5 * 3600 + 3 * 60, "5 h 03 min"), (3 * 86400 + 4 * 3600, "3 d 4 h")],
    ids=["future", "seconds", "minutes", "hours", "days"],
)
def test_age_is_short_and_coarse(seconds: int, shown: str) -> None:
    from bridge.dashboard.deadletters import age

    assert age(timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(
    ("form", "ids"),
    [
        ({"id": ["3", "1", "3"]}, [3, 1]),
        ({"one": ["7"], "id": ["1", "2"]}, [7]),
        ({"id": [""]}, []),
        ({}, []),
    ],
    ids=["ticked-deduplicated", "row-button-wins", "blank", "none"],
)
def test_chosen_ids(form: dict[str, list[str]], ids: list[int]) -> None:
    from bridge.dashboard.deadletters import chosen_ids

    assert chosen_ids(form) == ids


@pytest.mark.parametrize("bad", ["x1", "-2", "0", "1.5"])
def test_chosen_ids_refuses_what_is_not_an_id(bad: str) -> None:
    from bridge.dashboard.deadletters import chosen_ids

    with pytest.raises(ValueError):
        chosen_ids({"id": [bad]})
