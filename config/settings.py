"""The settings model: environment variables (ARCHITECTURE §5) over an optional TOML file.

Settings are read once, at the CLI edge, and passed down as plain constructor arguments; no
library code reads the environment.  Secrets are ``SecretStr`` so that they never print.

Precedence, highest first: environment variables, then the TOML file given with ``--config``,
then the defaults below.  The TOML file may use the environment names (``PERKVILLE_API_URL``)
or their lower-case form at top level, plus the nested tables ``[writeback]``, ``[sync]``,
``[perkville]``, ``[schedule]``, ``[serve]`` and ``[tiers]``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid; the message names the key."""


class WritebackSettings(BaseModel):
    """Perkamo → Perkville write-back during a dual run."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    event_perks: dict[str, int] = Field(default_factory=dict)
    """Perkamo event key → Perkville perk id used to award it."""
    external_members: bool = False
    batch_size: int = Field(default=100, ge=1, le=1000)


class SyncSettings(BaseModel):
    """How Perkville records become Perkamo customers and events."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["history", "balance"] = "history"
    id_strategy: Literal["perkville_user", "external_member", "email"] = "perkville_user"
    lookback_days: int = Field(default=45, ge=0)
    cursor_overlap_seconds: int = Field(default=300, ge=0)
    trait_allow: list[str] | None = None
    trait_deny: list[str] = Field(default_factory=list)
    remote_batch_size: int = Field(default=100, ge=1, le=100)


class PerkvilleTuning(BaseModel):
    """Connector tuning: paging, pacing and the retry budget."""

    model_config = ConfigDict(extra="forbid")

    page_size: int = Field(default=1000, ge=1, le=1000)
    requests_per_second: float = Field(default=10.0, gt=0)
    """The ceiling of the adaptive request budget: never exceeded."""
    max_in_flight: int = Field(default=4, ge=1, le=16)
    """Requests of one list in flight at once (1: one page at a time)."""
    max_retries: int = Field(default=6, ge=0)
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    scope: str | None = None
    external_member_field: str = Field(default="external_member_id", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The award body's field naming the customer by the external system's member id, used by
    write-back when ``[sync] id_strategy = "external_member"`` (Perkville's name for it is unknown)."""


class ScheduleSettings(BaseModel):
    """Job timing for ``perkbridge schedule``."""

    model_config = ConfigDict(extra="forbid")

    sync_interval_minutes: float = Field(default=15, gt=0)
    writeback_interval_seconds: float = Field(default=60, gt=0)
    reconcile_cron: str = "0 3 * * *"
    reconcile_repair: bool = True
    """The nightly reconcile syncs first, then adjusts what still differs (False: report only)."""
    misfire_grace_seconds: int = Field(default=300, ge=1)
    lease_seconds: int = Field(default=120, ge=5)
    businesses: list[str] = Field(default_factory=list)
    # ``perkbridge worker`` (PostgreSQL): docs/scheduling.md, "Workers".
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    """Jobs one worker process runs at once (each in a thread)."""
    worker_heartbeat_seconds: float = Field(default=10, gt=0)
    """How often a worker tells the queue it is alive."""
    stalled_after_seconds: float = Field(default=60, gt=0)
    """A running job whose worker sent no heartbeat for this long is retried on another worker."""
    job_max_attempts: int = Field(default=5, ge=1)
    """Attempts of a job that failed for a transient reason (Perkville or Perkamo unavailable)."""
    job_retry_seconds: int = Field(default=4, ge=1)
    """Backoff base: the n-th retry waits ``job_retry_seconds ** n`` seconds."""
    job_history_hours: int = Field(default=48, ge=1)
    """Succeeded jobs stay in the queue's table this long (failed ones until retried or deleted)."""


class ServeSettings(BaseModel):
    """The local Perkamo v1 API (``perkbridge serve``)."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    require_signatures: bool = False
    # GET /metrics (Prometheus text format: see docs/operations.md, "Monitoring").
    metrics: bool = True
    # /dashboard, the operator's pages (docs/operations.md, "Dashboard").
    dashboard: bool = True
    session_minutes: int = Field(default=480, ge=5, le=7 * 24 * 60)
    """How long a dashboard sign-in lasts."""


class AuditSettings(BaseModel):
    """Signed audit packs (``perkbridge audit``)."""

    model_config = ConfigDict(extra="forbid")

    private_key_path: str | None = None
    """The Ed25519 private key (PEM) that signs packs (env ``PERKBRIDGE_AUDIT_KEY``); never logged."""


_SECTIONS = ("writeback", "sync", "perkville", "schedule", "serve", "audit", "tiers")


class Settings(BaseSettings):
    """Every setting of perkbridge; names follow the external contract (ARCHITECTURE §5)."""

    model_config = SettingsConfigDict(
        extra="ignore", case_sensitive=False, populate_by_name=True, env_nested_delimiter="__"
    )

    database_url: str = Field(
        default="sqlite:///perkbridge.db",
        validation_alias=AliasChoices("PERKBRIDGE_DATABASE_URL", "database_url"),
    )
    perkville_api_url: str = Field(
        default="https://api.perkville.com/v2/",
        validation_alias=AliasChoices("PERKVILLE_API_URL", "perkville_api_url"),
    )
    perkville_token_url: str = Field(
        default="https://www.perkville.com/api/token/",
        validation_alias=AliasChoices("PERKVILLE_TOKEN_URL", "perkville_token_url"),
    )
    perkville_client_id: str | None = Field(
        default=None, validation_alias=AliasChoices("PERKVILLE_CLIENT_ID", "perkville_client_id")
    )
    perkville_client_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PERKVILLE_CLIENT_SECRET", "perkville_client_secret"),
    )
    perkville_username: str | None = Field(
        default=None, validation_alias=AliasChoices("PERKVILLE_USERNAME", "perkville_username")
    )
    perkville_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PERKVILLE_PASSWORD", "perkville_password")
    )
    perkville_access_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PERKVILLE_ACCESS_TOKEN", "perkville_access_token"),
    )
    perkville_business_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PERKVILLE_BUSINESS_ID", "perkville_business_id"),
    )
    perkville_timezone: str = Field(
        default="UTC", validation_alias=AliasChoices("PERKVILLE_TIMEZONE", "perkville_timezone")
    )
    perkamo_target: Literal["embedded", "remote"] = Field(
        default="embedded", validation_alias=AliasChoices("PERKAMO_TARGET", "perkamo_target")
    )
    perkamo_space: str = Field(
        default="default", validation_alias=AliasChoices("PERKAMO_SPACE", "perkamo_space")
    )
    perkamo_base_url: str = Field(
        default="https://api.perkamo.com",
        validation_alias=AliasChoices("PERKAMO_BASE_URL", "perkamo_base_url"),
    )
    perkamo_secret_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PERKAMO_SECRET_KEY", "perkamo_secret_key"),
    )
    dashboard_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PERKBRIDGE_DASHBOARD_SECRET", "dashboard_secret"),
    )
    """Signs dashboard sessions; set the same value on every ``serve`` process behind one address
    (unset: a random secret per process, so a sign-in holds only on the process that made it)."""
    log_format: Literal["auto", "plain", "json"] = Field(
        default="auto", validation_alias=AliasChoices("PERKBRIDGE_LOG_FORMAT", "log_format")
    )

    writeback: WritebackSettings = Field(default_factory=WritebackSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    perkville: PerkvilleTuning = Field(default_factory=PerkvilleTuning)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    tiers: dict[str, int] = Field(default_factory=dict)
    """``[tiers]``: Perkville level name → Perkamo level (1-based); empty = levels are not carried over."""

    @field_validator("tiers", mode="before")
    @classmethod
    def _tier_levels(cls, value: Any) -> Any:
        # A level is a whole number 1–100 (``true`` or ``2.5`` would otherwise pass as 1 or fail late).
        if isinstance(value, Mapping):
            for name, level in value.items():
                if not str(name).strip():
                    raise ValueError("a Perkville level name is empty")
                if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 100:
                    raise ValueError(f"{name!r} = {level!r}: a Perkamo level is a whole number from 1 to 100")
        return value

    @field_validator("perkville_api_url", "perkville_token_url", "perkamo_base_url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        # A URL that cannot be requested is configuration, found now, not after a retry budget.
        from urllib.parse import urlsplit

        example = Settings.model_fields[str(info.field_name)].default
        try:
            parts = urlsplit(value.strip())
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"must be an http(s) URL with a host, such as {example}")
        return value.strip()

    def timezone_info(self) -> Any:
        """The ``ZoneInfo`` of ``PERKVILLE_TIMEZONE``."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.perkville_timezone)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the path of a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable; check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _unknown_section(name: str, config_file: str | Path) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), _SECTIONS, n=1)
    hint = f" (did you mean [{close[0]}]?)" if close else ""
    return (
        f"config file {config_file}: unknown section [{name}]{hint}; "
        f"valid sections: {', '.join(f'[{s}]' for s in _SECTIONS)}"
    )


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested env settings that pydantic-settings would not map by itself."""
    overrides: dict[str, Any] = {}
    flag = environ.get("PERKBRIDGE_WRITEBACK_ENABLED")
    if flag is not None:
        overrides.setdefault("writeback", {})["enabled"] = flag.strip().lower() in {
            "1",
            "true",
            "yes",
            "on",
        }
    audit_key = environ.get("PERKBRIDGE_AUDIT_KEY")
    if audit_key:
        overrides.setdefault("audit", {})["private_key_path"] = audit_key
    return overrides


def load_settings(
    config_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the settings once: defaults, then the TOML file, then the environment.

    Raises ``ConfigError`` naming the offending key; the message never contains a value of a
    secret setting.
    """
    env = dict(os.environ if environ is None else environ)
    file_values: dict[str, Any] = {}
    if config_file is not None:
        raw = _read_toml(Path(config_file))
        for key, value in raw.items():
            lowered = key.lower()
            if isinstance(value, dict) and lowered not in _SECTIONS:
                raise ConfigError(_unknown_section(key, config_file))
            file_values[lowered if lowered in _SECTIONS else key.upper()] = value
    env_values = {key.upper(): value for key, value in env.items()}
    merged: dict[str, Any] = dict(file_values)
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            env_name = str(alias.choices[0])
            if env_name in env_values:
                merged[env_name] = env_values[env_name]
    for section, values in _env_overrides(env_values).items():
        merged[section] = {**dict(merged.get(section) or {}), **values}
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
