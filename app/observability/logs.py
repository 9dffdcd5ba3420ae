"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to.

The request id is set per request by app/http/middleware.py (the client's `x-request-id` when printable and
short, else generated) and echoed in every response's `x-request-id` header, so a user's report can be
matched to the log lines. Nothing here logs headers or bodies: user text and keys stay out of the logs.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import queue
import sys
import time
from contextvars import ContextVar
from logging.handlers import QueueHandler, QueueListener
from typing import Any


current_request_id: ContextVar[str | None] = ContextVar("jisi_request_id", default=None)
# fields the request's handlers add to its one access line (a dict shared by every task of the request)
current_access_fields: ContextVar[dict[str, Any] | None] = ContextVar("jisi_access_fields", default=None)

# LogRecord attributes that are not user-supplied `extra` fields
# (and uvicorn's `color_message`, the same message with terminal colour codes)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                                        "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # read on the logging task by _RequestQueueHandler; the context variable is unset in the writer thread
        request_id = getattr(record, "request_id", None) or current_request_id.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k != "request_id"})
        exception = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        if exception:
            entry["exception"] = exception
        return json.dumps(entry, default=str, ensure_ascii=False)


class _RequestQueueHandler(QueueHandler):
    """Queues records for the writer thread, with what must be read on the logging task itself."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.request_id = current_request_id.get()
        record.message = record.getMessage()
        record.msg, record.args = record.message, None  # arguments may change after this call returns
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # tracebacks hold frames; the text is what gets written
        return record


_writer: QueueListener | None = None


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route every logger (uvicorn's included) through one stderr handler in the chosen format.

    A background thread formats and writes the lines: the event loop only queues a record, so a slow stderr
    (a full pipe to a log collector) cannot stall request handling."""
    global _writer
    stop_logging()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _writer = QueueListener(records, handler)
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [_RequestQueueHandler(records)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # whatever uvicorn set up before
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    # httpx logs every upstream call at info ("HTTP Request: POST <url> 200"): up to five lines per request
    # that the access line's summary and the upstream error fields already cover
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def stop_logging() -> None:
    """Write out every queued line and stop the writer thread (at exit, or before reconfiguring)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(stop_logging)
