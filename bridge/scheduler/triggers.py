"""Job ids and triggers of ``perkbridge schedule`` (pure: settings and times in, values out)."""


from __future__ import annotations

from datetime import UTC, datetime

# APScheduler 3.x ships no type information (import-untyped).
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge.state.jobs import job_id
from bridge.wiring import scheduled_businesses
from config import ConfigError, Settings

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field_text: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3.x day names.

    APScheduler 3.x numbers days from Monday = 0, so ``from_crontab("0 3 * * 1")`` would run on
    Tuesdays; expanding the field to names keeps the standard crontab meaning.
    """
    if field_text == "*":
        return "*"
    days: set[int] = set()
    for part in field_text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            low, high = 0, 6
        elif "-" in body:
            low_text, high_text = body.split("-", 1)
            low, high = _day_number(low_text), _day_number(high_text)
            if high == 0 and low > 0:
                high = 7
        else:
            low = high = _day_number(body)
            if step_text:
                high = 6
        if step < 1 or low > high:
            raise ValueError(f"bad day-of-week {part!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _day_number(text: str) -> int:
    if text in _DAY_NAMES:
        return _DAY_NAMES.index(text)
    value = int(text)
    if not 0 <= value <= 7:
        raise ValueError(f"day-of-week {value} out of range 0-7")
    return value


def reconcile_trigger(settings: Settings) -> CronTrigger:
    """The nightly reconcile cron, read in ``PERKVILLE_TIMEZONE`` (the business's local night)."""
    expression = settings.schedule.reconcile_cron
    try:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
        minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_crontab_days(day_of_week),
            timezone=settings.timezone_info(),
        )
    except ValueError as exc:
        raise ConfigError(
            f"schedule.reconcile_cron {expression!r} is not a valid 5-field crontab "
            f"expression: {exc}"
        ) from None


def build_triggers(
    settings: Settings, *, start: datetime | None = None
) -> dict[str, BaseTrigger]:
    """Every job id of the configured businesses → its trigger; touches nothing.

    ``start`` anchors the interval triggers (default: APScheduler's "now + one interval"), so a
    test can ask each trigger for its next fire times deterministically.
    """
    schedule = settings.schedule
    anchor = start.astimezone(UTC) if start is not None else None
    triggers: dict[str, BaseTrigger] = {}
    for business_id in scheduled_businesses(settings):
        triggers[job_id("sync", business_id)] = IntervalTrigger(
            seconds=schedule.sync_interval_minutes * 60, start_date=anchor, timezone=UTC
        )
        if settings.writeback.enabled:
            triggers[job_id("writeback", business_id)] = IntervalTrigger(
                seconds=schedule.writeback_interval_seconds, start_date=anchor, timezone=UTC
            )
        triggers[job_id("reconcile", business_id)] = reconcile_trigger(settings)
    return triggers


def next_fire_times(trigger: BaseTrigger, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times of ``trigger`` after ``now`` (pure; for tests and status)."""
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        current = fire
    return times


