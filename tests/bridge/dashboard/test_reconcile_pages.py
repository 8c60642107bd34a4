"""The reconciliation pages after a real reconcile of the sandbox: totals, flagged members first,
search, pages, the CSV export, a member's story; and nothing without a session."""

from __future__ import annotations

import csv
import html
import io
import re

import pytest
from fastapi.testclient import TestClient

from bridge.dashboard import reconcile as pages
from bridge.reconcile import Reconciler
from tests.bridge.conftest import MEMBERS, SPACE, Bridge
from tests.bridge.dashboard.conftest import SignedIn
from tests.bridge.test_reconcile_results import shift

pytestmark = pytest.mark.db


def _member_ids(page: str) -> list[str]:
    return re.findall(r'<tr id="member-([^"]+)">', page)


@pytest.fixture
def reconciled(signed_in: SignedIn) -> tuple[SignedIn, int]:
    """A backfill, one member moved by −1234 in Perkamo, then ``reconcile``: the moved member."""
    bridge = signed_in.bridge
    assert bridge.backfill().status == "succeeded"
    user = sorted(bridge.box.true_balances())[3]
    shift(bridge, user, -1234, "manual-dashboard-1")
    assert not bridge.reconcile().ok
    return signed_in, user


def test_before_any_reconcile_the_page_says_what_to_run(signed_in: SignedIn) -> None:
    signed_in.bridge.backfill()
    page = signed_in.client.get("/dashboard/reconcile")
    assert page.status_code == 200
    assert "No reconcile yet: run `perkbridge reconcile`" in html.unescape(page.text)


def test_totals_and_the_mismatch_first(reconciled: tuple[SignedIn, int]) -> None:
    signed_in, user = reconciled
    bridge = signed_in.bridge
    page = signed_in.client.get(f"/dashboard/reconcile?business={bridge.business}")
    assert page.status_code == 200
    text = page.text
    assert re.search(r'data-total="checked">20<', text) and re.search(r'data-total="matched">19<', text)
    assert re.search(r'data-total="mismatched">1<', text)
    ids = _member_ids(text)
    assert len(ids) == MEMBERS and ids[0] == str(user)
    row = text[text.index(f'id="member-{user}"'):]
    row = row[: row.index("</tr>")]
    truth = bridge.box.true_balances()[user]
    assert 'data-col="difference">1,234<' in row and f'data-col="perkville">{truth:,}<' in row
    assert "badge-mismatch" in row
    assert signed_in.key not in text


def test_search_by_member_id_customer_id_and_email(reconciled: tuple[SignedIn, int]) -> None:
    signed_in, user = reconciled
    business = signed_in.bridge.business
    by_id = signed_in.client.get(f"/dashboard/reconcile?business={business}&q={user}")
    assert str(user) in _member_ids(by_id.text) and all(i.startswith(str(user)) for i in _member_ids(by_id.text))
    by_customer = signed_in.client.get(f"/dashboard/reconcile?business={business}&q=perkville:{user}")
    assert _member_ids(by_customer.text)[0] == str(user)
    staged = signed_in.bridge.state.users.get_many(business, [str(user)])[str(user)]
    email = staged["emails"][0]["email"]
    by_email = signed_in.client.get("/dashboard/reconcile", params={"business": business, "q": email.upper()})
    assert _member_ids(by_email.text) == [str(user)]
    nothing = signed_in.client.get(f"/dashboard/reconcile?business={business}&q=no-such-member")
    assert nothing.status_code == 200 and _member_ids(nothing.text) == []
    assert "No member matches" in nothing.text
    hostile = signed_in.client.get("/dashboard/reconcile", params={"business": business, "q": "<script>x</script>"})
    assert "<script>x" not in hostile.text and "&lt;script&gt;x" in hostile.text  # shown escaped
    flagged = signed_in.client.get(f"/dashboard/reconcile?business={business}&only=flagged")
    assert _member_ids(flagged.text) == [str(user)]
    unknown = signed_in.client.get(f"/dashboard/reconcile?business={business}&only=bogus")
    assert unknown.status_code == 200 and "unknown filter" in unknown.text and len(_member_ids(unknown.text)) == MEMBERS


def test_pages(reconciled: tuple[SignedIn, int], monkeypatch: pytest.MonkeyPatch) -> None:
    signed_in, user = reconciled
    monkeypatch.setattr(pages, "PAGE_SIZE", 6)
    business = signed_in.bridge.business
    seen: list[str] = []
    for n in range(1, 5):
        page = signed_in.client.get(f"/dashboard/reconcile?business={business}&page={n}")
        assert f"page {n} of 4" in page.text
        seen += _member_ids(page.text)
    assert seen[0] == str(user) and len(seen) == len(set(seen)) == MEMBERS
    assert 'rel="next"' not in signed_in.client.get(f"/dashboard/reconcile?business={business}&page=4").text
    assert signed_in.client.get("/dashboard/reconcile?page=0").status_code == 400  # the app answers bad input 400


def test_the_csv_has_the_cli_columns_and_the_filter(reconciled: tuple[SignedIn, int]) -> None:
    signed_in, user = reconciled
    bridge = signed_in.bridge
    answer = signed_in.client.get(f"/dashboard/reconcile.csv?business={bridge.business}")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    exported = list(csv.reader(io.StringIO(answer.text)))
    cli = io.StringIO()
    Reconciler(state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business).compare(cli)
    expected = list(csv.reader(io.StringIO(cli.getvalue())))
    assert exported[0] == expected[0]
    assert sorted(exported[1:]) == sorted(expected[1:]) and exported[1][1] == str(user)
    only = signed_in.client.get(f"/dashboard/reconcile.csv?business={bridge.business}&only=mismatch")
    rows = list(csv.reader(io.StringIO(only.text)))
    assert len(rows) == 2 and rows[1][1] == str(user) and rows[1][4] == "1234" and rows[1][5] == "mismatch"


def test_a_members_story(reconciled: tuple[SignedIn, int]) -> None:
    signed_in, user = reconciled
    bridge = signed_in.bridge
    truth = bridge.box.true_balances()[user]
    page = signed_in.client.get(f"/dashboard/members/{user}?business={bridge.business}")
    assert page.status_code == 200
    text = page.text
    assert f'data-balance="perkville">{truth:,}<' in text
    assert f'data-balance="perkamo">{truth - 1234:,}<' in text
    assert 'data-balance="difference">1,234<' in text
    assert "manual-dashboard-1" in text  # the event behind the difference, by its transaction id
    moved = text[text.index("manual-dashboard-1"):]
    assert moved[: moved.index("</tr>")].count('<td class="num">-1,234</td>') == 1  # its points movement
    events = bridge.service.customer_events(SPACE, f"perkville:{user}", limit=50)
    assert all(e.transaction_id in text for e in events)
    assert "perkville_user" in text  # the id map's strategy
    assert signed_in.key not in text

    bridge.reconcile(repair=True)
    repaired = signed_in.client.get(f"/dashboard/members/{user}?business={bridge.business}").text
    assert 'data-balance="difference">0<' in repaired and "badge-repaired" in repaired
    assert f"perkville:{bridge.business}:adjust:{user}:1" in repaired

    missing = signed_in.client.get(f"/dashboard/members/999999?business={bridge.business}")
    assert missing.status_code == 404 and "No member 999999" in missing.text


def test_without_a_session_nothing_is_shown(bridge: Bridge, dashboard_client: TestClient) -> None:
    bridge.backfill()
    bridge.reconcile()
    for path in ("/dashboard/reconcile", f"/dashboard/members/1?business={bridge.business}"):
        answer = dashboard_client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/dashboard/login")
        assert answer.text == ""
    answer = dashboard_client.get("/dashboard/reconcile.csv", follow_redirects=False)
    assert answer.status_code == 401 and answer.text == ""


def test_before_a_reconcile_a_member_shows_the_last_syncs_balance_and_pages_its_history(
    signed_in: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = signed_in.bridge
    bridge.backfill()
    monkeypatch.setattr(pages, "HISTORY_SIZE", 3)
    user = sorted(bridge.box.true_balances())[0]
    customer = f"perkville:{user}"
    events = bridge.service.customer_events(SPACE, customer, limit=500)
    assert len(events) > 3
    page = signed_in.client.get(f"/dashboard/members/{user}?business={bridge.business}")
    assert page.status_code == 200 and "from the last sync (no reconcile yet)" in page.text
    entry = bridge.state.id_map.get_many(bridge.business, [str(user)])[str(user)]
    assert entry.perkville_balance is not None
    assert f'data-balance="perkville">{entry.perkville_balance:,}<' in page.text
    shown = [e.transaction_id for e in events if e.transaction_id in page.text]
    assert shown == [e.transaction_id for e in events[:3]]
    older = re.search(r'href="\?([^"]+)" rel="next">older events', page.text)
    assert older is not None
    second = signed_in.client.get(f"/dashboard/members/{user}?{html.unescape(older.group(1))}")
    assert [e.transaction_id for e in events if e.transaction_id in second.text] == [
        e.transaction_id for e in events[3:6]
    ]
