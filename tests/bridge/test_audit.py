"""Signed audit packs through the real CLI, after a real backfill of the sandbox over loopback:
export → verify, one flipped byte in each part, the chain against the database, no secret inside,
and two exports that differ only in their export time."""

from __future__ import annotations

import json
import stat
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bridge.audit import pack
from connectors.perkville.sandbox import Sandbox
from perkamo_core.db import create_db_engine
from tests.bridge.conftest import SPACE, Bridge, event_count, run

pytestmark = pytest.mark.db


@pytest.fixture
def audit_env(cli_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sandbox: Sandbox) -> Path:
    """The CLI environment with a signing key path and every secret setting given a value."""
    monkeypatch.setenv("PERKBRIDGE_AUDIT_KEY", str(tmp_path / "keys" / "audit.pem"))
    monkeypatch.setenv("PERKVILLE_ACCESS_TOKEN", sandbox.issue_token())
    monkeypatch.setenv("PERKAMO_SECRET_KEY", "sk_test_auditpackneverholdsthis0123456789")
    (tmp_path / "keys").mkdir()
    return cli_env


def _keygen(capsys: pytest.CaptureFixture[str], config: Path) -> Path:
    public = config.parent / "keys" / "audit.pub"
    code, _, err = run(capsys, config, "audit", "keygen", "--public", str(public))
    assert code == 0, err
    return public


def _backfill(capsys: pytest.CaptureFixture[str], config: Path) -> dict[str, Any]:
    code, body, err = run(capsys, config, "backfill", "--json")
    assert code == 0 and body["status"] == "succeeded", err
    return body  # type: ignore[no-any-return]


def _export(capsys: pytest.CaptureFixture[str], config: Path, run_id: int, name: str) -> Path:
    out = config.parent / name
    code, body, err = run(
        capsys, config, "audit", "export", "--run", str(run_id), "--out", str(out), "--json"
    )
    assert code == 0, err
    assert body["path"] == str(out)
    return out


def _export_code(capsys: pytest.CaptureFixture[str], config: Path, run_id: int, out: Path) -> tuple[int, str]:
    code, _, err = run(capsys, config, "audit", "export", "--run", str(run_id), "--out", str(out))
    return code, err


def _verify(
    capsys: pytest.CaptureFixture[str], config: Path, zip_file: Path, public: Path, *extra: str
) -> tuple[int, str]:
    code, _, err = run(capsys, config, "audit", "verify", str(zip_file), "--public-key", str(public), *extra)
    return code, err


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rezip(path: Path, members: dict[str, bytes], out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for name in pack.MEMBERS:
            archive.writestr(zipfile.ZipInfo(name, date_time=pack.ZIP_TIME), members[name])
    return out


def _break(sandbox: Sandbox, n: int) -> list[str]:
    """``n`` ACTIVE rows turn unmappable at the source (they will be dead-lettered); their ids."""
    victims = [t for t in sandbox.ledger.txns.values() if t.status == "ACTIVE" and t.points][:n]
    for txn in victims:
        txn.classification = "MYSTERY"
    sandbox.ledger.version += 1
    return [str(t.id) for t in victims]


def _secrets(sandbox: Sandbox, db_url: str) -> list[str]:
    import os

    from sqlalchemy.engine import make_url

    values = [
        sandbox.credentials["client_secret"],
        sandbox.credentials["password"],
        os.environ["PERKVILLE_ACCESS_TOKEN"],
        os.environ["PERKAMO_SECRET_KEY"],
    ]
    password = make_url(db_url).password
    if password:
        values.append(str(password))
    return values


def test_export_then_verify_passes_and_the_chain_matches_the_database(
    audit_env: Path, capsys: pytest.CaptureFixture[str], db_url: str, sandbox: Sandbox
) -> None:
    public = _keygen(capsys, audit_env)
    private = audit_env.parent / "keys" / "audit.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    run_body = _backfill(capsys, audit_env)
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")

    code, err = _verify(capsys, audit_env, zip_file, public)
    assert code == 0, err
    code, err = _verify(capsys, audit_env, zip_file, public, "--against-db")
    assert code == 0, err
    assert (
        "against the database"
        in run(
            capsys, audit_env, "audit", "verify", str(zip_file), "--public-key", str(public), "--against-db"
        )[1]
    )

    members = _members(zip_file)
    assert list(members) == list(pack.MEMBERS)
    manifest = json.loads(members[pack.MANIFEST])
    assert manifest["run"]["id"] == run_body["run_id"] and manifest["business"] == str(
        sandbox.business_ids[0]
    )
    assert manifest["space"] == SPACE and manifest["mode"] == "history"
    assert manifest["run"]["counts"]["applied"] == run_body["applied"]
    assert set(manifest["run"]["counts_by_kind"]) >= {"connection", "transaction"}
    assert manifest["program"] and all(len(m["sha256"]) == 64 for m in manifest["program"].values())
    # Every event of the Space was applied by this one backfill; the chain holds each once, and its
    # deltas add up to the members' balances.
    engine = create_db_engine(db_url)
    try:
        assert manifest["ledger"]["entries"] == event_count(engine)
    finally:
        engine.dispose()
    entries = [line.split("\t") for line in members[pack.LEDGER].decode().splitlines()[1:-1]]
    ids = [json.loads(e[2])[0] for e in entries]
    assert len(ids) == len(set(ids)) == manifest["ledger"]["entries"]
    moved = sum(Decimal(json.loads(e[2])[1].get("points", "0")) for e in entries)
    assert moved == sum(sandbox.true_balances().values())
    assert members[pack.LEDGER].decode().splitlines()[-1] == f"head\t{manifest['ledger']['head']}\t{len(ids)}"
    # The reconcile and id map parts are what their own commands write.
    assert members[pack.RECONCILE].decode().startswith("customer_id,perkville_user_id")
    assert members[pack.RECONCILE].decode().count(",match") == len(sandbox.true_balances())
    idmap_csv = audit_env.parent / "idmap.csv"
    assert run(capsys, audit_env, "idmap", "--csv", str(idmap_csv))[0] == 0
    assert members[pack.IDMAP] == idmap_csv.read_bytes()
    sums = members[pack.CHECKSUMS].decode().splitlines()
    assert [line.split("  ")[1] for line in sums] == list(pack.PARTS)


def test_one_changed_byte_in_any_part_fails_naming_the_part(
    audit_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    public = _keygen(capsys, audit_env)
    _break(sandbox, 1)
    run_body = _backfill(capsys, audit_env)
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    assert all(_members(zip_file).values())  # every part has bytes to change
    for name in pack.MEMBERS:
        changed = dict(_members(zip_file))
        data = bytearray(changed[name])
        data[len(data) // 2] ^= 0x01
        changed[name] = bytes(data)
        tampered = _rezip(zip_file, changed, audit_env.parent / f"tampered-{name}.zip")
        code, err = _verify(capsys, audit_env, tampered, public)
        assert code == 1, name
        assert f"part {name}:" in err, err
        others = [m for m in pack.MEMBERS if m != name and f"part {m}:" in err]
        assert others == [], err
    # The same, one byte of the zip file itself inside each member's stored data.
    raw = zip_file.read_bytes()
    with zipfile.ZipFile(zip_file) as archive:
        infos = archive.infolist()
    for info in infos:
        header = raw[info.header_offset : info.header_offset + 30]
        start = (
            info.header_offset
            + 30
            + int.from_bytes(header[26:28], "little")
            + int.from_bytes(header[28:30], "little")
        )
        data = bytearray(raw)
        data[start + info.compress_size // 2] ^= 0x10
        flipped = audit_env.parent / f"flipped-{info.filename}.zip"
        flipped.write_bytes(bytes(data))
        code, err = _verify(capsys, audit_env, flipped, public)
        assert code == 1 and f"part {info.filename}:" in err, (info.filename, err)
    # A byte outside every part: a member's timestamp in its local header, a comment at the end.
    data = bytearray(raw)
    data[infos[1].header_offset + 10] ^= 0x01
    flipped = audit_env.parent / "flipped-header.zip"
    flipped.write_bytes(bytes(data))
    code, err = _verify(capsys, audit_env, flipped, public)
    assert code == 1 and "part zip:" in err, err
    flipped.write_bytes(raw[:-2] + b"\x01\x00x")  # the end record's comment length, then the comment
    code, err = _verify(capsys, audit_env, flipped, public)
    assert code == 1 and "part zip:" in err, err


def test_the_dead_letters_of_the_run_are_in_the_pack(
    audit_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    public = _keygen(capsys, audit_env)
    broken = _break(sandbox, 2)
    run_body = _backfill(capsys, audit_env)
    assert run_body["dead_lettered"] == 2
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    letters = [json.loads(line) for line in _members(zip_file)[pack.DEAD_LETTERS].decode().splitlines()]
    assert sorted(letter["record_id"] for letter in letters) == sorted(broken)
    assert {letter["run_id"] for letter in letters} == {run_body["run_id"]}
    assert all(letter["status"] == "open" and letter["reason"] and letter["raw"] for letter in letters)
    manifest = json.loads(_members(zip_file)[pack.MANIFEST])
    assert manifest["run"]["counts"]["dead_lettered"] == 2
    assert _verify(capsys, audit_env, zip_file, public, "--against-db")[0] == 0


def test_the_dead_letters_raw_records_are_redacted_in_the_pack(
    audit_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox, db_url: str
) -> None:
    from bridge.state import StateStore

    _keygen(capsys, audit_env)
    (victim,) = _break(sandbox, 1)
    run_body = _backfill(capsys, audit_env)
    secret = sandbox.credentials["password"]
    engine = create_db_engine(db_url)
    try:
        state = StateStore(engine)
        (letter,) = state.dead_letters.list(str(sandbox.business_ids[0]), status=None, run_id=run_body["run_id"])
        with engine.begin() as conn:  # a record as a source might send it: a token field, a secret in a note
            state.dead_letters.put(
                conn, business=letter.business, kind=letter.kind, record_id=letter.record_id,
                raw={**letter.raw, "api_token": "tok-0123456789", "note": f"staff pw {secret}"},
                reason=letter.reason, detail=letter.detail, run_id=letter.run_id,
            )
    finally:
        engine.dispose()
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    (line,) = _members(zip_file)[pack.DEAD_LETTERS].decode().splitlines()
    packed = json.loads(line)
    assert packed["record_id"] == victim
    assert packed["raw"]["api_token"] == "***" and packed["raw"]["note"] == "staff pw ***"
    assert packed["raw"]["classification"] == "MYSTERY"  # the evidence itself is kept
    assert "tok-0123456789" not in line and secret not in line


def test_against_db_names_the_ledger_when_the_database_changed(
    audit_env: Path, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    from perkamo_core.storage import ledger

    public = _keygen(capsys, audit_env)
    run_body = _backfill(capsys, audit_env)
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            row_id = conn.execute(select(ledger.c.id).order_by(ledger.c.id.desc()).limit(1)).scalar()
            conn.execute(update(ledger).where(ledger.c.id == row_id).values(amount=Decimal("123456")))
    finally:
        engine.dispose()
    assert _verify(capsys, audit_env, zip_file, public)[0] == 0  # the pack itself is intact
    code, err = _verify(capsys, audit_env, zip_file, public, "--against-db")
    assert code == 1 and "part ledger.sha256:" in err and "database" in err, err


def test_the_pack_holds_no_secret(
    audit_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox, db_url: str
) -> None:
    _keygen(capsys, audit_env)
    run_body = _backfill(capsys, audit_env)
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    secrets = _secrets(sandbox, db_url)
    assert len(secrets) >= 4 and all(len(s) >= 6 for s in secrets)
    raw = zip_file.read_bytes()
    members = _members(zip_file)
    key_text = (audit_env.parent / "keys" / "audit.pem").read_text()
    for secret in [*secrets, str(audit_env.parent / "keys" / "audit.pem")]:
        assert secret.encode() not in raw
        for name, data in members.items():
            assert secret.encode() not in data, name
    body = "".join(line for line in key_text.splitlines() if "-----" not in line)
    assert all(body.encode() not in data for data in members.values())
    settings = json.loads(members[pack.MANIFEST])["settings"]
    assert settings["perkville_client_secret"] == "**********"
    assert settings["audit"] == {"private_key_path": "set"}


def test_two_exports_are_identical_but_for_the_export_time(
    audit_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    public = _keygen(capsys, audit_env)
    run_body = _backfill(capsys, audit_env)
    first = _members(_export(capsys, audit_env, run_body["run_id"], "a.zip"))
    second = _members(_export(capsys, audit_env, run_body["run_id"], "b.zip"))
    for name in (pack.RECONCILE, pack.IDMAP, pack.DEAD_LETTERS, pack.LEDGER):
        assert first[name] == second[name], name
    one, two = json.loads(first[pack.MANIFEST]), json.loads(second[pack.MANIFEST])
    assert one.pop("exported_at") != two.pop("exported_at")
    assert one == two
    assert _verify(capsys, audit_env, audit_env.parent / "b.zip", public)[0] == 0
    # With the same export time the whole file is the same, byte for byte.
    import bridge.cli.audit_cmd as audit_cmd

    at = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
    monkeypatch.setattr(audit_cmd, "_now", lambda: at)
    same = [_export(capsys, audit_env, run_body["run_id"], name).read_bytes() for name in ("c.zip", "d.zip")]
    assert same[0] == same[1]
    assert json.loads(_members(audit_env.parent / "c.zip")[pack.MANIFEST])["exported_at"] == at.isoformat()


def test_a_later_run_chains_only_what_it_applied(
    audit_env: Path, capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    public = _keygen(capsys, audit_env)
    backfill = _backfill(capsys, audit_env)
    member = next(iter(sandbox.ledger.connections.values()))
    perk = next(p for p in sandbox.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    sandbox.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=2)
    code, sync, err = run(capsys, audit_env, "sync", "--json")
    assert code == 0, err
    zip_file = _export(capsys, audit_env, sync["run_id"], "sync.zip")
    lines = _members(zip_file)[pack.LEDGER].decode().splitlines()
    (entry,) = lines[1:-1]
    transaction_id, deltas = json.loads(entry.split("\t")[2])
    assert (
        transaction_id.startswith(f"perkville:{sandbox.business_ids[0]}:") and Decimal(deltas["points"]) > 0
    )
    assert _verify(capsys, audit_env, zip_file, public, "--against-db")[0] == 0
    assert backfill["run_id"] != sync["run_id"]


def test_operator_errors(
    audit_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    public = _keygen(capsys, audit_env)
    code, _, err = run(capsys, audit_env, "audit", "keygen", "--public", str(public))
    assert code == 2 and "already exists" in err and "audit.pem" not in err
    code, _, err = run(
        capsys, audit_env, "audit", "export", "--run", "99", "--out", str(audit_env.parent / "x.zip")
    )
    assert code == 2 and "no run 99" in err
    run_body = _backfill(capsys, audit_env)
    zip_file = _export(capsys, audit_env, run_body["run_id"], "run.zip")
    # Another signer's key: the signature is what does not verify.
    other = audit_env.parent / "keys" / "other.pub"
    monkeypatch.setenv("PERKBRIDGE_AUDIT_KEY", str(audit_env.parent / "keys" / "other.pem"))
    assert run(capsys, audit_env, "audit", "keygen", "--public", str(other))[0] == 0
    code, err = _verify(capsys, audit_env, zip_file, other)
    assert code == 1 and "part SIGNATURE:" in err
    # A key file that is missing: exit 3 naming the setting, never the path.
    monkeypatch.setenv("PERKBRIDGE_AUDIT_KEY", str(audit_env.parent / "keys" / "missing.pem"))
    code, err = _export_code(capsys, audit_env, run_body["run_id"], audit_env.parent / "y.zip")
    assert code == 3 and "private_key_path" in err and "missing.pem" not in err
    assert not (audit_env.parent / "y.zip").exists()
    monkeypatch.delenv("PERKBRIDGE_AUDIT_KEY")
    code, err = _export_code(capsys, audit_env, run_body["run_id"], audit_env.parent / "y.zip")
    assert code == 3 and "no audit signing key" in err
    monkeypatch.setenv("PERKBRIDGE_AUDIT_KEY", str(audit_env.parent / "keys" / "audit.pem"))
    for out in (audit_env.parent / "no-such-folder" / "z.zip", audit_env.parent):
        code, err = _export_code(capsys, audit_env, run_body["run_id"], out)
        assert code == 2 and err.count("\n") == 1, err
        assert "does not exist" in err or "is a directory" in err, err
    code, err = _verify(capsys, audit_env, audit_env.parent / "nothing.zip", public)
    assert code == 1 and "part zip:" in err
    not_zip = audit_env.parent / "not.zip"
    not_zip.write_bytes(b"hello")
    assert _verify(capsys, audit_env, not_zip, public)[0] == 1


def test_settings_without_secrets_hides_the_database_password() -> None:
    from config.settings import load_settings

    settings = load_settings(
        environ={
            "PERKBRIDGE_DATABASE_URL": "postgresql://bridge:s3cret-db-pass@db.internal:5432/pb",
            "PERKVILLE_CLIENT_SECRET": "client-secret-value",
            "PERKBRIDGE_AUDIT_KEY": "/srv/keys/audit.pem",
        }
    )
    body = pack.settings_without_secrets(settings, ["s3cret-db-pass", "client-secret-value"])
    text = json.dumps(body)
    assert "s3cret-db-pass" not in text and "client-secret-value" not in text and "audit.pem" not in text
    assert body["database_url"].startswith("postgresql://bridge:***@db.internal:5432/pb")


def test_a_page_rolled_back_by_a_conflict_is_linked_to_its_run_once(bridge: Bridge) -> None:
    """The run → events link commits with the page: a page sent again after a rollback is in it once."""
    from bridge.pipeline import RunOptions
    from tests.bridge.test_targets_conflict import CollidingService, _pipeline

    service = CollidingService(bridge.service, {1, 3})
    summary = _pipeline(bridge, service).run(RunOptions(kind="backfill"))
    assert summary.status == "succeeded"
    applied = [e.transaction_id for e in bridge.state.run_events.of_run(summary.run_id)]
    assert len(applied) == len(set(applied)) == event_count(bridge.engine)
    assert bridge.state.run_events.spaces(summary.run_id) == [SPACE]
    again = bridge.backfill("history", force=True)  # everything is a duplicate now: nothing linked
    assert list(bridge.state.run_events.of_run(again.run_id)) == []
