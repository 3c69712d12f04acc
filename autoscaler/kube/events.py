"""Kubernetes Events on managed Deployments: `kubectl describe deployment` shows why it was resized.

Role: post one core/v1 Event per resize, reason `GPUAutoscalerScaled`, with the engine's reason as
the message. Caller: `kube.actuator`, after a successful scale write (so only the leader posts).

Events are best effort: a failure to post one is logged and never fails or retries the resize; the
decision itself is also in the logs, the spans and `autoscaler explain`. Messages are cut to the
API's limit of 1024 bytes (UTF-8, not characters: the server counts bytes).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from autoscaler.kube.objects import DeploymentInfo

log = logging.getLogger(__name__)

SCALED_REASON = "GPUAutoscalerScaled"
MAX_MESSAGE_BYTES = 1024
COMPONENT = "gpu-autoscaler"


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    data = message.encode()
    if len(data) <= limit:
        return message
    marker = "..."
    # Cut on a character boundary so the result is still valid UTF-8.
    return data[: limit - len(marker)].decode(errors="ignore") + marker


class EventRecorder:
    """`instance` names the replica in each Event (`source.host`, `reportingInstance`): the live
    controller passes the pod name (`AUTOSCALER_POD_NAME`), so `kubectl describe` tells which of the
    replicas resized; the OS hostname is only the fallback for a process outside a pod."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        component: str = COMPONENT,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.component = component
        self.instance = instance or socket.gethostname()
        self._clock = clock
        self.posted = 0
        self.failed = 0

    async def scaled(
        self, deployment: DeploymentInfo, from_replicas: int, to_replicas: int, reason: str
    ) -> None:
        message = f"Scaled from {from_replicas} to {to_replicas} replicas: {reason}"
        await self.record(deployment, SCALED_REASON, message)

    async def record(
        self, deployment: DeploymentInfo, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        involved = client.V1ObjectReference(
            api_version="apps/v1",
            kind="Deployment",
            name=deployment.name,
            namespace=deployment.namespace,
            uid=deployment.uid or None,
            resource_version=deployment.resource_version or None,
        )
        await self._post(deployment.namespace, involved, reason, message, event_type, "Scale")

    async def about_pod(
        self, name: str, namespace: str, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        """An Event on a Pod: the autoscaler's own, for what concerns no Deployment (a member
        cluster lost or found again), so `kubectl describe pod` and `kubectl get events` show it."""
        involved = client.V1ObjectReference(api_version="v1", kind="Pod", name=name, namespace=namespace)
        await self._post(namespace, involved, reason, message, event_type, "Watch")

    async def _post(
        self,
        namespace: str,
        involved: client.V1ObjectReference,
        reason: str,
        message: str,
        event_type: str,
        action: str,
    ) -> None:
        """Post an Event about `involved`, in its `namespace` (Events are namespaced)."""
        at = self._clock()
        stamp = datetime.fromtimestamp(at, UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                # client-go's naming: the object's name and the time in hex nanoseconds, unique enough.
                name=f"{involved.name}.{int(at * 1e9):x}",
                namespace=namespace,
            ),
            involved_object=involved,
            reason=reason,
            message=truncate_message(message),
            type=event_type,
            count=1,
            first_timestamp=stamp,
            last_timestamp=stamp,
            source=client.V1EventSource(component=self.component, host=self.instance),
            reporting_component=self.component,
            reporting_instance=self.instance,
            action=action,
        )
        try:
            await self._core.create_namespaced_event(namespace, body)
            self.posted += 1
        except (ApiException, OSError, TimeoutError) as exc:
            self.failed += 1
            where = f"{involved.kind} {involved.namespace}/{involved.name}"
            log.warning("could not post event %s on %s: %s", reason, where, exc)
