"""The customer read model: the views `customer_view` assembles, and the state they need."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from perkamo_core.engine.decimals import _CTX, _ZERO
from perkamo_core.engine.levels import compute_level, wallet_state
from perkamo_core.engine.periods import _local_day, _period_start, _window_days, period_label
from perkamo_core.engine.state import CustomerState, StateQuery, StreakState, _json_number
from perkamo_core.program import AchievementDef, Program


def plan_read_query(program: Program, now: datetime, tz: tzinfo) -> StateQuery:
    """What the customer read model needs (windowed achievement days ending at `now`, totals, streaks)."""
    today = _local_day(now, tz)
    totals: set[str] = set()
    days: dict[str, tuple[date, date]] = {}
    for ach in program.achievements.achievements:
        if ach.window_days:
            days[ach.key] = (today - timedelta(days=ach.window_days - 1), today)
        else:
            totals.add(ach.key)
    return StateQuery(
        achievement_totals=frozenset(totals),
        achievement_days=days,
        streaks=frozenset(program.streak_defs),
    )


def format_datetime(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, as the seed prints (`2026-06-01T10:00:00.000Z`)."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`perks`: `[{key, unlocked_at, metadata: {trigger}}]` in unlock order (perks stay unlocked)."""
    ordered = sorted(state.perks.values(), key=lambda p: (p.unlocked_at, p.key))
    return [
        {"key": p.key, "unlocked_at": format_datetime(p.unlocked_at), "metadata": {"trigger": dict(p.trigger)}}
        for p in ordered
    ]


def next_perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`next_perks`: locked perks `[{key, name, description}]` in configured order."""
    return [
        {"key": p.key, "name": p.name, "description": p.description}
        for p in program.perks.perks
        if p.key not in state.perks
    ]


def flags_view(program: Program, state: CustomerState) -> dict[str, dict[str, bool]]:
    """`flags`: `{levels: {level_N: true}, has_level_at_least: {level_1..N: true}, perks: {key: true}}`."""
    level = compute_level(program, state.balances, state.lifetime)
    levels: dict[str, bool] = {}
    at_least: dict[str, bool] = {}
    if level is not None:
        levels[f"level_{level.level}"] = True
        for n in range(1, level.level + 1):
            at_least[f"level_{n}"] = True
    perks = {p["key"]: True for p in perks_view(program, state)}
    return {"levels": levels, "has_level_at_least": at_least, "perks": perks}


def _achievement_progress(ach: AchievementDef, state: CustomerState, today: date) -> Decimal:
    if ach.window_days:
        buckets = state.achievement_days.get(ach.key) or {}
        total = _ZERO
        for d in _window_days(today, ach.window_days):
            v = buckets.get(d)
            if v is not None:
                total = _CTX.add(total, v)
        return total
    return state.achievement_totals.get(ach.key, _ZERO)


def achievements_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """`achievements`: `{completed: [key], in_progress: [{key, progress, target}], unlocked: [{key, name, unlocked_at}]}`.

    `completed` and `unlocked` list the same achievements in completion order (keys, and the
    detailed form); `in_progress` lists configured, not completed achievements with progress > 0.
    """
    today = _local_day(now, tz)
    done = sorted(state.achievements.items(), key=lambda kv: (kv[1], kv[0]))
    in_progress: list[dict[str, Any]] = []
    for ach in program.achievements.achievements:
        if ach.key in state.achievements:
            continue
        progress = _achievement_progress(ach, state, today)
        if progress > 0:
            in_progress.append({"key": ach.key, "progress": progress, "target": _json_number(ach.target)})
    return {
        "completed": [k for k, _ in done],
        "in_progress": in_progress,
        "unlocked": [
            {
                "key": k,
                "name": program.achievement_defs[k].name if k in program.achievement_defs else k,
                "unlocked_at": format_datetime(when),
            }
            for k, when in done
        ],
    }


def streaks_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> list[dict[str, Any]]:
    """`streaks`: `[{key, current, longest, last_period}]`; current reads 0 once the streak is broken at `now`."""
    today = _local_day(now, tz)
    out: list[dict[str, Any]] = []
    for sd in program.achievements.streaks:
        st = state.streaks.get(sd.key) or StreakState()
        current = st.current
        if st.last_period is not None:
            step = 7 if sd.period == "week" else 1
            gap = (_period_start(today, sd.period) - st.last_period).days // step
            if gap > 1 + sd.grace_periods:
                current = 0
        out.append(
            {
                "key": sd.key,
                "current": current,
                "longest": st.longest,
                "last_period": period_label(st.last_period, sd.period) if st.last_period else None,
            }
        )
    return out


def active_boosts(program: Program, now: datetime) -> list[dict[str, Any]]:
    """`active_boosts` at `now`: `[{key, name, multiplier, events, wallets, starts_at, ends_at}]`."""
    out: list[dict[str, Any]] = []
    for b in program.boosts.boosts:
        if (b.starts_at is not None and now < b.starts_at) or (b.ends_at is not None and now >= b.ends_at):
            continue
        out.append(
            {
                "key": b.key,
                "name": b.name,
                "multiplier": _json_number(b.multiplier),
                "events": list(b.events) if b.events is not None else None,
                "wallets": list(b.wallets) if b.wallets is not None else None,
                "starts_at": format_datetime(b.starts_at) if b.starts_at else None,
                "ends_at": format_datetime(b.ends_at) if b.ends_at else None,
            }
        )
    return out


def customer_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """The pure part of the customer read model, keys in the seed's order: wallets, level, perks,
    next_perks, achievements, flags, streaks, active_boosts (the service adds tenant, user_id,
    traits and events, and places `events` before `streaks`)."""
    level = compute_level(program, state.balances, state.lifetime)
    return {
        "wallets": wallet_state(program, state.balances),
        "level": level.to_json() if level is not None else None,
        "perks": perks_view(program, state),
        "next_perks": next_perks_view(program, state),
        "achievements": achievements_view(program, state, now, tz),
        "flags": flags_view(program, state),
        "streaks": streaks_view(program, state, now, tz),
        "active_boosts": active_boosts(program, now),
    }
