"""Run progress for people and machines: rich bars on a TTY, plain or JSON log lines elsewhere."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Protocol

from bridge.state import RunCounts


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
