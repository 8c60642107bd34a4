"""Local days, ISO weeks and the period keys of rule limits and streaks."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta, tzinfo

from perkamo_core.engine.plans import _RulePlan


def _local_day(moment: datetime, tz: tzinfo) -> date:
    return moment.astimezone(tz).date()


def _week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _period_start(day: date, period: str) -> date:
    return day - timedelta(days=day.weekday()) if period == "week" else day


def period_label(start: date, period: str) -> str:
    """`2026-06-01` for a day, `2026-W22` for the week starting on that Monday."""
    return _week_label(start) if period == "week" else start.isoformat()


def _day_key(rule_id: str, day: date) -> str:
    return f"{rule_id}|d|{day.isoformat()}"


def _week_key(rule_id: str, day: date) -> str:
    return f"{rule_id}|w|{_week_label(day)}"


def _life_key(rule_id: str) -> str:
    return f"{rule_id}|life"


def _limit_keys(rp: _RulePlan, day: date | None) -> list[tuple[str, int, str]]:
    """(limit name, limit, counter key) for each counted limit of a rule; `day` is set when needed."""
    out: list[tuple[str, int, str]] = []
    if rp.per_day is not None and day is not None:
        out.append(("per_day", rp.per_day, _day_key(rp.rule_id, day)))
    if rp.per_week is not None and day is not None:
        out.append(("per_week", rp.per_week, _week_key(rp.rule_id, day)))
    if rp.lifetime is not None:
        out.append(("lifetime", rp.lifetime, _life_key(rp.rule_id)))
    return out


def _window_days(day: date, window: int) -> Iterable[date]:
    for i in range(window):
        yield day - timedelta(days=i)
