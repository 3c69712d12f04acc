"""The simulated cluster: request queues, pods of each pool, GPU capacity and cost, on a virtual clock.

It plays the part Kubernetes and the inference servers play live. The runner sets each pool's spec
replicas from the engine's plan (`set_replicas`), lets time pass (`advance`), and shows the engine
what a watch cache would (`snapshot`). Between ticks everything happens in continuous time through
one event heap: arrivals, request completions, pods becoming ready and virtual pods being
interrupted, so nothing is rounded to the tick.

Pod life cycle, as a ReplicaSet and the scheduler would drive it:
  UNSCHEDULED (no free GPU in its node group or provider quota; FIFO, first fit)
  -> STARTING (a startup delay sampled per pod) -> READY (serves `concurrency` requests at once)
  -> DRAINING (removed by a scale-down while requests are in flight; takes no new ones) -> GONE.
The snapshot reports as pending only UNSCHEDULED pods (the `PoolStatus.pending_since` contract): a
virtual pod that is provisioning is starting, its wait is the pool's startup time, not its pending
timeout. A READY virtual pod may be interrupted: it vanishes, its requests go back
to the head of the queue and the Deployment creates a replacement. Every pod is charged
gpus_per_replica * cost_per_gpu_hour from the moment it holds a GPU (bound to a node, or accepted by
the virtual provider) until it is gone: an unschedulable pod costs nothing. Draining pods are
reported as `terminating`: they still hold their GPUs, and the engine counts them against the caps.

Callers: `sim.runner` (the tick loop), `sim.sources` (reads queue depth and arrivals), the tests.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from autoscaler.engine.types import ClusterSnapshot, NodeClass, PoolSpec, PoolStatus
from autoscaler.sim.trace import FloatArray, IntArray, Trace

# z of the 95th percentile of a standard normal: turns (median, p95) into a lognormal's sigma.
Z95 = 1.6448536269514722
# Without a stated tail, regular nodes start almost like clockwork while virtual providers (SaladCloud:
# 50 % of instances by 10 min, 90 % by 40 min, see REFERENCE.md) have a heavy tail.
DEFAULT_P95_FACTOR = {NodeClass.REGULAR: 1.3, NodeClass.VIRTUAL: 4.0}


class PodState(Enum):
    UNSCHEDULED = 0
    STARTING = 1
    READY = 2
    DRAINING = 3
    GONE = 4


# Event kinds, in the order they are handled when they fall on the same instant: capacity that frees
# or appears is used before a new arrival is queued.
_COMPLETE = 0
_READY = 1
_INTERRUPT = 2


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """Seconds one request occupies one slot of a replica with relative throughput 1.0."""

    base_seconds: float
    prefill_seconds_per_token: float
    decode_seconds_per_token: float

    def seconds(self, context_tokens: IntArray, generated_tokens: IntArray) -> FloatArray:
        return np.asarray(
            self.base_seconds
            + context_tokens * self.prefill_seconds_per_token
            + generated_tokens * self.decode_seconds_per_token,
            dtype=np.float64,
        )


@dataclass(frozen=True, slots=True)
class WorkloadModel:
    """What the cluster needs about one workload: its pools, its requests and how long they take."""

    name: str
    pools: tuple[PoolSpec, ...]
    trace: Trace
    service: ServiceModel
    concurrency: int


@dataclass(frozen=True, slots=True)
class ProviderModel:
    """A virtual-node provider: how often it loses a running replica, and its GPU quota (None: none)."""

    interruptions_per_hour: float = 0.0
    max_gpus: int | None = None


class _Group:
    """GPUs that pods compete for: a regular node group, or a provider's quota (total None: unlimited)."""

    __slots__ = ("total", "used", "waiting")

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.used = 0
        self.waiting: deque[_Pod] = deque()


class _Pod:
    __slots__ = ("bound", "created", "free", "in_flight", "pool", "ready_at", "seq", "state")

    def __init__(self, seq: int, pool: _Pool, created: float) -> None:
        self.seq = seq
        self.pool = pool
        self.created = created
        self.bound = math.nan  # when it got its GPU: billing starts here
        self.state = PodState.UNSCHEDULED
        self.ready_at = math.nan
        self.free = 0  # free request slots while READY
        self.in_flight: set[int] = set()  # request indices


class _Pool:
    __slots__ = (
        "gpu_seconds",
        "group",
        "interrupt_rng",
        "interruptions",
        "mean_seconds_to_interrupt",
        "median",
        "mu",
        "pods",
        "pods_created",
        "sigma",
        "spec",
        "startup_rng",
        "workload",
    )

    def __init__(self, spec: PoolSpec, workload: _Workload, group: _Group, rate_per_hour: float, seed: int):
        self.spec = spec
        self.workload = workload
        self.group = group
        # Live pods of the Deployment (their count is the spec replicas); DRAINING and GONE pods are not.
        self.pods: list[_Pod] = []
        # Separate seeded streams per pool, so that one pool's draws never shift another's.
        key = zlib.crc32(spec.key.encode())
        self.startup_rng = np.random.default_rng(np.random.SeedSequence([seed, key, 1]))
        self.interrupt_rng = np.random.default_rng(np.random.SeedSequence([seed, key, 2]))
        median = spec.startup_seconds
        p95 = spec.startup_p95_seconds
        if p95 is None:
            p95 = median * DEFAULT_P95_FACTOR[spec.node_class]
        self.median = median
        self.mu = math.log(median) if median > 0 else 0.0
        self.sigma = math.log(p95 / median) / Z95 if median > 0 and p95 > median else 0.0
        self.mean_seconds_to_interrupt = 3600.0 / rate_per_hour if rate_per_hour > 0 else math.inf
        self.gpu_seconds = 0.0  # of pods already gone
        self.interruptions = 0
        self.pods_created = 0

    def startup_delay(self) -> float:
        if self.sigma == 0.0:
            return self.median  # no tail: exactly the median (exp(log(m)) is not always m)
        return float(self.startup_rng.lognormal(self.mu, self.sigma))


class _Workload:
    __slots__ = (
        "attempts",
        "completed",
        "concurrency",
        "deliveries",
        "finish",
        "in_service",
        "model",
        "pools",
        "queue",
        "service",
        "start",
    )

    def __init__(self, model: WorkloadModel) -> None:
        self.model = model
        self.concurrency = model.concurrency
        self.service = model.service.seconds(model.trace.context_tokens, model.trace.generated_tokens)
        n = len(model.trace)
        self.start = np.full(n, np.nan)  # start of the service that completed
        self.finish = np.full(n, np.nan)
        self.attempts = np.zeros(n, dtype=np.int64)  # > 1 after an interruption
        self.queue: deque[int] = deque()
        # Times requests were handed to a replica (RabbitMQ's deliveries), for DeliverGetRate;
        # `delivered_since` drops the ones its readers have passed.
        self.deliveries: deque[float] = deque()
        self.in_service = 0
        self.completed = 0
        self.pools: list[_Pool] = []


@dataclass(frozen=True, slots=True)
class PodView:
    """One pod as `kubectl get pods` would show it, for inspection and tests."""

    created: float
    state: PodState
    ready_at: float  # NaN until ready
    in_flight: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PoolCounts:
    spec: int
    ready: int
    starting: int  # scheduled (regular) or provisioning (virtual), not ready yet
    unscheduled: int


class SimCluster:
    def __init__(
        self,
        workloads: Sequence[WorkloadModel],
        node_groups: Mapping[tuple[str, str], int],
        providers: Mapping[str, ProviderModel] | None = None,
        seed: int = 0,
    ) -> None:
        providers = providers or {}
        self._heap: list[tuple[float, int, int, _Pod, int]] = []
        self._seq = 0
        self._node_groups = {k: _Group(v) for k, v in node_groups.items()}
        self._provider_groups = {
            name: _Group(p.max_gpus) for name, p in providers.items() if p.max_gpus is not None
        }
        self._workloads: dict[str, _Workload] = {}
        self._pools: dict[str, _Pool] = {}
        self._draining: set[_Pod] = set()
        for model in workloads:
            w = _Workload(model)
            self._workloads[model.name] = w
            for spec in model.pools:
                if spec.key in self._pools:
                    raise ValueError(f"pool {spec.key} is listed twice")
                rate = 0.0
                if spec.node_class is NodeClass.REGULAR:
                    group = self._node_groups.get((spec.cluster, spec.gpu_type))
                    if group is None:
                        raise ValueError(
                            f"pool {spec.key} runs on regular {spec.gpu_type} nodes of cluster "
                            f"{spec.cluster}, but no node group has them"
                        )
                else:
                    provider = providers.get(spec.provider or "", ProviderModel())
                    rate = provider.interruptions_per_hour
                    group = self._provider_groups.get(spec.provider or "") or _Group(None)
                pool = _Pool(spec, w, group, rate, seed)
                w.pools.append(pool)
                self._pools[spec.key] = pool
        # All arrivals merged into one time-ordered stream of (workload, request index).
        ws = list(self._workloads.values())
        times = [w.model.trace.arrival for w in ws]
        all_t = np.concatenate([np.zeros(0), *times])
        owners = np.concatenate(
            [np.zeros(0, dtype=np.int64), *(np.full(len(t), i) for i, t in enumerate(times))]
        )
        indices = np.concatenate([np.zeros(0, dtype=np.int64), *(np.arange(len(t)) for t in times)])
        order = np.argsort(all_t, kind="stable")
        self._arrival_t: list[float] = all_t[order].tolist()
        self._arrival_w: list[_Workload] = [ws[i] for i in owners[order].tolist()]
        self._arrival_i: list[int] = indices[order].tolist()
        self._next_arrival = 0

    # ------------------------------------------------------------------------------------------
    # What the runner drives

    def set_replicas(self, pool_key: str, replicas: int, now: float) -> None:
        """Resize a pool's Deployment, as a PATCH of its scale subresource would."""
        pool = self._pools[pool_key]
        current = len(pool.pods)
        if replicas > current:
            for _ in range(replicas - current):
                self._create_pod(pool, now)
        elif replicas < current:
            for pod in self._victims(pool, current - replicas):
                self._remove(pod, now)
            self._schedule(pool.group, now)

    def start_ready(self, pool_key: str, replicas: int, now: float) -> None:
        """Add pods that were already running before the replay: ready at once if they get a GPU."""
        pool = self._pools[pool_key]
        for _ in range(replicas):
            self._create_pod(pool, now)
        for pod in pool.pods:
            if pod.state is PodState.STARTING:
                self._ready(pod, now)  # its pending READY event is ignored: the pod is no longer starting

    def advance(self, until: float) -> None:
        """Let everything happen up to and including `until`."""
        heap = self._heap
        times = self._arrival_t
        n = len(times)
        while True:
            next_event = heap[0][0] if heap else math.inf
            next_arrival = times[self._next_arrival] if self._next_arrival < n else math.inf
            if min(next_event, next_arrival) > until:
                break
            if next_event <= next_arrival:
                at, kind, _, pod, request = heapq.heappop(heap)
                if kind == _COMPLETE:
                    self._complete(pod, request, at)
                elif kind == _READY:
                    self._ready(pod, at)
                else:
                    self._interrupt(pod, at)
            else:
                i = self._next_arrival
                self._next_arrival += 1
                w = self._arrival_w[i]
                w.queue.append(self._arrival_i[i])
                self._dispatch(w, next_arrival)

    def snapshot(self) -> ClusterSnapshot:
        pools = {
            key: PoolStatus(
                spec_replicas=len(pool.pods),
                ready=sum(1 for p in pool.pods if p.state is PodState.READY),
                pending_since=tuple(sorted(p.created for p in pool.pods if p.state is PodState.UNSCHEDULED)),
                terminating=sum(1 for p in self._draining if p.pool is pool),
            )
            for key, pool in self._pools.items()
        }
        free = {key: (g.total or 0) - g.used for key, g in self._node_groups.items()}
        return ClusterSnapshot(pools=pools, free_gpus=free)

    # ------------------------------------------------------------------------------------------
    # What sources, the runner's metrics and the tests read

    def waiting(self, workload: str) -> int:
        return len(self._workloads[workload].queue)

    def in_service(self, workload: str) -> int:
        return self._workloads[workload].in_service

    def queued(self, workload: str) -> list[int]:
        """Indices of the workload's waiting requests, head first."""
        return list(self._workloads[workload].queue)

    def delivered_since(self, workload: str, since: float) -> int:
        """Requests handed to replicas after `since` (a redelivery after an interruption counts
        again, as RabbitMQ counts it). Readers must ask with non-decreasing `since`."""
        deliveries = self._workloads[workload].deliveries
        while deliveries and deliveries[0] <= since:
            deliveries.popleft()
        return len(deliveries)

    def completed(self, workload: str) -> int:
        """Completions counted as they happen, so a request served twice would show here."""
        return self._workloads[workload].completed

    def pods(self, pool_key: str) -> list[PodView]:
        """The pool's live pods, then its draining ones, each in creation order."""
        pool = self._pools[pool_key]
        draining = sorted((p for p in self._draining if p.pool is pool), key=lambda p: p.seq)
        return [
            PodView(p.created, p.state, p.ready_at, tuple(sorted(p.in_flight)))
            for p in [*pool.pods, *draining]
        ]

    def idle(self) -> bool:
        """All arrivals so far are served and no more are to come."""
        return self._next_arrival >= len(self._arrival_t) and all(
            not w.queue and w.in_service == 0 for w in self._workloads.values()
        )

    def pool_counts(self, pool_key: str) -> PoolCounts:
        pool = self._pools[pool_key]
        states = [p.state for p in pool.pods]
        return PoolCounts(
            spec=len(pool.pods),
            ready=states.count(PodState.READY),
            starting=states.count(PodState.STARTING),
            unscheduled=states.count(PodState.UNSCHEDULED),
        )

    def gpus_in_use(self, workload: str) -> int:
        """GPUs held by the workload's pods: scheduled or provisioning, ready, or draining."""
        total = 0
        for pool in self._workloads[workload].pools:
            held = sum(1 for p in pool.pods if p.state is not PodState.UNSCHEDULED)
            held += sum(1 for p in self._draining if p.pool is pool)
            total += held * pool.spec.gpus_per_replica
        return total

    def gpu_seconds(self, pool_key: str, now: float) -> float:
        """GPU-seconds charged to a pool up to `now`, counting pods that still exist."""
        pool = self._pools[pool_key]
        live = [*pool.pods, *(p for p in self._draining if p.pool is pool)]
        held = sum(now - p.bound for p in live if p.state is not PodState.UNSCHEDULED)
        return pool.gpu_seconds + held * pool.spec.gpus_per_replica

    def cost(self, pool_key: str, now: float) -> float:
        spec = self._pools[pool_key].spec
        return self.gpu_seconds(pool_key, now) * spec.cost_per_gpu_hour / 3600.0

    def interruptions(self, pool_key: str) -> int:
        return self._pools[pool_key].interruptions

    def pods_created(self, pool_key: str) -> int:
        return self._pools[pool_key].pods_created

    def requests(self, workload: str) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
        """(start, finish, attempts) per request of the workload's trace; NaN while not served."""
        w = self._workloads[workload]
        return w.start, w.finish, w.attempts

    # ------------------------------------------------------------------------------------------
    # Pods

    def _push(self, at: float, kind: int, pod: _Pod, request: int = -1) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, kind, self._seq, pod, request))

    def _create_pod(self, pool: _Pool, now: float) -> None:
        self._seq += 1
        pod = _Pod(self._seq, pool, now)
        pool.pods.append(pod)
        pool.pods_created += 1
        pool.group.waiting.append(pod)
        self._schedule(pool.group, now)

    def _schedule(self, group: _Group, now: float) -> None:
        """Bind waiting pods to free GPUs in creation order; one that does not fit does not block a
        smaller one behind it, as the kube-scheduler retries each pod on its own."""
        if not group.waiting:
            return
        for pod in list(group.waiting):
            gpus = pod.pool.spec.gpus_per_replica
            if group.total is not None and group.used + gpus > group.total:
                continue
            group.waiting.remove(pod)
            group.used += gpus
            pod.bound = now
            pod.state = PodState.STARTING
            self._push(now + pod.pool.startup_delay(), _READY, pod)

    def _victims(self, pool: _Pool, count: int) -> list[_Pod]:
        """ReplicaSet scale-in order: unscheduled first, then not ready, then ready; newest first."""

        def order(p: _Pod) -> tuple[int, float, int]:
            if p.state is PodState.READY:
                return (2, -p.ready_at, -p.seq)
            return (0 if p.state is PodState.UNSCHEDULED else 1, -p.created, -p.seq)

        return sorted(pool.pods, key=order)[:count]

    def _remove(self, pod: _Pod, now: float) -> None:
        pod.pool.pods.remove(pod)
        if pod.state is PodState.READY and pod.in_flight:
            # Terminating with work in flight: finish it, take nothing new, keep the GPU till then.
            pod.state = PodState.DRAINING
            pod.free = 0
            self._draining.add(pod)
        else:
            self._gone(pod, now)

    def _gone(self, pod: _Pod, now: float) -> None:
        pool = pod.pool
        if pod.state is PodState.UNSCHEDULED:
            pool.group.waiting.remove(pod)
        else:
            pool.group.used -= pool.spec.gpus_per_replica
            pool.gpu_seconds += (now - pod.bound) * pool.spec.gpus_per_replica
        self._draining.discard(pod)
        pod.state = PodState.GONE

    def _ready(self, pod: _Pod, now: float) -> None:
        if pod.state is not PodState.STARTING:
            return  # removed while starting
        pod.state = PodState.READY
        pod.ready_at = now
        pod.free = pod.pool.workload.concurrency
        pool = pod.pool
        if pool.mean_seconds_to_interrupt < math.inf:
            self._push(
                now + float(pool.interrupt_rng.exponential(pool.mean_seconds_to_interrupt)), _INTERRUPT, pod
            )
        self._dispatch(pool.workload, now)

    def _interrupt(self, pod: _Pod, now: float) -> None:
        if pod.state not in (PodState.READY, PodState.DRAINING):
            return  # already removed by a scale-down
        pool = pod.pool
        w = pool.workload
        pool.interruptions += 1
        # Lost work starts over, ahead of everything that arrived later.
        w.queue.extendleft(sorted(pod.in_flight, reverse=True))
        w.in_service -= len(pod.in_flight)
        pod.in_flight.clear()
        replace = pod.state is PodState.READY
        if replace:
            pool.pods.remove(pod)
        self._gone(pod, now)
        self._schedule(pool.group, now)
        if replace:
            self._create_pod(pool, now)  # the Deployment keeps its replica count
        self._dispatch(w, now)

    # ------------------------------------------------------------------------------------------
    # Requests

    def _dispatch(self, w: _Workload, now: float) -> None:
        queue = w.queue
        while queue:
            best: _Pod | None = None
            best_key = (0.0, 0)
            for pool in w.pools:
                for pod in pool.pods:
                    # Faster replicas first, then the emptiest: queue consumers with free prefetch
                    # slots all pull, and the fast ones come back for more sooner.
                    if pod.free > 0 and pod.state is PodState.READY:
                        key = (pool.spec.relative_throughput, pod.free)
                        if best is None or key > best_key:
                            best, best_key = pod, key
            if best is None:
                return
            request = queue.popleft()
            best.free -= 1
            best.in_flight.add(request)
            w.in_service += 1
            w.deliveries.append(now)
            w.start[request] = now
            w.attempts[request] += 1
            self._push(
                now + w.service[request] / best.pool.spec.relative_throughput, _COMPLETE, best, request
            )

    def _complete(self, pod: _Pod, request: int, now: float) -> None:
        if request not in pod.in_flight:
            return  # the pod was interrupted; the request went back to the queue
        pod.in_flight.remove(request)
        w = pod.pool.workload
        w.in_service -= 1
        w.completed += 1
        w.finish[request] = now
        if pod.state is PodState.DRAINING:
            if not pod.in_flight:
                self._gone(pod, now)
                self._schedule(pod.pool.group, now)
            return
        pod.free += 1
        self._dispatch(w, now)
