"""Trigger construction from settings, asked for their next fire times without running anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bridge.scheduler import (
    build_triggers,
    job_id,
    next_fire_times,
    parse_job_id,
)
from bridge.wiring import scheduled_businesses
from config import ConfigError, load_settings

NOW = datetime(2026, 3, 7, 12, 0, 30, tzinfo=UTC)


def _settings(**schedule: object) -> object:
    env = {"PERKVILLE_BUSINESS_ID": "77"}
    extra = schedule.pop("env", {})
    env.update(extra)  # type: ignore[arg-type]
    writeback = schedule.pop("writeback", False)
    tz = schedule.pop("tz", "UTC")
    from config import Settings

    return Settings.model_validate(
        {
            **{k.upper(): v for k, v in env.items()},
            "PERKVILLE_TIMEZONE": tz,
            "schedule": schedule,
            "writeback": {"enabled": writeback},
        }
    )


def test_default_jobs_for_the_env_business() -> None:
    triggers = build_triggers(_settings(), start=NOW)  # type: ignore[arg-type]
    assert sorted(triggers) == ["perkbridge:reconcile:77", "perkbridge:sync:77"]
    sync = next_fire_times(triggers["perkbridge:sync:77"], NOW, 3)
    assert sync == [NOW, NOW + timedelta(minutes=15), NOW + timedelta(minutes=30)]
    nightly = next_fire_times(triggers["perkbridge:reconcile:77"], NOW, 2)
    assert nightly == [
        datetime(2026, 3, 8, 3, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 3, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("schedule", "expected_ids"),
    [
        (
            {"businesses": ["a", "b"], "writeback": True},
            [
                "perkbridge:reconcile:a",
                "perkbridge:reconcile:b",
                "perkbridge:sync:a",
                "perkbridge:sync:b",
                "perkbridge:writeback:a",
                "perkbridge:writeback:b",
            ],
        ),
        ({"businesses": ["a", " a ", "b"]}, ["perkbridge:reconcile:a", "perkbridge:reconcile:b",
                                             "perkbridge:sync:a", "perkbridge:sync:b"]),
        ({"writeback": False}, ["perkbridge:reconcile:77", "perkbridge:sync:77"]),
    ],
    ids=["two-businesses-with-writeback", "duplicates-collapse", "writeback-disabled"],
)
def test_job_set(schedule: dict[str, object], expected_ids: list[str]) -> None:
    assert sorted(build_triggers(_settings(**schedule), start=NOW)) == expected_ids  # type: ignore[arg-type]


def test_intervals_and_cron_come_from_settings() -> None:
    settings = _settings(
        sync_interval_minutes=5,
        writeback_interval_seconds=20,
        reconcile_cron="30 2 * * 1",
        writeback=True,
        tz="America/New_York",
    )
    triggers = build_triggers(settings, start=NOW)  # type: ignore[arg-type]
    assert next_fire_times(triggers[job_id("sync", "77")], NOW + timedelta(seconds=1), 2) == [
        NOW + timedelta(minutes=5),
        NOW + timedelta(minutes=10),
    ]
    assert next_fire_times(triggers[job_id("writeback", "77")], NOW, 3) == [
        NOW,
        NOW + timedelta(seconds=20),
        NOW + timedelta(seconds=40),
    ]
    # Mondays 02:30 in the business's zone (DST starts 2026-03-08 in New York).
    ny = ZoneInfo("America/New_York")
    fires = next_fire_times(triggers[job_id("reconcile", "77")], NOW, 2)
    assert [f.astimezone(ny).replace(tzinfo=None) for f in fires] == [
        datetime(2026, 3, 9, 2, 30),
        datetime(2026, 3, 16, 2, 30),
    ]
    assert fires[0].utcoffset() is not None


def test_without_start_the_interval_starts_one_interval_from_now() -> None:
    trigger = build_triggers(_settings(sync_interval_minutes=1))[job_id("sync", "77")]  # type: ignore[arg-type]
    now = datetime.now(UTC)
    first = next_fire_times(trigger, now, 1)[0]
    assert now < first <= now + timedelta(minutes=1, seconds=5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"schedule": {"reconcile_cron": "every night"}}, "reconcile_cron"),
        ({"schedule": {"reconcile_cron": "0 25 * * *"}}, "reconcile_cron"),
    ],
    ids=["words", "hour-out-of-range"],
)
def test_bad_cron_is_a_config_error(settings: dict[str, object], message: str) -> None:
    loaded = load_settings(environ={"PERKVILLE_BUSINESS_ID": "1"})
    loaded = loaded.model_copy(
        update={"schedule": loaded.schedule.model_copy(update=settings["schedule"])}  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match=message):
        build_triggers(loaded)


def test_no_business_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PERKVILLE_BUSINESS_ID"):
        scheduled_businesses(load_settings(environ={}))


def test_config_businesses_win_over_the_env_business(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "perkbridge.toml"
    path.write_text('[schedule]\nbusinesses = ["10", "11"]\n', encoding="utf-8")
    settings = load_settings(path, environ={"PERKVILLE_BUSINESS_ID": "9"})
    assert scheduled_businesses(settings) == ["10", "11"]


@pytest.mark.parametrize(
    "value",
    ["perkbridge:sync:1", "perkbridge:writeback:a:b", "perkbridge:reconcile:x"],
    ids=["plain", "colon-in-business", "reconcile"],
)
def test_job_id_round_trip(value: str) -> None:
    kind, business = parse_job_id(value)
    assert job_id(kind, business) == value


@pytest.mark.parametrize("value", ["other:sync:1", "perkbridge:nap:1", "perkbridge:sync:"],
                         ids=["prefix", "kind", "empty-business"])
def test_foreign_job_ids_are_rejected(value: str) -> None:
    with pytest.raises(ValueError):
        parse_job_id(value)


@pytest.mark.parametrize(
    ("field", "weekdays"),
    [
        ("*", {0, 1, 2, 3, 4, 5, 6}),
        ("1", {0}),
        ("0", {6}),
        ("7", {6}),
        ("1-5", {0, 1, 2, 3, 4}),
        ("5-7", {4, 5, 6}),
        ("sat,sun", {5, 6}),
        ("*/2", {6, 1, 3, 5}),
        ("1,3-4", {0, 2, 3}),
    ],
    ids=["any", "monday", "sunday-0", "sunday-7", "weekdays", "fri-to-sun", "names", "step", "mixed"],
)
def test_day_of_week_keeps_crontab_meaning(field: str, weekdays: set[int]) -> None:
    """Crontab numbers Sunday 0 (or 7); APScheduler 3.x numbers Monday 0 — the cron means crontab."""
    trigger = build_triggers(_settings(reconcile_cron=f"0 3 * * {field}"), start=NOW)[  # type: ignore[arg-type]
        job_id("reconcile", "77")
    ]
    fires = next_fire_times(trigger, NOW, 14)
    assert {f.weekday() for f in fires} == weekdays
    assert all((f.hour, f.minute) == (3, 0) for f in fires)
