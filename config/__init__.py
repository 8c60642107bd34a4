"""Settings model and loader for perkbridge, plus the program files shipped as package data."""

from config.settings import (
    ConfigError,
    PerkvilleTuning,
    ScheduleSettings,
    ServeSettings,
    Settings,
    SyncSettings,
    WritebackSettings,
    load_settings,
)

__all__ = [
    "ConfigError",
    "PerkvilleTuning",
    "ScheduleSettings",
    "ServeSettings",
    "Settings",
    "SyncSettings",
    "WritebackSettings",
    "load_settings",
]
