"""A logging filter for what client libraries log on their own: secrets masked, repeats thinned.

aio-pika and aiormq log from their reconnect loops, where no trigger is named and we pass no
secrets in: during a broker outage aiormq says "error when creating transport" at ERROR once per
reconnect attempt (about once a second per connection). `ClientLogFilter` lets the first record of
each kind through, then at most one per `interval_seconds`, which carries the count of those it
held back; and it masks, in every record it passes (ours included), every secret a source has read
(`base.remember`). Our sources already report the failure once, on the flip, with the trigger named.
Callers: `controller.configure_logging`, which puts it on the autoscaler's log handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscaler.sources.base import redact_known

CLIENT_LOGGERS = ("aio_pika", "aiormq")


@dataclass
class _Seen:
    passed_at: float
    held: int = 0


class ClientLogFilter(logging.Filter):
    """Put it on a handler (a filter on the `aiormq` logger would not see `aiormq.connection`'s
    records). Records are grouped by logger and message template, so one outage's reconnect errors
    are one group whatever the address or exception in them."""

    def __init__(
        self,
        loggers: Sequence[str] = CLIENT_LOGGERS,
        interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._loggers = tuple(loggers)
        self._interval = interval_seconds
        self._clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        note = ""
        if record.name.partition(".")[0] in self._loggers:
            now = self._clock()
            key = (record.name, str(record.msg))
            seen = self._seen.get(key)
            if seen is not None and now - seen.passed_at < self._interval:
                seen.held += 1
                return False
            if seen is not None and seen.held:
                note = f" ({seen.held} more like this in the last {now - seen.passed_at:.0f}s not shown)"
            self._seen[key] = _Seen(now)
        message = redact_known(record.getMessage() + note)
        record.msg, record.args = message, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact_known(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True
