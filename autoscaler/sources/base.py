"""What every live signal source is: the `Source` protocol, the context sources share, and redaction.

A source reads one trigger's value from an external system and reports it as a `Reading`; it never
decides replicas (KEDA's scalers report values, the engine decides). A failed read is a `Reading`
whose `value` is None and whose `error` names the trigger, the queue or query and the server, never
a credential: `read()` does not raise for anything the outside world can do. Callers: the builder in
`sources/__init__.py`, the concrete sources (`rabbitmq.py`, `prometheus.py`), `autoscaler.controller`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from autoscaler.engine.types import Reading


@runtime_checkable
class Source(Protocol):
    """One trigger's signal. `poll_seconds` is how often the controller calls `read`."""

    poll_seconds: float

    async def read(self) -> Reading: ...

    async def close(self) -> None: ...


@dataclass
class SourceContext:
    """What sources built for one controller share: the environment secrets come from, the clock
    that stamps readings (the controller's, so `Reading.at` and the engine's `now` agree), the
    default Prometheus address, and connections (one AMQP connection per distinct URL)."""

    environ: Mapping[str, str]
    clock: Callable[[], float] = time.time
    prometheus_url: str | None = None
    # Opaque per-kind shared resources (e.g. `rabbitmq.AmqpConnections`), created on first use by
    # the module that owns them and closed by `aclose`.
    shared: dict[str, SharedResource] = field(default_factory=dict)

    async def aclose(self) -> None:
        for resource in self.shared.values():
            await resource.aclose()
        self.shared.clear()


class SharedResource(Protocol):
    async def aclose(self) -> None: ...


class BrokenSource:
    """A trigger that cannot be read as configured (no server address, an unknown type): it reports
    the same failure on every poll, so the workload's fallback applies and other workloads go on."""

    def __init__(self, message: str, clock: Callable[[], float], poll_seconds: float = 30.0) -> None:
        self.message = message
        self.poll_seconds = poll_seconds
        self._clock = clock

    async def read(self) -> Reading:
        return Reading(None, self._clock(), self.message)

    async def close(self) -> None:
        return None


# ----------------------------------------------------------------------------------------------
# Redaction: secrets (AMQP passwords, tokens) must not reach an error message or a log line.

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_MASK = "***"


def server_of(url: str) -> str:
    """`amqp://user:secret@host:5672/vhost` -> `amqp://host:5672/vhost`: where, without who."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, "", ""))


def secrets_of_url(url: str) -> list[str]:
    """The parts of a URL that are secret: its password (raw and as percent-decoded)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return [url]
    if not password:
        return []
    # urlsplit leaves percent-escapes in; a client library may print either spelling.
    return sorted(s for s in {password, unquote(password)} if s)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from `text` (an exception message, a URL): the userinfo of every URL in it
    and every known secret string, wherever it appears."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + _MASK + "@", text)
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def describe_exception(exc: BaseException) -> str:
    """`ConnectionRefusedError: [Errno 111] ...`; a bare `TimeoutError()` says nothing, so name it."""
    message = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
