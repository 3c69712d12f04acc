"""The autoscaler's logs: one JSON object per line (`log_format` json) or `message key=value ...`
(text), on stderr, with every secret a source has read masked (`sources.logfilter`).

Callers: `autoscaler.app` (`autoscaler run`), tests.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from autoscaler.sources.logfilter import ClientLogFilter


class JsonFormatter(logging.Formatter):
    """Structured fields go in `extra={"fields": {...}}`; they are merged into the JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        extra = ""
        if isinstance(fields, dict):
            extra = " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return f"{record.levelname.lower()} {record.name}: {record.getMessage()}{extra}"


_HANDLER_NAME = "autoscaler"


def configure_logging(log_format: str, level: int = logging.INFO) -> logging.Handler:
    """Send the autoscaler's logs to stderr in the operator's format. aio-pika's own reconnect chatter
    (one warning per second while a broker is down) is capped at ERROR: our sources already report
    the failure once, on the flip, with the trigger named."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    # Masks secrets in every record, and thins aiormq's once-a-second reconnect errors to one a minute.
    handler.addFilter(ClientLogFilter())
    root = logging.getLogger()
    # Replace only our own handler (a second call, a test), not whatever else the process installed.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return handler
