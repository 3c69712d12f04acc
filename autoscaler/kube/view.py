"""The engine's `ClusterSnapshot`, built from the watch cache without any API call.

`KubeClusterView` is the live implementation of the controller's `ClusterView` protocol.

Role: translate Kubernetes objects into the engine's vocabulary. Caller: the live controller, once
per reconcile (`snapshot()` is synchronous and reads only the cache). `set_pools` is called at start
and after every policy reload.

Per pool (`namespace/deployment`), reasoning from what this replica wrote and not only from what the
watch has shown yet (`kube.expectations`):
- `spec_replicas`: the Deployment's `spec.replicas`, or the value this replica last wrote while the
  watch has not shown that write; `ready`: `status.readyReplicas`, less the pods whose Ready is only
  a provider's word at creation (Ready, but no container reports a running state): SaladCloud's
  virtual kubelet marks a pod Ready when it creates the container group, and only its tracker later
  reports whether an instance runs (REFERENCE.md, "Virtual nodes"), minutes later on a cold start.
  Counted as ready, those pods would read as serving capacity: the engine's scale-in would take
  replicas they do not replace yet, a rebalance would retire the pool they replace, and a policy
  would learn a service rate or end an order from replicas that serve nothing;
- `pending_since`: creation times of the Deployment's pods that are not bound to a node
  (`spec.nodeName` empty, whether the scheduler has already said Unschedulable or not yet looked),
  plus one entry per replica the ReplicaSet has not created yet (stamped when the shortfall was
  first seen): those are about to claim free GPUs too. Pods beyond the spec are about to be removed,
  Pending ones first (the ReplicaSet's order), so that many Pending pods are not counted: a pod a
  scale-down already gave up must not be given up twice. A pod bound to a node and still starting is
  not pending: it is startup time, which the engine models separately. The API server stamps pods
  in wall-clock time; they are moved onto `clock`, the clock whose readings the loop passes to the
  engine as `now`, by the offset between the two clocks read at each snapshot;
- `terminating`: its pods with a `deletionTimestamp` that have not finished: they still hold GPUs;
- `surplus`: its other pods beyond the spec (a rollout's surge, a scale-down not carried out yet):
  they hold GPUs as well, so the caps count every pod, not the spec;
- `paused`: the annotation `gpu-autoscaler/paused: "true"` on the Deployment.

Pools that a reload dropped (their workload left the files, or a pool's Deployment was renamed) are
reported in `ClusterSnapshot.unmanaged` while their Deployment still has pods or replicas: their GPUs
count against the caps until they are gone, and a warning names them once.
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

from autoscaler.engine.types import ClusterSnapshot, PoolSpec, PoolStatus, UnmanagedPool
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.expectations import Expectations
from autoscaler.kube.nodes import NodeClassifier
from autoscaler.kube.objects import DeploymentInfo

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
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] = time.time,
        expectations: Expectations | None = None,
    ) -> None:
        self.cache = cache
        self.expectations = expectations or Expectations()
        # Pool key -> when its Deployment was first seen with fewer pods than replicas (on `clock`).
        self._short_since: dict[str, float] = {}
        # Pool key -> (the Deployment object, its spec replicas, its pods' generation, the status
        # made from them): the same status object again while nothing it was made from changed, so
        # a snapshot costs less and the incremental engine knows the pool unchanged by identity.
        # Not for a status with pending pods when `clock` is not the wall clock: their times move
        # with the offset between the two clocks, read at each snapshot.
        self._statuses: dict[str, tuple[DeploymentInfo, int, int, PoolStatus]] = {}
        # Pools dropped by a reload whose Deployments may still hold GPUs, by key.
        self._unmanaged: dict[str, PoolSpec] = {}
        self._unmanaged_reported: set[str] = set()
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
        old = {p.key: p for p in self._pools}
        self._pools = tuple(pools)
        keys = {p.key for p in self._pools}
        for key, pool in old.items():
            if key not in keys:
                self._unmanaged[key] = pool
                self._statuses.pop(key, None)
        for key in keys:
            self._unmanaged.pop(key, None)
        self._manage()

    def _manage(self) -> None:
        # Unmanaged Deployments' changes still matter: their pods going away frees capacity.
        self.cache.manage([*(p.key for p in self._pools), *self._unmanaged])

    def snapshot(self) -> ClusterSnapshot:
        statuses: dict[str, PoolStatus] = {}
        now = self._clock()
        # One clock for both (the default, and the live wiring's): there is no offset to measure.
        # Read twice, it would come out as the time between the two reads, and every pending pod's
        # time would move a little at every snapshot.
        offset = 0.0 if self._clock is self._wall_clock else now - self._wall_clock()
        for pool in self._pools:
            if pool.key not in statuses:
                statuses[pool.key] = self.pool_status(pool.key, offset, now)
        return ClusterSnapshot(pools=statuses, free_gpus=self.free_gpus(), unmanaged=self._still_held())

    def pool_status(self, key: str, offset: float = 0.0, now: float | None = None) -> PoolStatus:
        """`offset`: added to the API server's wall-clock stamps to put them on `clock`; `now`: a
        reading of `clock` (the time a shortfall of pods is first seen)."""
        dep = self.cache.deployment(key)
        if dep is None:
            if key not in self._missing_reported:
                self._missing_reported.add(key)
                log.warning("Deployment %s of a pool does not exist: treated as paused at 0", key)
            return _MISSING
        self._missing_reported.discard(key)
        spec = self.expectations.spec_replicas(dep)
        generation = self.cache.pods_generation(key)
        made = self._statuses.get(key)
        if made is not None and made[0] is dep and made[1] == spec and made[2] == generation:
            return made[3]
        live, terminating, unbound, unproven = _pods(self.cache, key, offset)
        if live > spec:
            # The ReplicaSet removes the excess, unbound pods first and the newest of them first.
            pending = unbound[: max(0, len(unbound) - (live - spec))]
            self._short_since.pop(key, None)
        elif live < spec:
            since = self._short_since.setdefault(key, self._clock() if now is None else now)
            pending = sorted(unbound + [since] * (spec - live))
        else:
            pending = unbound
            self._short_since.pop(key, None)
        status = PoolStatus(
            spec_replicas=spec,
            ready=max(0, dep.ready_replicas - unproven),
            pending_since=tuple(pending),
            paused=dep.paused,
            terminating=terminating,
            surplus=max(0, live - spec),
        )
        if pending and self._clock is not self._wall_clock:
            # Its pending times are on `clock` through an offset read at each snapshot.
            self._statuses.pop(key, None)
        else:
            self._statuses[key] = (dep, spec, generation, status)
        return status

    def _still_held(self) -> tuple[UnmanagedPool, ...]:
        held: list[UnmanagedPool] = []
        for key, pool in list(self._unmanaged.items()):
            dep = self.cache.deployment(key)
            replicas = _pods_holding(self.cache, key, dep)
            if replicas == 0:
                del self._unmanaged[key]
                self._unmanaged_reported.discard(key)
                self._manage()
                log.info("Deployment %s is no longer managed and holds no GPUs any more", key)
                continue
            if key not in self._unmanaged_reported:
                self._unmanaged_reported.add(key)
                log.warning(
                    "Deployment %s is no longer managed (its pool left the policy files) but holds %d "
                    "replica(s) of %d GPU(s): they count against the caps until it is scaled to 0 or deleted",
                    key,
                    replicas,
                    pool.gpus_per_replica,
                )
            held.append(UnmanagedPool(pool, replicas))
        return tuple(held)

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


def _pods(cache: KubeCache, key: str, offset: float = 0.0) -> tuple[int, int, list[float], int]:
    """A Deployment's unfinished pods: (not terminating, terminating, creation times of the
    unbound ones moved onto the view's clock by `offset`, oldest first, and how many of those not
    terminating are Ready on a provider's word only: no container running)."""
    unbound: list[float] = []
    live = terminating = unproven = 0
    for pod in cache.pods_of(key):
        if pod.terminal:
            continue
        if pod.deleted is not None:
            terminating += 1
            continue
        live += 1
        if not pod.bound:
            unbound.append(pod.created + offset)
        elif pod.ready and not pod.running:
            unproven += 1
    unbound.sort()
    return live, terminating, unbound, unproven


def _pods_holding(cache: KubeCache, key: str, dep: DeploymentInfo | None) -> int:
    """Replicas of a Deployment that hold GPUs: every unfinished pod, and replicas written but not
    created yet."""
    live, terminating, _, _ = _pods(cache, key)
    spec = dep.spec_replicas if dep is not None else 0
    return max(spec, live) + terminating
