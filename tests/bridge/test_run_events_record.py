"""``RunEvents.record`` on SQLite (the driver's executemany) stores what the Core insert stores."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, select

from bridge.state.run_events import RunEvents
from bridge.state.schema import run_events


def test_the_sqlite_insert_stores_what_the_core_insert_stores(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run_events.create(engine)
    applied = [("perkville:25:txn:1", None), ("perkville:25:txn:2:again:1", "perkville:25:txn:2"),
               ("caf\u00e9 \U0001f600", None)]
    with engine.begin() as conn:
        RunEvents(engine).record(conn, 7, "25", "gym", applied)
        RunEvents(engine).record(conn, 7, "25", "gym", [])  # nothing to link
        conn.execute(run_events.insert(), [
            {"run_id": 8, "business": "25", "space": None, "transaction_id": t, "base_id": b} for t, b in applied
        ])
        RunEvents(engine).record(conn, 9, "25", None, applied)
    with engine.connect() as conn:
        rows = conn.execute(select(run_events).order_by(run_events.c.id)).all()
    assert [tuple(r) for r in rows] == [
        *[(i + 1, 7, "25", "gym", t, b) for i, (t, b) in enumerate(applied)],
        *[(i + 4, 8, "25", None, t, b) for i, (t, b) in enumerate(applied)],
        *[(i + 7, 9, "25", None, t, b) for i, (t, b) in enumerate(applied)],
    ]
    seq = [e.seq for e in RunEvents(engine).of_run(7)]
    assert seq == [1, 2, 3]
    assert [e.mapped_id for e in RunEvents(engine).of_run(9)] == [
        "perkville:25:txn:1", "perkville:25:txn:2", "caf\u00e9 \U0001f600"
    ]
