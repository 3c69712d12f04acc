"""What this replica wrote that the watch cache has not shown yet: the controller's expectations.

Role: a watch shows a write a little later, not at once, and the ReplicaSet controller creates or
deletes the pods later still. A controller that decides only from its cache right after a write
decides again from the world before the write: it counts free GPUs a moment ago promised to its own
replicas (`a100 5->8`, then `8->10` with 8 GPUs in the cluster), or counts again Pending pods its
scale-down already removed (`24->16`, then `16->14`: running replicas deleted). Kubernetes'
controllers avoid this with expectations (client-go's `ControllerExpectations`): remember what you
wrote and reason from it until the watch has caught up. Callers: `kube.actuator` records each
accepted scale write; `kube.view` and the actuator read `spec_replicas` through it.

A write is shown by the cache once the cached Deployment carries the resourceVersion the write's
answer carried, or a later one (resourceVersions are etcd revisions: comparable integers on every
real API server, though the API calls them opaque; an unparseable one only ever matches exactly), or
already the written value. An expectation older than `ttl` seconds is dropped, so a watch that
missed the event (a relist, say) cannot pin a stale value forever.

The pods are handled in `kube.view` from the expected spec: replicas the ReplicaSet has yet to create
are pending (they are about to claim GPUs), pods beyond the spec are about to go (Pending ones first,
as the ReplicaSet removes them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from autoscaler.kube.objects import DeploymentInfo


@dataclass(frozen=True, slots=True)
class _Written:
    replicas: int
    resource_version: str
    at: float


def _revision(rv: str) -> int | None:
    return int(rv) if rv.isdigit() else None


class Expectations:
    def __init__(self, *, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._written: dict[str, _Written] = {}

    def wrote(self, key: str, replicas: int, resource_version: str) -> None:
        """The API server accepted `spec.replicas = replicas` for `key` (namespace/name) and answered
        with `resource_version`."""
        self._written[key] = _Written(replicas, resource_version, self._clock())

    def pending(self, key: str) -> bool:
        return key in self._written

    def _outstanding(self, dep: DeploymentInfo) -> _Written | None:
        written = self._written.get(dep.key)
        if written is None:
            return None
        seen, wrote = _revision(dep.resource_version), _revision(written.resource_version)
        caught_up = (
            dep.resource_version == written.resource_version
            or (seen is not None and wrote is not None and seen >= wrote)
            or dep.spec_replicas == written.replicas
        )
        if caught_up or self._clock() - written.at > self.ttl:
            del self._written[dep.key]
            return None
        return written

    def spec_replicas(self, dep: DeploymentInfo) -> int:
        """`spec.replicas` as this replica last wrote it, until the cache shows that write."""
        written = self._outstanding(dep)
        return dep.spec_replicas if written is None else written.replicas

    def resource_version(self, dep: DeploymentInfo) -> str:
        """The newest resourceVersion known for `dep`: a write's answer is newer than a lagging cache."""
        written = self._outstanding(dep)
        return dep.resource_version if written is None else written.resource_version

    def forget(self, key: str) -> None:
        self._written.pop(key, None)
