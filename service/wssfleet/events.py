"""The service's structured log: one JSON object a line, for journald and log shippers.

Events (a connect, a disconnect, a refusal) come once or twice for every connection, so they
skip the logging module's records, handlers and locks: each is one line written to the
process's output at once. Everything else (warnings, a bug's traceback) goes through
``logging`` to the same output, in the same shape (``JsonLines``).
"""

from __future__ import annotations

import json
import logging
import os

import orjson

log = logging.getLogger("wssfleet")
# Where events are written: the file descriptor ``to_output`` names, or through ``log``.
_output: int | None = None


class JsonLines(logging.Formatter):
    """A log record as an event's line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname.lower(), "event": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def to_output(descriptor: int) -> None:
    """Write events straight to ``descriptor`` (the process's standard output)."""
    global _output
    _output = descriptor


def event(name: str, **fields: object) -> None:
    """Log one structured line; callers never pass a token."""
    if _output is None:
        log.info(name, extra={"fields": fields})
        return
    line = memoryview(orjson.dumps({"level": "info", "event": name, **fields}, default=str) + b"\n")
    while line:
        line = line[os.write(_output, line) :]
