"""Logging for the daemon: text or JSON lines on stderr, and the last problems kept.

journald stores stderr lines as they are; `--log-format json` makes each line one
JSON object (time, level, logger, message, and any structured fields a caller passed
with `extra={"fields": {...}}`), ready for a log pipeline. The most recent warnings and
errors are also kept in memory for `transparent-md status`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Enough to see what went wrong lately without holding a flood of repeats.
RECENT_PROBLEMS = 20


class JsonFormatter(logging.Formatter):
    """One JSON object per record; structured fields from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class RecentProblems(logging.Handler):
    """Keeps the last WARNING-or-worse records as (time, level, message)."""

    def __init__(self, size: int = RECENT_PROBLEMS) -> None:
        super().__init__(level=logging.WARNING)
        self.records: deque[dict] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"time": record.created, "level": record.levelname.lower(),
                             "message": record.getMessage()})


def configure(level: str, log_format: str) -> RecentProblems:
    """Set up the root logger once, for the daemon process; returns the problems kept."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    recent = RecentProblems()
    root.addHandler(recent)
    return recent
