"""How the processes log: text for people, or JSON lines for log collectors.

A JSON line carries `ts` (Unix seconds), `time` (ISO 8601, UTC), `level`, `logger`,
`process` (`switch` or the server's name), `pid`, `message`, `call_id` when the line
is about one call, and `exc` with the traceback when there is one. A line is about a
call when it was logged with `extra={"call_id": ...}`, or in the code's convention
``log.warning("call %s: ...", call_id, ...)``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Literal

Format = Literal["text", "json"]
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "pid": record.process or os.getpid(),
            "message": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is None and isinstance(record.msg, str) and record.msg.startswith("call %s"):
            args = record.args
            if isinstance(args, tuple) and args:
                call_id = args[0]
        if call_id is not None:
            out["call_id"] = str(call_id)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: Format = "text", *, process: str = "twinline") -> None:
    """Log to standard error (where `twinline up` collects its processes' logs)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
