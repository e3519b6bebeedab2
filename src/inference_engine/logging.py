"""Logging set-up: JSON lines for machines, plain text for people, request ids on every line.

The request id lives in a context variable bound by the HTTP middleware, so any log call made
while serving a request (in the route, the service, or a worker thread that copied the context)
carries it without passing it around.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic.warnings import UnsupportedFieldAttributeWarning

from inference_engine.settings import LoggingSettings
from inference_engine.tenancy import DEFAULT_CALLER, Caller
from inference_engine.tracing import current_trace_id


@dataclass
class RequestContext:
    """Facts about the current request: what the access log line and request metrics report,
    and what the one error handler needs to answer in the right shape."""

    request_id: str
    #: ``time.monotonic()`` when the request arrived; its deadline counts from here.
    started: float = field(default_factory=time.monotonic)
    #: The served model it named (only known names: it becomes a metric label).
    model: str | None = None
    #: The version that answered (or was chosen to): a metric label and the X-Model-Version header.
    version: str | None = None
    #: The largest batch any of its inputs ran in.
    batch_size: int | None = None
    #: The stable error code it was answered with, if any.
    error: str | None = None
    #: The protocol of the route that took it: V2 routes answer errors in V2's shape.
    protocol: Literal["native", "v2"] = "native"
    #: Its tenant and priority (from its API key and ``X-Priority``), set by access control.
    caller: Caller = DEFAULT_CALLER
    #: Answered from the output cache (``None``: the model keeps none); the ``X-Cache`` header.
    cached: bool | None = None


current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)

# Attributes every LogRecord has; anything else passed via ``extra=`` is emitted as a field.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn duplicates its message with ANSI colours
}


class RequestIdFilter(logging.Filter):
    """Stamp ``record.request_id`` from the current request context (``-`` outside one), and
    ``record.worker`` in one of several worker processes."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if self._worker is not None and not hasattr(record, "worker"):
            record.worker = self._worker
        if not hasattr(record, "request_id"):
            ctx = current_request.get()
            record.request_id = ctx.request_id if ctx is not None else "-"
        if not hasattr(record, "trace_id"):
            trace_id = current_trace_id()
            if trace_id is not None:  # only inside a recorded span: no noise when tracing is off
                record.trace_id = trace_id
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        payload.update(_extra_fields(record))
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message key=value ...`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        # Called before the traceback is appended, so key=value fields stay on the first line.
        line = super().formatMessage(record)
        extras = _extra_fields(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(settings: LoggingSettings, worker: int | None = None) -> None:
    """Install handlers on the root logger; uvicorn's own loggers propagate to it.

    ``worker``: this is that one of ``server.workers`` processes; every line says so.

    Python warnings become records of the ``py.warnings`` logger (WARNING), so a JSON log stays
    JSON lines. Pydantic's warning about ``Field()`` attributes "with no effect" is silenced: it
    fires, rarely and at request time, on the plain copies FastAPI makes of its path parameters'
    field infos (pydantic exempts FastAPI's own subclasses for the same reason), and says nothing
    an operator could act on.
    """
    warnings.filterwarnings("ignore", category=UnsupportedFieldAttributeWarning)
    logging.captureWarnings(True)
    formatter = "json" if settings.format == "json" else "text"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": RequestIdFilter, "worker": worker}},
            "formatters": {
                "json": {"()": JsonFormatter},
                "text": {"()": TextFormatter},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": formatter,
                    "filters": ["request_id"],
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"level": settings.level, "handlers": ["stderr"]},
            "loggers": {
                "uvicorn": {"level": settings.level, "handlers": [], "propagate": True},
                "uvicorn.error": {"level": settings.level, "handlers": [], "propagate": True},
                # Our middleware writes the access line, with the request id and model.
                "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            },
        }
    )
