"""Build the `kubernetes.aio` ApiClient the rest of `autoscaler.kube` shares.

In a pod: the service account (in-cluster config). Elsewhere: a kubeconfig file (`$KUBECONFIG`,
else `~/.kube/config`). One client, one connection pool, for the cache's watches, the actuator's
writes, events and the leader election. Caller: the live controller; tests point it at the fake API
server's kubeconfig.

The client's own retries are switched off (`retries=None`): the cache and the actuator decide when
to retry and how long to back off, and a hidden retry inside the client would both double writes
the actuator thinks failed and blur the request counts the API-call benchmark reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes.aio import client, config

_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


async def load_configuration(
    kubeconfig: str | Path | None = None, context: str | None = None
) -> client.Configuration:
    """The connection settings: the named kubeconfig, else in-cluster when running in a pod, else the
    default kubeconfig. Raises `kubernetes.aio.config.ConfigException` with the client's message
    when none works."""
    configuration = client.Configuration()
    if kubeconfig is None and "KUBECONFIG" not in os.environ and _SERVICE_ACCOUNT_TOKEN.exists():
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        path = str(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG")
        await config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=configuration, persist_config=False
        )
    configuration.retries = None
    return configuration


async def make_api_client(
    kubeconfig: str | Path | None = None, context: str | None = None
) -> client.ApiClient:
    """A ready ApiClient; the caller closes it (`await api.close()`)."""
    return client.ApiClient(await load_configuration(kubeconfig, context))


# ----------------------------------------------------------------------------------------------
# Retry helpers shared by the cache and the actuator


def is_retryable(status: int | None) -> bool:
    """Worth retrying after a pause: throttled (429) or a server-side failure (5xx); status 0/None
    is a connection that broke before any answer."""
    return status is None or status in {0, 429} or status >= 500


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The server's `Retry-After` in seconds, when it sent one."""
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
