"""The settings loader honours the contract names, the TOML file and env precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings


def test_defaults_follow_the_contract() -> None:
    settings = load_settings(environ={})
    assert settings.database_url == "sqlite:///perkbridge.db"
    assert settings.perkville_api_url == "https://api.perkville.com/v2/"
    assert settings.perkville_token_url == "https://www.perkville.com/api/token/"
    assert settings.perkville_timezone == "UTC"
    assert settings.perkamo_target == "embedded"
    assert settings.perkamo_space == "default"
    assert settings.perkamo_base_url == "https://api.perkamo.com"
    assert settings.writeback.enabled is False


def test_environment_names_are_read() -> None:
    env = {
        "PERKBRIDGE_DATABASE_URL": "sqlite:///x.db",
        "PERKVILLE_CLIENT_ID": "cid",
        "PERKVILLE_CLIENT_SECRET": "very-secret",
        "PERKVILLE_USERNAME": "staff@example.com",
        "PERKVILLE_PASSWORD": "hunter2",
        "PERKVILLE_BUSINESS_ID": "42",
        "PERKVILLE_TIMEZONE": "Europe/Prague",
        "PERKAMO_TARGET": "remote",
        "PERKAMO_SECRET_KEY": "sk_test_abc",
        "PERKBRIDGE_WRITEBACK_ENABLED": "true",
    }
    settings = load_settings(environ=env)
    assert settings.database_url == "sqlite:///x.db"
    assert settings.perkville_client_secret is not None
    assert settings.perkville_client_secret.get_secret_value() == "very-secret"
    assert settings.perkville_business_id == "42"
    assert settings.perkamo_target == "remote"
    assert settings.writeback.enabled is True
    dumped = repr(settings) + str(settings.model_dump())
    for secret in ("very-secret", "hunter2", "sk_test_abc"):
        assert secret not in dumped


def test_toml_file_is_read_and_env_wins(tmp_path: Path) -> None:
    path = tmp_path / "perkbridge.toml"
    path.write_text(
        'PERKVILLE_BUSINESS_ID = "7"\n'
        'perkamo_space = "acme"\n'
        "[writeback]\n"
        "enabled = true\n"
        'event_perks = { "visit.checked_in" = 7788 }\n'
        "[sync]\n"
        'mode = "balance"\n',
        encoding="utf-8",
    )
    settings = load_settings(path, environ={"PERKAMO_SPACE": "from-env"})
    assert settings.perkville_business_id == "7"
    assert settings.perkamo_space == "from-env"
    assert settings.writeback.enabled is True
    assert settings.writeback.event_perks == {"visit.checked_in": 7788}
    assert settings.sync.mode == "balance"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param('PERKAMO_TARGET = "cloud"\n', "PERKAMO_TARGET", id="bad-literal"),
        pytest.param("[writeback]\nenabled = true\nbogus = 1\n", "bogus", id="unknown-key"),
        pytest.param("this is = = not toml", "not valid TOML", id="bad-toml"),
        pytest.param(
            '[perkville]\nexternal_member_field = "a b"\n', "external_member_field", id="bad-field-name"
        ),
        pytest.param('[sync]\nid_strategy = "pos"\n', "id_strategy", id="bad-id-strategy"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        load_settings(path, environ={})


def test_external_member_awards_are_configured_in_two_places(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(
        '[sync]\nid_strategy = "external_member"\n[perkville]\nexternal_member_field = "member_ref"\n'
    )
    settings = load_settings(path, environ={})
    assert settings.sync.id_strategy == "external_member"
    assert settings.perkville.external_member_field == "member_ref"
    assert load_settings(None, environ={}).perkville.external_member_field == "external_member_id"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"PERKVILLE_PASSWORD": "hunter2", "PERKAMO_TARGET": "nope"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("section", "suggestion"),
    [
        pytest.param("writebak", "[writeback]", id="writebak"),
        pytest.param("perkvile", "[perkville]", id="perkvile"),
        pytest.param("nothing_alike", None, id="no-suggestion"),
    ],
)
def test_unknown_toml_section_is_named_with_the_valid_ones(
    tmp_path: Path, section: str, suggestion: str | None
) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(f"[{section}]\nenabled = true\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert f"unknown section [{section}]" in message
    assert "valid sections: [writeback], [sync], [perkville], [schedule], [serve], [audit]" in message
    assert "\n" not in message
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean {suggestion}?" in message


def test_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; give the path of a TOML file"):
        load_settings(tmp_path, environ={})


def test_config_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


@pytest.mark.parametrize("name", ["PERKVILLE_API_URL", "PERKVILLE_TOKEN_URL", "PERKAMO_BASE_URL"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("notaurl", id="no-scheme"),
        pytest.param("ftp://files.example/v2/", id="not-http"),
        pytest.param("https://", id="no-host"),
        pytest.param("http://host:port/", id="bad-port"),
    ],
)
def test_unusable_service_urls_are_configuration_errors(name: str, value: str) -> None:
    secret_query = "?token=s3cret-in-query"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: value + secret_query})
    message = str(info.value)
    assert f"{name}: must be an http(s) URL with a host, such as https://" in message
    assert "s3cret-in-query" not in message
    assert "Value error" not in message


def test_service_urls_over_http_and_https_are_accepted() -> None:
    settings = load_settings(
        environ={"PERKVILLE_API_URL": "http://127.0.0.1:8080/v2/", "PERKAMO_BASE_URL": "https://p.example"}
    )
    assert settings.perkville_api_url == "http://127.0.0.1:8080/v2/"
    assert settings.perkamo_base_url == "https://p.example"
