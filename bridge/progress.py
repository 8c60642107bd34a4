"""Run progress for people and machines: rich bars on a TTY, plain or JSON log lines elsewhere."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from bridge.state import RunCounts, RunLog, utcnow

log = logging.getLogger("bridge.progress")


class Progress(Protocol):
    """What the pipeline reports while it runs (never secrets: counts, phases, notes)."""

    def phase(self, name: str) -> None: ...

    def advance(
        self,
        name: str,
        n: int,
        *,
        total: Any = None,
        counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        """``n`` more records of phase ``name``; ``pace``: the Perkville requests/s allowed now."""
        ...

    def done(self, name: str, text: str | None) -> None: ...

    def note(self, text: str) -> None: ...


class NullProgress:
    """Reports nothing (library use, tests)."""

    def phase(self, name: str) -> None:
        pass

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        pass

    def done(self, name: str, text: str | None) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class LogProgress:
    """One line per phase start/end and every ``every`` seconds; ``json=True`` writes JSON lines."""

    def __init__(self, stream: IO[str] | None = None, *, json_lines: bool = False, every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.json_lines = json_lines
        self.every = every
        self._seen: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last = 0.0

    def _emit(self, event: str, **fields: Any) -> None:
        if self.json_lines:
            line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str)
        else:
            extras = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"[perkbridge] {event} {extras}".rstrip()
        self.stream.write(line + "\n")
        self.stream.flush()

    def phase(self, name: str) -> None:
        self._seen[name] = 0
        self._started[name] = time.monotonic()
        self._emit("phase_start", phase=name)

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        self._seen[name] = self._seen.get(name, 0) + n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._emit("progress", phase=name, records=self._seen[name], total=total, rate=self._rate(name),
                       requests_per_second=pace, **(counts.as_dict() if counts else {}))

    def _rate(self, name: str) -> float:
        elapsed = max(time.monotonic() - self._started.get(name, time.monotonic()), 1e-6)
        return round(self._seen.get(name, 0) / elapsed, 1)

    def done(self, name: str, text: str | None) -> None:
        self._emit("phase_done", phase=name, records=self._seen.get(name, 0), rate=self._rate(name), summary=text)

    def note(self, text: str) -> None:
        self._emit("note", message=text)


class RichProgress:
    """Rich progress bars, one per phase, with record counts and rate (TTY only)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import (
            Progress as RichBars,
        )

        self.console = Console(stderr=True)
        self._bars = RichBars(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8} rec/s"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._bars.start()

    def close(self) -> None:
        self._bars.stop()

    def phase(self, name: str) -> None:
        self._started[name] = time.monotonic()
        self._tasks[name] = self._bars.add_task(name, total=None, rate="", info="")

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        task = self._tasks.get(name)
        if task is None:
            self.phase(name)
            task = self._tasks[name]
        self._bars.advance(task, n)
        done = self._bars.tasks[task].completed if isinstance(task, int) else 0
        elapsed = max(time.monotonic() - self._started[name], 1e-6)
        info = ""
        if counts is not None:
            info = f"applied {counts.applied} dup {counts.duplicate} dead {counts.dead_lettered}"
        if pace is not None:
            info = f"{info} · Perkville {pace:g} req/s".lstrip(" ·")
        update: dict[str, Any] = {"rate": f"{done / elapsed:,.0f}", "info": info}
        if isinstance(total, int) and total > 0:
            update["total"] = total
        self._bars.update(task, **update)

    def done(self, name: str, text: str | None) -> None:
        task = self._tasks.get(name)
        if task is None:
            return
        completed = self._bars.tasks[task].completed
        self._bars.update(task, total=max(completed, 1) if completed else 1, completed=completed or 1,
                          info=text or "")

    def note(self, text: str) -> None:
        self._bars.console.print(f"[dim]•[/dim] {text}")


class TeeProgress:
    """Reports to each of ``parts`` in turn (the terminal's progress and the run's row)."""

    def __init__(self, *parts: Progress) -> None:
        self.parts = parts

    def phase(self, name: str) -> None:
        for part in self.parts:
            part.phase(name)

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        for part in self.parts:
            part.advance(name, n, total=total, counts=counts, pace=pace)

    def done(self, name: str, text: str | None) -> None:
        for part in self.parts:
            part.done(name, text)

    def note(self, text: str) -> None:
        for part in self.parts:
            part.note(text)


class RecordedProgress:
    """The run's phases in its run-log row (``details.progress``), where another process (the
    dashboard of ``perkbridge serve``) reads them while the run goes on.

    Written at each phase's start and end and at most every ``every`` seconds in between, in a
    transaction of its own: a few small updates a second at most. A failed write is logged once
    and otherwise ignored; it never fails the run (the run's own end records the final phases).
    """

    def __init__(
        self, runs: RunLog, run_id: int, *, every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runs = runs
        self.run_id = run_id
        self.every = every
        self.clock = clock
        self._phases: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}
        self._pace: float | None = None
        self._last = clock()
        self._failed = False

    def phase(self, name: str) -> None:
        self._phases[name] = {
            "name": name, "done": 0, "total": None, "rate": None, "finished": False,
            "summary": None, "started_at": utcnow().isoformat(), "finished_at": None,
        }
        self._started[name] = self.clock()
        self.flush()

    def advance(
        self, name: str, n: int, *, total: Any = None, counts: RunCounts | None = None,
        pace: float | None = None,
    ) -> None:
        if name not in self._phases:
            self.phase(name)
        entry = self._phases[name]
        entry["done"] += n
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            entry["total"] = total
        entry["rate"] = self._rate(name)
        if pace is not None:
            self._pace = pace
        if self.clock() - self._last >= self.every:
            self.flush()

    def done(self, name: str, text: str | None) -> None:
        entry = self._phases.get(name)
        if entry is None:
            return
        entry.update(finished=True, summary=text, rate=self._rate(name), finished_at=utcnow().isoformat())
        self.flush()

    def note(self, text: str) -> None:
        pass  # the run records its notes itself, at its end

    def _rate(self, name: str) -> float:
        elapsed = max(self.clock() - self._started.get(name, self.clock()), 1e-6)
        return round(int(self._phases[name]["done"]) / elapsed, 1)

    def snapshot(self) -> dict[str, Any]:
        """The phases so far (JSON-ready): what ``details.progress`` holds."""
        body: dict[str, Any] = {
            "phases": [dict(p) for p in self._phases.values()],
            "updated_at": utcnow().isoformat(),
        }
        if self._pace is not None:
            body["pace"] = self._pace
        return body

    def flush(self) -> None:
        """Write the phases now; a failure is logged once and never raised."""
        self._last = self.clock()
        try:
            self.runs.update_details(self.run_id, {"progress": self.snapshot()})
        except Exception as exc:  # noqa: BLE001 - progress is for watching; the run must go on
            if not self._failed:
                self._failed = True
                log.warning(
                    "run %s: could not record its progress (%s); the run goes on", self.run_id,
                    type(exc).__name__,
                )


def make_progress(mode: str, *, json_output: bool) -> Progress:
    """``auto``: rich bars on a TTY, plain lines elsewhere; ``json``: JSON lines; quiet for --json."""
    if mode == "json":
        return LogProgress(json_lines=True)
    if mode == "plain":
        return LogProgress()
    if json_output:
        return LogProgress(every=30.0) if not sys.stderr.isatty() else NullProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return LogProgress()
