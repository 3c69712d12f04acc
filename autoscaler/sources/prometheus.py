"""The value of one PromQL instant query, as KEDA's prometheus scaler reads it.

prometheus-api-client's `PrometheusConnect` is blocking (requests), so each query runs in a worker
thread (`asyncio.to_thread`) bounded by the trigger's timeout, and the event loop never waits on
the network. Exactly one series with a finite value is a reading; an empty result, NaN or infinity,
more than one series or any HTTP failure is an error reading, never a zero: KEDA users lost
deployments to their minimum when an outage made a query come back empty. `ignoreNullValues: true`
restores KEDA's behaviour for an empty result (it reads as 0). Callers: `sources.build_source`.

Credentials (bearer token, basic-auth password) come from environment variables named in the
trigger, are read on the first query, and are masked (`redact`) out of every error message.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from autoscaler.config.access import DEFAULT_ACCESS, SecretAccess
from autoscaler.config.models import PrometheusOptions
from autoscaler.engine.types import Reading
from autoscaler.sources.base import describe_exception, redact, remember, secrets_of_url, server_of, spellings

_MAX_DETAIL = 300


class QueryError(Exception):
    """The query ran but its answer is not one number."""


def value_of(result: Any, ignore_null_values: bool) -> float:
    """One number from the `result` of an instant query, or QueryError saying why not.

    `result` is `data.result` of the HTTP API: a list of `{"metric": ..., "value": [t, "v"]}` for
    a vector, `[t, "v"]` for a scalar."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        raw = result[1]  # a scalar (e.g. `scalar(...)` or a literal)
    elif isinstance(result, list):
        if not result:
            if ignore_null_values:
                return 0.0
            raise QueryError("empty result (set ignoreNullValues: true to read an empty result as 0)")
        if len(result) > 1:
            raise QueryError(
                f"{len(result)} series in the result; the query must return exactly one "
                "(aggregate it, e.g. with sum(...))"
            )
        series = result[0]
        if not isinstance(series, dict) or "value" not in series:
            raise QueryError("not an instant vector (a range query or range vector?)")
        raw = series["value"][1]
    else:
        raise QueryError(f"unexpected result type {type(result).__name__}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise QueryError(f"value {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise QueryError(f"value is {raw}")
    return value


class PrometheusSource:
    """One prometheus trigger. `read()` never raises: failures come back as a `Reading` with an error.

    `query_params` are extra parameters of `/api/v1/query` (e.g. `time`, to query a fixed instant);
    policy files do not set them, tests and replays do. `what` is how messages name the reader
    (`sources.podload` queries through this class for idle-first scale-in)."""

    def __init__(
        self,
        label: str,
        options: PrometheusOptions,
        server: str,
        environ: Mapping[str, str],
        clock: Callable[[], float],
        query_params: Mapping[str, str] | None = None,
        access: SecretAccess = DEFAULT_ACCESS,
        what: str = "trigger",
    ) -> None:
        self.label = label
        self.what = what
        self.options = options
        self.server = server.rstrip("/")
        self.poll_seconds = options.poll_seconds
        self._environ = environ
        self._clock = clock
        self._params = dict(query_params or {})
        self._client: PrometheusConnect | None = None
        self._access = access
        self._secrets: list[str] = secrets_of_url(server)
        remember(self._secrets)

    async def read(self) -> Reading:
        at = self._clock()
        try:
            result = await self.query(self.options.query)
        except QueryError as exc:
            return Reading(None, at, str(exc))
        try:
            value = value_of(result, self.options.ignore_null_values)
        except QueryError as exc:
            return Reading(None, at, self.message(str(exc)))
        return Reading(value, at)

    async def query(self, promql: str) -> Any:
        """`data.result` of one instant query; QueryError (its message already masked and naming
        the trigger) for every failure."""
        try:
            client = self._client or self._connect()
            # The thread keeps running past the timeout only if requests ignores its own timeout;
            # wait_for bounds what the controller waits for either way.
            return await asyncio.wait_for(
                asyncio.to_thread(
                    client.custom_query, promql, params=self._params, timeout=self.options.timeout_seconds
                ),
                self.options.timeout_seconds + 1.0,
            )
        except QueryError as exc:
            raise QueryError(self.message(str(exc))) from None
        except TimeoutError:
            raise QueryError(self.message(f"no answer within {self.options.timeout_seconds:g}s")) from None
        except PrometheusApiClientException as exc:
            raise QueryError(self.message(str(exc))) from None
        except Exception as exc:  # requests' connection errors and anything else: a failed reading
            raise QueryError(self.message(describe_exception(exc))) from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client._session.close()

    def _connect(self) -> PrometheusConnect:
        headers = dict(self.options.custom_headers)
        auth: tuple[str, str] | None = None
        # Header values may be credentials too (an API key header): mask them like the token.
        self._hide(*(v for v in headers.values() if len(v) >= 4))
        refused = self._access.server_refusal(self.server, self.options.auth_modes is not None)
        if refused is not None:
            raise QueryError(f"serverAddress: {refused}")  # before any variable is read
        if self.options.auth_modes == "bearer":
            token = self._env(self.options.token_from_env, "tokenFromEnv")
            self._hide(token)
            headers["Authorization"] = f"Bearer {token}"
        elif self.options.auth_modes == "basic":
            user = self._env(self.options.username_from_env, "usernameFromEnv")
            password = self._env(self.options.password_from_env, "passwordFromEnv")
            # A server that echoes the request may print the header, which carries both base64'd.
            self._hide(password, base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
            auth = (user, password)
        # No retries inside the client: it would sleep between attempts in its thread, and the
        # controller already retries with backoff and jitter.
        self._client = PrometheusConnect(
            url=self.server,
            headers=headers or None,
            auth=auth,
            retry=Retry(total=0, raise_on_status=False),
            timeout=self.options.timeout_seconds,  # type: ignore[arg-type,unused-ignore]  # floats work
        )
        return self._client

    def _env(self, name: str | None, option: str) -> str:
        refused = self._access.env_refusal(name or "", option)
        if refused is not None:
            raise QueryError(f"{option}: {refused}")
        value = self._environ.get(name or "")
        if not value:
            raise QueryError(f"environment variable {name} ({option}) is not set")
        return value

    def _hide(self, *secrets: str) -> None:
        found = [form for secret in secrets for form in spellings(secret)]
        self._secrets.extend(found)
        remember(found)

    def message(self, detail: str) -> str:
        """`detail` as an error of this source: masked, cut, naming the trigger, query and server."""
        # Mask first, then cut: a cut through a secret would leave a prefix no mask matches.
        detail = redact(detail, self._secrets)
        if len(detail) > _MAX_DETAIL:
            detail = detail[:_MAX_DETAIL] + "..."
        return redact(
            f"{self.what} {self.label} (prometheus query '{self.options.query}' "
            f"on {server_of(self.server)}): {detail}",
            self._secrets,
        )
