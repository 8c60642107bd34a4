"""Wiring of the write settings: the id strategy reaches write-back, the external-member field the client."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.wiring import perkville_client, writeback_config
from config.settings import load_settings

CREDENTIALS = {
    "PERKVILLE_CLIENT_ID": "id",
    "PERKVILLE_CLIENT_SECRET": "secret-value-123",
    "PERKVILLE_USERNAME": "staff@example.com",
    "PERKVILLE_PASSWORD": "password-value-456",
}


def test_external_member_strategy_and_field_reach_write_back_and_the_client(tmp_path: Path) -> None:
    settings = load_settings(
        _write(
            tmp_path,
            '[sync]\nid_strategy = "external_member"\n[perkville]\nexternal_member_field = "member_ref"\n',
        ),
        environ=CREDENTIALS,
    )
    assert writeback_config(settings, "25").id_strategy == "external_member"
    with perkville_client(settings) as client:
        assert client.external_member_field == "member_ref"


def test_a_field_name_the_award_already_uses_is_a_configuration_error(tmp_path: Path) -> None:
    path = _write(tmp_path, '[perkville]\nexternal_member_field = "user"\n')
    settings = load_settings(path, environ=CREDENTIALS)
    with pytest.raises(ConfigurationError, match="external_member_field 'user' is already a field"):
        perkville_client(settings)


def _write(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "perkbridge.toml"
    path.write_text(toml, encoding="utf-8")
    return path
