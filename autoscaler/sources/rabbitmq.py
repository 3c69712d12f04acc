"""RabbitMQ queue length and message rate, as KEDA's rabbitmq scaler reads them.

Two protocols, chosen per trigger:
- `amqp` (default): a passive queue declare on a long-lived robust connection, one per distinct URL
  (shared by every trigger that names the same URL), one channel per trigger. The broker answers
  with the ready-message and consumer counts; it cannot see unacknowledged messages.
- `http`: the management API, `GET /api/queues/{vhost}/{queue}`: `messages` (ready + unacknowledged,
  so work in flight is not mistaken for idle capacity), `messages_ready` with
  `excludeUnacknowledged`, for mode `MessageRate` `message_stats.publish_details.rate`, and for mode
  `DeliverGetRate` `message_stats.deliver_get_details.rate`.

Several queues per trigger combine by `operation` (sum | max); if any queue cannot be read the whole
reading fails, since a partial sum would look like a drop in load. Callers: `sources.build_source`.

The connection URL comes from the environment variable named by `connectionFromEnv` (a secret: it
holds the password), read at connect time and never logged: errors name the server through
`server_of`, and every exception text passes through `redact`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import aiormq.exceptions
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from autoscaler.config.access import DEFAULT_ACCESS, SecretAccess
from autoscaler.config.models import RabbitMQOperation, RabbitMQOptions
from autoscaler.engine.types import Reading
from autoscaler.sources.base import (
    MalformedUrlError,
    SourceContext,
    check_url,
    describe_exception,
    redact,
    remember,
    secrets_of_url,
    server_of,
)

DEFAULT_TIMEOUT_SECONDS = 5.0
# aio-pika re-establishes a dropped connection at this fixed period. One connection per URL, so the
# broker sees at most one attempt per second from us; the per-trigger reads back off exponentially
# in the controller, and a connection that was never established is retried on that schedule.
RECONNECT_INTERVAL_SECONDS = 1.0
_SHARED_KEY = "rabbitmq.amqp"
# While reads fail, `wait_recovered` knocks on the server's port this often: a broker that is back
# is read within about a second, not at the end of the controller's backoff (up to 30 s).
PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "http": 80, "https": 443}

# The management API's rate behind each rate mode: arrivals, and deliveries to consumers.
_RATE_FIELDS = {"MessageRate": "publish_details", "DeliverGetRate": "deliver_get_details"}


class QueueError(Exception):
    """A read failed for a reason we can state plainly (missing queue, HTTP status, ...)."""


def amqp_url_for_vhost(url: str, vhost: str) -> str:
    """`vhostName` other than the default overrides the vhost in the URL's path (KEDA does the same);
    the default `/` keeps whatever the URL says."""
    if vhost == "/":
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


class AmqpConnections:
    """One robust connection per distinct URL, opened on first use and shared by the triggers that
    name it, so a hundred triggers on one broker cost one TCP connection."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._timeout = timeout
        self._connections: dict[str, AbstractRobustConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, url: str) -> AbstractRobustConnection:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            connection = self._connections.get(url)
            if connection is not None and not connection.is_closed:
                return connection
            # fail_fast (the default): a broker that is down now raises here rather than leaving a
            # background task retrying forever; the caller's backoff decides when to try again.
            connection = await aio_pika.connect_robust(
                url, timeout=self._timeout, reconnect_interval=RECONNECT_INTERVAL_SECONDS
            )
            self._connections[url] = connection
            return connection

    def existing(self, url: str) -> AbstractRobustConnection | None:
        """The open connection for `url`, if there is one (it may be reconnecting)."""
        connection = self._connections.get(url)
        return connection if connection is not None and not connection.is_closed else None

    async def aclose(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            try:
                await connection.close()
            except Exception:  # closing a half-dead connection must not stop the others closing
                continue


def _address_of(url: str | None) -> tuple[str, int] | None:
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


async def _reachable(address: tuple[str, int], timeout: float) -> bool:
    """Whether a TCP connection to `address` opens within `timeout`: the broker's listener is up."""
    try:
        # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that arrives as a
        # refused connect completes, and the poll task then outlives the controller.
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _combine(values: Sequence[float], operation: RabbitMQOperation) -> float:
    return max(values) if operation == "max" else math.fsum(values)


class RabbitMQSource:
    """One rabbitmq trigger. `read()` never raises: failures come back as a `Reading` with an error."""

    def __init__(
        self,
        label: str,
        options: RabbitMQOptions,
        context: SourceContext,
        access: SecretAccess = DEFAULT_ACCESS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.label = label
        self.options = options
        self.queue_names = options.queue_names
        self.poll_seconds = options.poll_seconds
        # Not a trigger option: how long one read may take is the source's business.
        self.timeout_seconds = timeout_seconds
        self._context = context
        self._clock: Callable[[], float] = context.clock
        self._channel: AbstractRobustChannel | None = None
        self._queues: dict[str, AbstractQueue] = {}
        self._http: aiohttp.ClientSession | None = None
        self._access = access
        self._url: str | None = None  # the last URL read, for `wait_recovered`
        self._saw_down = False  # a probe found the broker unreachable since the last recovery
        # Consumers per queue from the last amqp read (KEDA reports them too); for logs and explain.
        self.last_consumers: dict[str, int] = {}

    # -- public -----------------------------------------------------------------------------------

    async def read(self) -> Reading:
        at = self._clock()
        variable = self.options.connection_from_env
        refused = self._access.env_refusal(variable, "connectionFromEnv")
        if refused is not None:
            return Reading(None, at, f"{self._what(None)}: connectionFromEnv: {refused}")
        url = self._context.environ.get(variable)
        if not url:
            return Reading(
                None,
                at,
                f"{self._what(None)}: environment variable {variable} (connectionFromEnv) is not set",
            )
        secrets = secrets_of_url(url)
        remember(secrets)
        try:
            check_url(url, variable)
        except MalformedUrlError as exc:
            return Reading(None, at, redact(f"{self._what(None)}: {exc}", secrets))
        if self.options.protocol == "amqp":
            url = amqp_url_for_vhost(url, self.options.vhost_name)
        self._url = url
        try:
            if self.options.protocol == "amqp":
                value = await asyncio.wait_for(self._read_amqp(url), self.timeout_seconds)
            else:
                value = await self._read_http(url)
        except QueueError as exc:
            await self._reset()
            return Reading(None, at, redact(f"{self._what(url)}: {exc}", secrets))
        except TimeoutError:
            await self._reset()
            return Reading(
                None,
                at,
                redact(f"{self._what(url)}: no answer within {self.timeout_seconds:g}s", secrets),
            )
        except Exception as exc:  # whatever the network or the client throws is a failed reading
            await self._reset()
            return Reading(None, at, redact(f"{self._what(url)}: {describe_exception(exc)}", secrets))
        return Reading(value, at)

    async def wait_recovered(self, timeout: float) -> bool:
        """While reads fail: probe the server with a TCP connect every `PROBE_INTERVAL_SECONDS` and
        return True once it answers after having been unreachable (and, for amqp, once the shared
        connection is back), so the controller reads at once instead of sleeping out its backoff.
        A server that answers the first probe is up: the failure is something it said (a missing
        queue, refused credentials), and this waits out `timeout` and returns False."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        address = _address_of(self._url)
        while address is not None:
            up = await _reachable(address, min(PROBE_TIMEOUT_SECONDS, max(deadline - loop.time(), 0.01)))
            if up and self._saw_down:
                self._saw_down = False
                await self._until_connected(deadline)
                return True
            if up:
                break
            self._saw_down = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(PROBE_INTERVAL_SECONDS, remaining))
        await asyncio.sleep(max(deadline - loop.time(), 0.0))
        return False

    async def _until_connected(self, deadline: float) -> None:
        """aio-pika's robust connection re-establishes itself within its reconnect interval of the
        broker's return; a read before that fails again, and would restart the backoff."""
        shared = self._context.shared.get(_SHARED_KEY)
        if self.options.protocol != "amqp" or not isinstance(shared, AmqpConnections) or self._url is None:
            return
        connection = shared.existing(self._url)
        if connection is None:
            return
        remaining = deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.connected.wait(), max(remaining, 0.0))

    async def close(self) -> None:
        await self._reset()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- amqp -------------------------------------------------------------------------------------

    async def _read_amqp(self, url: str) -> float:
        shared = self._context.shared.get(_SHARED_KEY)
        if not isinstance(shared, AmqpConnections):
            shared = AmqpConnections(self.timeout_seconds)
            self._context.shared[_SHARED_KEY] = shared
        connection = await shared.get(url)
        if not connection.connected.is_set():
            # The robust connection is re-establishing itself; a declare now would only wait.
            raise QueueError("connection to the broker lost; reconnecting")
        if self._channel is None or self._channel.is_closed:
            self._channel = await connection.channel(publisher_confirms=False)
            self._queues = {}
        values: list[float] = []
        for name in self.queue_names:
            queue = self._queues.get(name)
            try:
                if queue is None:
                    # robust=False: a robust channel would re-declare the queue after a reconnect, and
                    # one missing queue would then fail the whole shared connection's recovery.
                    queue = await self._channel.declare_queue(name, passive=True, robust=False)
                    self._queues[name] = queue
                    result = queue.declaration_result
                else:
                    # declare_queue caches the Queue per channel (and its first count): re-declare it
                    # for a fresh count.
                    result = await queue.declare()
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise QueueError(f"queue '{name}' not found") from None
            if result.message_count is None:
                raise QueueError(f"queue '{name}': the broker sent no message count")
            self.last_consumers[name] = result.consumer_count or 0
            values.append(float(result.message_count))
        return _combine(values, self.options.operation)

    async def _reset(self) -> None:
        """Forget the channel after any failure: a failed passive declare closes the channel on the
        broker's side, and a fresh channel is cheaper than working out which state it is in."""
        channel, self._channel = self._channel, None
        self._queues = {}
        if channel is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.close(), 1.0)
            except Exception:  # the channel is being dropped either way
                return

    # -- http (management API) --------------------------------------------------------------------

    async def _read_http(self, url: str) -> float:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise QueueError(
                f"protocol http needs an http(s) management URL in {self.options.connection_from_env}, "
                f"got a {parts.scheme or 'schemeless'} URL"
            )
        headers: dict[str, str] = {}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))
        base = base.rstrip("/")
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_seconds))
        vhost = quote(self.options.vhost_name, safe="")
        values: list[float] = []
        for name in self.queue_names:
            endpoint = f"{base}/api/queues/{vhost}/{quote(name, safe='')}"
            async with self._http.get(endpoint, headers=headers) as response:
                if response.status == 404:
                    raise QueueError(f"queue '{name}' not found in vhost '{self.options.vhost_name}'")
                if response.status == 401:
                    raise QueueError("the management API refused the credentials (HTTP 401)")
                if response.status != 200:
                    raise QueueError(f"queue '{name}': management API answered HTTP {response.status}")
                body = await response.json()
            values.append(self._value_from_stats(name, body))
        return _combine(values, self.options.operation)

    def _value_from_stats(self, name: str, body: Any) -> float:
        if not isinstance(body, dict):
            raise QueueError(f"queue '{name}': unexpected management API answer")
        if self.options.mode in _RATE_FIELDS:
            # A queue nobody has published to (or consumed from) yet has no message_stats: its rate
            # is known to be 0.
            stats = body.get("message_stats") or {}
            rate = (stats.get(_RATE_FIELDS[self.options.mode]) or {}).get("rate", 0.0)
            return float(rate)
        field = "messages_ready" if self.options.exclude_unacknowledged else "messages"
        count = body.get(field)
        if not isinstance(count, int | float):
            # A queue declared a moment ago has no counters until the next statistics collection:
            # not knowing is not zero.
            raise QueueError(f"queue '{name}': the management API has no '{field}' count yet")
        return float(count)

    # -- messages ---------------------------------------------------------------------------------

    def _what(self, url: str | None) -> str:
        queues = ", ".join(f"'{q}'" for q in self.queue_names)
        where = f" on {server_of(url)}" if url else ""
        plural = "queues" if len(self.queue_names) > 1 else "queue"
        return f"trigger {self.label} (rabbitmq {self.options.protocol}, {plural} {queues}{where})"
