"""One JSON object per log line on stdout: journald stores it, CloudWatch parses it."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# The members every line has; extras of the same name are renamed.
_CORE = frozenset({"time", "level", "logger", "msg", "exception"})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, msg, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # An extra named like a core field must not replace it (a "level" extra
                # would break every log filter on level): it is kept under another name.
                entry[f"extra_{key}" if key in _CORE else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route the gateway's logs (and its libraries' warnings) to JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("gateway", "drivers"):
        logging.getLogger(name).setLevel(level.upper())
    # pymodbus logs every failed request at ERROR; the Modbus driver reports the same
    # failure as a sensor error with the register names, so its own lines are noise.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
