"""Structured logs: one JSON object per line, and the access log written by the front door.

    {"ts": "2026-12-01T13:20:00.123Z", "level": "INFO", "logger": "pulsefm.access", "message": "request",
     "request_id": "...", "method": "POST", "route": "/v1/embed", "status": 200, "latency_ms": 12.3,
     "modality": "ecg", "model_version": 1, "windows": 3, "windows_used": 3}

Never a body, a query string or a header value (keys stay out). `log_format="text"` keeps
Python's plain format; `access_log=False` turns the per-request line off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

ACCESS = logging.getLogger("pulsefm.access")
# what the routes may add to the access line (request.scope[SCOPE_KEY]); nothing else is logged
FIELDS = ("modality", "model_version", "windows", "windows_used")
SCOPE_KEY = "pulsefm.log"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(log_format: str = "json", level: str = "INFO") -> None:
    """The root handler for the gateway and uvicorn's loggers (uvicorn's own access log is off:
    the front door writes a richer one)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def access(scope: MutableMapping[str, Any], request_id: str, route: str, status: int, seconds: float) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": scope.get("method", ""),
        "route": route,
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
    }
    extra = scope.get(SCOPE_KEY) or {}
    fields.update({k: extra[k] for k in FIELDS if k in extra})
    ACCESS.info("request", extra={"fields": fields})
