"""The schema the ``perkamo_core`` migrations build, compared with a reflected snapshot per backend.

The snapshots (``schema/core_schema.<backend>.json``) were taken from the Core ``Table``
definitions before the tables became SQLModel models: how the tables are declared may change,
the schema may not. A new migration changes them on purpose: regenerate with
``PERKBRIDGE_WRITE_SCHEMA_SNAPSHOT=1 pytest tests/perkamo_core/test_storage_schema.py`` and
review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect

from perkamo_core import storage as st

SNAPSHOTS = Path(__file__).parent / "schema"


def reflect_schema(engine: Engine) -> dict[str, Any]:
    """Tables (columns, keys, indexes, unique constraints) and views, as plain JSON values."""
    insp = inspect(engine)
    dialect = engine.dialect
    tables: dict[str, Any] = {}
    for name in sorted(insp.get_table_names()):
        tables[name] = {
            "columns": [
                {"name": c["name"], "type": c["type"].compile(dialect=dialect),
                 "nullable": c["nullable"], "default": c.get("default")}
                for c in insp.get_columns(name)
            ],
            "primary_key": insp.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted(
                [fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]]
                for fk in insp.get_foreign_keys(name)
            ),
            "indexes": sorted(
                [ix["name"], ix["column_names"], bool(ix["unique"])]
                for ix in insp.get_indexes(name)
            ),
            "unique_constraints": sorted(
                [uq["name"], uq["column_names"]] for uq in insp.get_unique_constraints(name)
            ),
        }
    return {"tables": tables, "views": sorted(insp.get_view_names())}


def test_migrations_build_the_snapshot_schema(db_engine: Engine) -> None:
    st.migrate_core(db_engine)
    schema = json.loads(json.dumps(reflect_schema(db_engine)))
    path = SNAPSHOTS / f"core_schema.{db_engine.dialect.name}.json"
    if os.environ.get("PERKBRIDGE_WRITE_SCHEMA_SNAPSHOT") == "1":
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    assert schema == json.loads(path.read_text())


def test_core_tables_keep_a_metadata_of_their_own() -> None:
    from sqlmodel import SQLModel

    from bridge.state import schema as bridge_schema

    assert st.metadata is not SQLModel.metadata
    assert all(name.startswith("core_") for name in st.metadata.tables)
    assert not st.metadata.tables.keys() & bridge_schema.metadata.tables.keys()
    assert not st.metadata.tables.keys() & SQLModel.metadata.tables.keys()
