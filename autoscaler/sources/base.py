"""What every live signal source is: the `Source` protocol, the context sources share, and redaction.

A source reads one trigger's value from an external system and reports it as a `Reading`; it never
decides replicas (KEDA's scalers report values, the engine decides). A failed read is a `Reading`
whose `value` is None and whose `error` names the trigger, the queue or query and the server, never
a credential: `read()` does not raise for anything the outside world can do. Callers: the builder in
`sources/__init__.py`, the concrete sources (`rabbitmq.py`, `prometheus.py`), `autoscaler.controller`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from autoscaler.engine.types import Reading


@runtime_checkable
class Source(Protocol):
    """One trigger's signal. `poll_seconds` is how often the controller calls `read`."""

    poll_seconds: float

    async def read(self) -> Reading: ...

    async def close(self) -> None: ...


@runtime_checkable
class Recovering(Protocol):
    """A source that can notice its server coming back (a cheap reachability probe) while its reads
    fail. The controller awaits `wait_recovered(delay)` instead of sleeping out its backoff `delay`:
    True as soon as the server is reachable again after being unreachable, False after `timeout`."""

    async def wait_recovered(self, timeout: float) -> bool: ...


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
#
# A URL's credentials are found twice over: as `urlsplit` reads them, and leniently, as everything
# between `scheme://` and the last `@`. The two differ exactly when a password holds `/`, `#`, `?`
# or `@` unencoded, and a client library then reads part of the password as the host or the path
# and prints it in its error: so such a URL is refused before any client sees it (`check_url`),
# and both readings are masked wherever text leaves a source. Each secret is masked in every
# spelling a client or a formatter may print: raw, percent-decoded, re-encoded, and escaped as
# `repr` and JSON escape it.

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SCHEME = re.compile(r"\s*[a-zA-Z][a-zA-Z0-9+.-]*://")
# RFC 3986 userinfo: unreserved, percent-escapes, sub-delims and ':'. Anything else is unencoded.
_USERINFO_CHARS = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*")
_SUB_DELIMS = "!$&'()*+,;="
_MASK = "***"
_WITHHELD = "[message withheld: it contained a credential]"
# Every secret a source has read in this process, for the log filter on client libraries' loggers
# (`SecretFilter`): their messages are formatted where we cannot pass the secrets in.
_KNOWN_SECRETS: set[str] = set()


class MalformedUrlError(ValueError):
    """A connection URL that clients would misread. The message never quotes the URL."""


def server_of(url: str) -> str:
    """`amqp://user:secret@host:5672/vhost` -> `amqp://host:5672/vhost`: where, without who."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if userinfo_of(url) != (parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None):
        return "<unparsable URL>"  # an unencoded '/', '#' or '?' in the password: no part is safe
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, "", ""))


def userinfo_of(url: str) -> str | None:
    """What the URL's author meant as `user:password`: everything between `scheme://` and the last
    `@`, even when the password holds characters that should have been percent-encoded."""
    scheme = _SCHEME.match(url)
    rest = url[scheme.end() :] if scheme else url
    if "@" not in rest:
        return None
    return rest.rpartition("@")[0]


def check_url(url: str, variable: str) -> None:
    """Raise `MalformedUrlError` for a URL a client would read differently from its author: credentials
    with unencoded characters (`/`, `#`, `?`, `@`, spaces, ...), or no host or a bad port."""
    userinfo = userinfo_of(url)
    if userinfo is not None and not _USERINFO_CHARS.fullmatch(userinfo):
        raise MalformedUrlError(
            f"the credentials in the URL in {variable} hold characters that must be percent-encoded "
            "(/ as %2F, # as %23, ? as %3F, @ as %40, % as %25, a space as %20)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises for a port that is not a number in range
    except ValueError:
        raise MalformedUrlError(f"the URL in {variable} cannot be parsed (its host or port)") from None
    if not parts.scheme or not parts.hostname:
        raise MalformedUrlError(f"the URL in {variable} needs a scheme and a host (scheme://host:port/...)")


def spellings(secret: str) -> set[str]:
    """`secret` as a client or formatter may print it: raw, percent-decoded, percent-encoded (as
    yarl and urllib encode), and escaped by `repr` (of str and of bytes) and by JSON."""
    decoded = unquote(secret)
    plain = {
        secret,
        decoded,
        quote(decoded, safe=""),
        quote(decoded, safe=_SUB_DELIMS + ":"),
        re.sub(r"%[0-9a-f]{2}", lambda m: m.group().upper(), secret),
    }
    forms = set(plain)
    for form in plain:
        forms.add(repr(form)[1:-1])
        forms.add(json.dumps(form)[1:-1])
        with contextlib.suppress(UnicodeEncodeError):
            forms.add(repr(form.encode())[2:-1])
    return {form for form in forms if form}


def secrets_of_url(url: str) -> list[str]:
    """The parts of a URL that are secret, in every spelling: its whole userinfo and its password,
    as `urlsplit` reads them and as their author meant them (`userinfo_of`)."""
    candidates = {userinfo_of(url)}
    with contextlib.suppress(ValueError):
        netloc = urlsplit(url).netloc
        if "@" in netloc:
            candidates.add(netloc.rpartition("@")[0])
    secrets: set[str] = set()
    for userinfo in candidates:
        if not userinfo:
            continue
        secrets.add(userinfo)
        _, colon, password = userinfo.partition(":")
        if colon and password:
            secrets.add(password)
    return sorted({form for secret in secrets for form in spellings(secret)})


def remember(secrets: Iterable[str]) -> None:
    """Note secrets a source has read, so `SecretFilter` masks them in library log records too."""
    _KNOWN_SECRETS.update(s for s in secrets if s)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from `text` (an exception message, a URL): the userinfo of every URL in it
    and every given secret string, wherever it appears. If masking cannot get rid of a secret (a
    password made of the mask's own characters), the whole text is withheld."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + _MASK + "@", text)
    # Longest first, so a secret that contains another is masked whole; a second round for secrets
    # that the first round's masks and their neighbours spell again.
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    for _ in range(2):
        for secret in ordered:
            text = text.replace(secret, _MASK)
        if not any(secret in text for secret in ordered):
            return text
    return "" if any(secret in _WITHHELD for secret in ordered) else _WITHHELD


def redact_known(text: str) -> str:
    """`redact` with every secret any source has read in this process."""
    return redact(text, _KNOWN_SECRETS)


def describe_exception(exc: BaseException) -> str:
    """`ConnectionRefusedError: [Errno 111] ...`; a bare `TimeoutError()` says nothing, so name it."""
    message = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
