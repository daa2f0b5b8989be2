"""Every log line is one JSON object on stderr, so log pipelines need no parser of their own.

Request lines (logger `agentgw.access`) carry the request's fields (contract
10); other lines carry `level`, `logger`, `message` and, for an error, its
`exception`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

access_log = logging.getLogger("agentgw.access")
# Made once: json.dumps with options builds an encoder on every call, and every request has a line.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
# uvicorn logs a WebSocket's path with its query, where a client that cannot set headers put its token.
_QUERY_CREDENTIAL = re.compile(r"((?:access_token|token|id_token|jwt|bearer)=)[^&\s\"']+", re.IGNORECASE)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")}
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is not None:
            line.update(fields)
        else:
            message = _QUERY_CREDENTIAL.sub(r"\1[redacted]", record.getMessage())
            line.update(level=record.levelname.lower(), logger=record.name, message=message)
            if record.exc_info:
                line["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


def log_request(fields: dict[str, Any]) -> None:
    access_log.info("request", extra={"fields": fields})


def configure_logging() -> None:
    """JSON lines on stderr for the gateway, uvicorn and every library, at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    # A line per request: skip what the lines never show (the logging docs' "Optimization" knobs).
    logging._srcfile = None  # no caller lookup
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
