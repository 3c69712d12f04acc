"""Placement: which pools of one workload hold its replicas.

For each workload this stage turns "the workload should have D units" into an `Ask` for the limits
stage: the replicas it keeps in each pool and the pools (in preference order) where it may add more.

- Pools are filled in the order the policy file lists them: the operator's preference, normally
  regular (already paid for) before virtual, which no cost ranking could know.
- Scale-in takes replicas from the last pool first (virtual before regular).
- Replicas already running stay where they are: a freed regular GPU does not pull a virtual replica
  back (no flapping between pools); only new replicas go to the preferred pool.
- Pods Pending (unschedulable) longer than the pool's timeout are given up: the pool is shrunk by
  that many and blocked for one more timeout, so their capacity spills to the next pool instead of
  bouncing back on the next reconcile.

Callers: `engine.reconcile`. The cross-workload part (caps, fairness) is in `engine.limits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autoscaler.engine.types import ClusterSnapshot, Dim, NodeClass, PoolSpec, PoolStatus

EPS = 1e-9
_ABSENT = PoolStatus(0)


@dataclass(slots=True)
class PoolAsk:
    """One pool of one workload, as the limits stage sees it."""

    spec: PoolSpec
    current: int  # spec replicas now (they hold GPUs until they are gone)
    keep: int  # replicas placement keeps, before caps
    room: int | None  # how many it may add beyond `keep`; None = unbounded
    cap_dims: tuple[Dim, ...]  # caps that every replica of this pool counts against
    add_dims: tuple[Dim, ...]  # cap_dims plus the free-GPU group a new replica must fit in
    pending: int = 0  # unscheduled pods (they wait for free GPUs, so they take them first)
    terminating: int = 0  # removed pods still holding GPUs until they exit
    surplus: int = 0  # pods beyond `current` not terminating yet (rollout surge, a scale-down in flight)
    paused: bool = False
    gave_up: int = 0  # pods Pending past the timeout that placement gave up (their capacity spills)


@dataclass(slots=True)
class Ask:
    """What one workload wants from the limits stage."""

    name: str
    priority: int
    weight: float
    min_units: int
    desired_units: float
    pools: list[PoolAsk]


def stuck_pending(status: PoolStatus, pool: PoolSpec, now: float) -> int:
    if not status.pending_since:
        return 0
    limit = now - pool.pending_timeout_seconds
    return sum(1 for t in status.pending_since if t <= limit)


def usage_dims(pool: PoolSpec) -> tuple[Dim, ...]:
    """Every dimension a replica of `pool` counts under, capped or not (`PoolSpec.usage_dims`)."""
    return pool.usage_dims


def cap_dims(
    pool: PoolSpec, type_caps: Mapping[tuple[str, str], int], provider_caps: Mapping[str, int]
) -> tuple[Dim, ...]:
    """The dimensions of `usage_dims` that have a cap (the company's always: without a company
    cap it is simply not among the caps the limits stage counts)."""
    dims = pool.usage_dims
    typed = (pool.cluster, pool.gpu_type) in type_caps
    if pool.provider is not None and pool.provider in provider_caps:
        return dims if typed else (dims[0], dims[2])
    return dims[:2] if typed else dims[:1]


def free_dim(pool: PoolSpec, snapshot: ClusterSnapshot) -> Dim | None:
    if pool.node_class is NodeClass.REGULAR and (pool.cluster, pool.gpu_type) in snapshot.free_gpus:
        return ("free", pool.cluster, pool.gpu_type)
    return None


@dataclass(frozen=True, slots=True)
class Placement:
    pools: list[PoolAsk]
    blocked_until: dict[str, float]
    steps: tuple[str, ...]


def place(
    pools: tuple[PoolSpec, ...],
    statuses: Mapping[str, PoolStatus],
    desired_units: float,
    blocked_until: Mapping[str, float],
    snapshot: ClusterSnapshot,
    type_caps: Mapping[tuple[str, str], int],
    provider_caps: Mapping[str, int],
    now: float,
) -> Placement:
    """Keep what is running, trim from the back to `desired_units`, and say where more may go."""
    steps: list[str] = []
    blocked = {k: t for k, t in blocked_until.items() if t > now} if blocked_until else {}
    asks: list[PoolAsk] = []
    capacity = 0.0
    for i, pool in enumerate(pools):
        status = statuses.get(pool.key) or _ABSENT
        stuck = 0 if status.paused else stuck_pending(status, pool, now)
        timeout = pool.pending_timeout_seconds
        # Giving up stuck pods only helps when a later pool could take new replicas at all (as
        # things stood before this reconcile blocked anything). With none, they are kept (they may
        # still schedule) rather than deleted and created again one timeout later, over and over.
        later = pools[i + 1 :]
        if stuck and not any(pool_room(p, statuses.get(p.key), blocked_until, now) != 0 for p in later):
            blocked[pool.key] = now + timeout
            steps.append(
                f"{stuck} pod(s) of {pool.deployment} Pending over {timeout:g}s: kept, no later pool "
                f"can take them; the pool takes no new replicas for {timeout:g}s"
            )
            stuck = 0
        elif stuck:
            blocked[pool.key] = now + timeout
            steps.append(
                f"{stuck} pod(s) of {pool.deployment} Pending over {timeout:g}s: given up, pool "
                f"blocked for {timeout:g}s, capacity spills to the next pool"
            )
        keep = status.spec_replicas - stuck
        room: int | None
        if status.paused or pool.key in blocked:
            room = 0
        elif pool.max_replicas is not None:
            room = max(0, pool.max_replicas - keep)
        else:
            room = None
        cdims = cap_dims(pool, type_caps, provider_caps)
        fdim = free_dim(pool, snapshot)
        asks.append(
            PoolAsk(
                spec=pool,
                current=status.spec_replicas,
                keep=keep,
                room=room,
                cap_dims=cdims,
                add_dims=(*cdims, fdim) if fdim else cdims,
                pending=len(status.pending_since),
                terminating=status.terminating,
                surplus=status.surplus,
                paused=status.paused,
                gave_up=stuck,
            )
        )
        capacity += keep * pool.relative_throughput
    # Scale in from the last pool first, whole replicas only, never below the desired capacity.
    for a in reversed(asks):
        if capacity <= desired_units + EPS:
            break
        if a.paused or a.keep == 0:
            continue
        thr = a.spec.relative_throughput
        drop = min(a.keep, int((capacity - desired_units) / thr + EPS))
        if drop:
            a.keep -= drop
            capacity -= drop * thr
    return Placement(asks, blocked, tuple(steps))


def pool_room(
    pool: PoolSpec,
    status: PoolStatus | None,
    blocked_until: Mapping[str, float],
    now: float,
    free_gpus: Mapping[tuple[str, str], int] | None = None,
) -> int | None:
    """The new pods `pool` could take now as far as its own workload can tell (None: no bound
    known): none while paused or blocked after a pending timeout, at most up to its maxReplicas, and
    for a regular pool, when `free_gpus` is given, what its nodes' free GPUs fit after its own
    unscheduled pods (they take free GPUs first, as in the limits stage). Caps shared with other
    workloads are the limits stage's and not counted here."""
    status = status or _ABSENT
    if status.paused or blocked_until.get(pool.key, -math.inf) > now:
        return 0
    room = None if pool.max_replicas is None else max(0, pool.max_replicas - status.spec_replicas)
    if free_gpus is not None and pool.node_class is NodeClass.REGULAR:
        free = free_gpus.get((pool.cluster, pool.gpu_type))
        if free is not None:
            fit = max(0, free // max(pool.gpus_per_replica, 1) - len(status.pending_since))
            room = fit if room is None else min(room, fit)
    return room


def first_open_pool(pools: tuple[PoolSpec, ...], rooms: Sequence[int | None]) -> PoolSpec:
    """The pool new replicas would go to first, given each pool's `pool_room` (with the free GPUs):
    its startup time is the policy's look-ahead.

    A regular pool whose nodes have no free GPU left (after what its own unscheduled pods wait for)
    is skipped: its next replica would sit Pending and spill, so sizing for its 90 s startup while
    the replicas really land on a virtual pool that takes minutes would order them too late."""
    for p, room in zip(pools, rooms, strict=True):
        if room != 0:
            return p
    return pools[0]
