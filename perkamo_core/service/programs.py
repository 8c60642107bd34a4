"""Program versions of a Space: every upload of a module is a version, one active per module;
and the Space blueprint (``GET /v1/program``) built from the active ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select, update

from perkamo_core import engine as core_engine
from perkamo_core import storage as st
from perkamo_core.errors import ProgramValidationError, ValidationError
from perkamo_core.program import MODULE_NAMES, Program
from perkamo_core.service.store import CoreStore, Write
from perkamo_core.service.usage import read_usage
from perkamo_core.service.wire import jsonable, to_wire


class Programs:
    """Program module versions and the blueprint."""

    def __init__(self, store: CoreStore, write: Write) -> None:
        self._store = store
        self._write = write

    def load_program_module(
        self,
        space: str,
        module: str,
        body: Mapping[str, Any],
        *,
        version: str | None = None,
        active: bool = True,
    ) -> dict[str, Any]:
        """Store ``body`` as a new version of ``module`` (the active one unless ``active=False``)."""
        if module not in MODULE_NAMES:
            raise ProgramValidationError(
                f"unknown module {module!r}; expected one of {', '.join(MODULE_NAMES)}", path=module
            )

        def run(conn: Connection) -> dict[str, Any]:
            row = self._store.space(conn, space)
            # Validates the body and its references against the Space's other active modules.
            self._store.program(conn, row.id).with_module(module, body)
            return self._store_module(conn, row.id, module, body, version, active)

        return self._write(run)

    def load_program(
        self, space: str, modules: Mapping[str, Mapping[str, Any]], *, version: str | None = None
    ) -> None:
        """Store and activate several modules at once: all of them, or none when one is invalid."""
        if not isinstance(modules, Mapping) or not modules:
            raise ProgramValidationError("a program needs at least one module", path="")
        for name in modules:
            if name not in MODULE_NAMES:
                raise ProgramValidationError(
                    f"unknown module {name!r}; expected one of {', '.join(MODULE_NAMES)}", path=name
                )

        def run(conn: Connection) -> None:
            row = self._store.space(conn, space)
            merged = self._store.program(conn, row.id).to_modules()
            merged.update({k: dict(v) for k, v in modules.items()})
            Program.from_modules(merged)
            for name in MODULE_NAMES:
                if name in modules:
                    self._store_module(conn, row.id, name, modules[name], version, True)

        self._write(run)

    def _store_module(
        self, conn: Connection, space_id: int, module: str, body: Mapping[str, Any],
        version: str | None, active: bool,
    ) -> dict[str, Any]:
        pm = st.program_modules
        count = conn.execute(
            select(func.count()).select_from(pm).where(pm.c.space_id == space_id, pm.c.module == module)
        ).scalar_one()
        label = version if version else f"v{count + 1}"
        if len(label) > 128:
            raise ValidationError("version is longer than 128 characters", field="version")
        clash = conn.execute(
            select(pm.c.id).where(pm.c.space_id == space_id, pm.c.module == module, pm.c.version == label)
        ).first()
        if clash is not None:
            raise ValidationError(
                f"module {module!r} already has a version {label!r}; choose another", field="version"
            )
        now = self._store.now()
        if active:
            conn.execute(
                update(pm).where(pm.c.space_id == space_id, pm.c.module == module, pm.c.active.is_(True))
                .values(active=False)
            )
        conn.execute(pm.insert().values(
            space_id=space_id, module=module, version=label, body=dict(body), active=active,
            created_at=now,
        ))
        return {"module": module, "version": label, "active": active,
                "created_at": core_engine.format_datetime(now)}

    def active_modules(self, space: str) -> dict[str, dict[str, Any]]:
        """The active module bodies of ``space`` as uploaded, by module name."""
        pm = st.program_modules
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            rows = conn.execute(
                select(pm.c.module, pm.c.body)
                .where(pm.c.space_id == row.id, pm.c.active.is_(True))
            ).all()
        return {r.module: r.body for r in rows}

    def program_versions(self, space: str) -> list[dict[str, Any]]:
        """Every stored module version, oldest first: ``{module, version, active, created_at}``."""
        pm = st.program_modules
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            rows = conn.execute(
                select(pm.c.module, pm.c.version, pm.c.active, pm.c.created_at)
                .where(pm.c.space_id == row.id).order_by(pm.c.id)
            ).all()
        return [
            {"module": r.module, "version": r.version, "active": r.active,
             "created_at": core_engine.format_datetime(r.created_at)}
            for r in rows
        ]

    def program(self, space: str) -> dict[str, Any]:
        """The Space blueprint (``GET /v1/program``): active modules merged into one view."""
        pm = st.program_modules
        with self._store.read() as conn:
            row = self._store.space(conn, space)
            program = self._store.program(conn, row.id)
            versions = conn.execute(
                select(pm.c.module, pm.c.version, pm.c.created_at)
                .where(pm.c.space_id == row.id, pm.c.active.is_(True))
            ).all()
            customers = conn.execute(
                select(func.count(), func.coalesce(func.sum(st.customers.c.event_count), 0))
                .where(st.customers.c.space_id == row.id)
            ).one()
            usage = read_usage(self._store, conn, row)
        modules = program.to_modules()
        earning = []
        for rule in program.events.rules:
            item = rule.model_dump(mode="python", exclude_none=True)
            earning.append(item)
        blueprint = {
            "wallets": [w.model_dump(mode="python", exclude_none=True)
                        for w in program.wallet_defs.values()],
            "earningRules": earning,
            "leveling": modules.get("leveling"),
            "perks": modules.get("perks", {}).get("perks", []),
            "rewards": modules.get("perks", {}).get("rewards", []),
            "achievements": modules.get("achievements", {}).get("achievements", []),
            "streaks": modules.get("achievements", {}).get("streaks", []),
            "boosts": modules.get("boosts", {}).get("boosts", []),
        }
        blueprint_body: dict[str, Any] = to_wire(jsonable({
            "tenant": row.slug,
            "environment": row.environment,
            "timezone": row.timezone,
            "blueprint": blueprint,
            "modules": {
                v.module: {"version": v.version, "created_at": core_engine.format_datetime(v.created_at)}
                for v in versions
            },
            "integration": {"embedded": True, "require_signatures": row.require_signatures},
            "metrics": {"customers": int(customers[0]), "events": int(customers[1])},
            "usage": usage,
        }))
        return blueprint_body
