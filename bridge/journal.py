"""A run's own warning and error log lines, kept (bounded, redacted) for its run-log row.

``LogCapture`` listens on the ``bridge``, ``connectors`` and ``perkbridge`` loggers while a run
goes on and keeps the records emitted by the run's thread and by the helper threads a run starts
(page read-ahead, in-flight Perkville pages, delivery lanes): at most ``limit`` lines, each
redacted like the run's error. Helper threads do not say which run they serve, so while several
runs of one process capture at once (a scheduler's businesses), their records are kept by none
rather than given to the wrong run. The run writes them into ``details.log`` at its end; the
dashboard's run page shows them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from bridge.redaction import redact_message

LOGGERS = ("bridge", "connectors", "perkbridge")
HELPER_THREADS = ("perkbridge-prefetch", "perkville-page", "perkbridge-lane")
"""Names (prefixes) of the threads a run starts: their records belong to the run too."""
LIMIT = 200
MESSAGE_LIMIT = 500


class LogCapture(logging.Handler):
    """Keeps the run's warning and error records (see the module docstring)."""

    _attached: ClassVar[int] = 0
    """Captures attached in this process now (helper threads' records are kept only when one is)."""
    _count_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, secrets: Sequence[str] = (), *, limit: int = LIMIT, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.secrets = tuple(secrets)
        self.limit = limit
        self.dropped = 0
        self._lines: list[dict[str, Any]] = []
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread:
            helper = (record.threadName or "").startswith(HELPER_THREADS)
            if not helper or LogCapture._attached != 1:
                return  # another run's (a scheduler runs several businesses at once)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not worth failing a run over
            message = str(record.msg)
        line = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_message(message, self.secrets)[:MESSAGE_LIMIT],
        }
        if len(self._lines) < self.limit:  # handle() holds the handler's lock around emit
            self._lines.append(line)
        else:
            self.dropped += 1

    def lines(self) -> list[dict[str, Any]]:
        """The kept lines, oldest first (a last line says how many more were left out)."""
        kept = list(self._lines)
        if self.dropped:
            kept.append({
                "at": kept[-1]["at"], "level": "warning", "logger": "bridge.journal",
                "message": f"{self.dropped} more log lines were left out (at most {self.limit} are kept)",
            })
        return kept

    @contextmanager
    def attached(self) -> Iterator[LogCapture]:
        """Listen while the block runs, on the run's thread (the one entering the block)."""
        self._thread = threading.get_ident()
        loggers = [logging.getLogger(name) for name in LOGGERS]
        with LogCapture._count_lock:
            LogCapture._attached += 1
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)
            with LogCapture._count_lock:
                LogCapture._attached -= 1
