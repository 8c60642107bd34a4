"""Program files shipped as package data, starting with the Perkville migration program."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["MIGRATION_PROGRAM", "load_migration_program"]

MIGRATION_PROGRAM = "migration.json"


def load_migration_program() -> dict[str, Any]:
    """The shipped migration program: module name → module body (a fresh copy on every call).

    It turns the ``perkville.*`` events of ``mapping`` into movements of the wallet ``points``
    (``allow_negative``, so a replay never clamps) and reproduces Perkville's ``point_balance``.
    """
    text = resources.files(__name__).joinpath(MIGRATION_PROGRAM).read_text(encoding="utf-8")
    program: dict[str, Any] = json.loads(text)
    return program
