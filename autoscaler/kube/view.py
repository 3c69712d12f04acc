"""The engine's `ClusterSnapshot`, built from the watch cache without any API call.

`KubeClusterView` is the live implementation of the controller's `ClusterView` protocol.

Role: translate Kubernetes objects into the engine's vocabulary. Caller: the live controller, once
per reconcile (`snapshot()` is synchronous and reads only the cache). `set_pools` is called at start
and after every policy reload.

Per pool (`namespace/deployment`):
- `spec_replicas`: the Deployment's `spec.replicas`; `ready`: `status.readyReplicas`;
- `pending_since`: creation times of the Deployment's pods that are not bound to a node
  (`spec.nodeName` empty, whether the scheduler has already said Unschedulable or not yet looked);
  a pod bound to a node and still starting is not pending: it is startup time, which the engine
  models separately. The API server stamps pods in wall-clock time; they are moved onto `clock`,
  the clock whose readings the loop passes to the engine as `now` (the controller's default,
  `time.monotonic`), by the offset between the two clocks read at each snapshot;
- `terminating`: its pods with a `deletionTimestamp` that have not finished: they still hold GPUs;
- `paused`: the annotation `gpu-autoscaler/paused: "true"` on the Deployment.
A pool whose Deployment does not exist (yet) is reported paused at zero replicas, so the engine
grants it nothing and plans no write that could only fail; this is logged once per pool.

Pods are attributed to Deployments through their ReplicaSet ownerReference (see
`objects.owner_deployment` for why not the label selector).

`free_gpus[(cluster, gpu type)]`: over the regular nodes (see `kube.nodes`) that are Ready and not
cordoned, allocatable `nvidia.com/gpu` minus the GPUs requested by the non-finished pods bound
there (terminating pods included: they still hold their GPUs), never below zero per node. The
autoscaler runs in one cluster, named by `cluster`; the engine subtracts our own unbound pods' wishes
itself, so they are not subtracted here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from autoscaler.engine.types import ClusterSnapshot, PoolSpec, PoolStatus
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.nodes import NodeClassifier

log = logging.getLogger(__name__)

_MISSING = PoolStatus(spec_replicas=0, paused=True)


class KubeClusterView:
    def __init__(
        self,
        cache: KubeCache,
        pools: Iterable[PoolSpec] = (),
        *,
        cluster: str = "default",
        classifier: NodeClassifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self._clock = clock
        self._wall_clock = wall_clock
        self.cluster = cluster
        self.classifier = classifier or NodeClassifier()
        self._pools: tuple[PoolSpec, ...] = ()
        self._missing_reported: set[str] = set()
        self.set_pools(pools)

    @property
    def pools(self) -> tuple[PoolSpec, ...]:
        return self._pools

    def set_pools(self, pools: Iterable[PoolSpec]) -> None:
        self._pools = tuple(pools)
        self.cache.manage(p.key for p in self._pools)

    def snapshot(self) -> ClusterSnapshot:
        statuses: dict[str, PoolStatus] = {}
        offset = self._clock() - self._wall_clock()
        for pool in self._pools:
            if pool.key not in statuses:
                statuses[pool.key] = self.pool_status(pool.key, offset)
        return ClusterSnapshot(pools=statuses, free_gpus=self.free_gpus())

    def pool_status(self, key: str, offset: float = 0.0) -> PoolStatus:
        """`offset`: added to the API server's wall-clock stamps to put them on `clock`."""
        dep = self.cache.deployment(key)
        if dep is None:
            if key not in self._missing_reported:
                self._missing_reported.add(key)
                log.warning("Deployment %s of a pool does not exist: treated as paused at 0", key)
            return _MISSING
        self._missing_reported.discard(key)
        pending: list[float] = []
        terminating = 0
        for pod in self.cache.pods_of(key):
            if pod.terminal:
                continue
            if pod.deleted is not None:
                terminating += 1
            elif not pod.bound:
                pending.append(pod.created + offset)
        pending.sort()
        return PoolStatus(
            spec_replicas=dep.spec_replicas,
            ready=dep.ready_replicas,
            pending_since=tuple(pending),
            paused=dep.paused,
            terminating=terminating,
        )

    def free_gpus(self) -> dict[tuple[str, str], int]:
        free: dict[tuple[str, str], int] = {}
        for node in self.cache.nodes():
            if node.allocatable_gpus <= 0 or self.classifier.is_virtual(node):
                continue
            gpu_type = self.classifier.gpu_type(node)
            if gpu_type is None:
                continue
            key = (self.cluster, gpu_type)
            if not self.classifier.schedulable(node):
                free.setdefault(key, 0)
                continue
            used = sum(p.gpus for p in self.cache.pods_on(node.name) if not p.terminal)
            free[key] = free.get(key, 0) + max(0, node.allocatable_gpus - used)
        return free
