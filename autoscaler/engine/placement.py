"""Placement: which pools of one workload hold its replicas.

For each workload this stage turns "the workload should have D units" into an `Ask` for the limits
stage: the replicas it keeps in each pool and the pools (in preference order) where it may add more.

- Pools are filled in the order the policy file lists them: the operator's preference, normally
  regular (already paid for) before virtual, which no cost ranking could know.
- Scale-in takes replicas from the last pool first (virtual before regular).
- Replicas already running stay where they are: a freed regular GPU does not pull a virtual replica
  back (no flapping between pools); only new replicas go to the preferred pool. Unless the workload
  asks for a rebalance (`WorkloadSpec.rebalance`, below).
- Pods Pending (unschedulable) longer than the pool's timeout are given up: the pool is shrunk by
  that many and blocked for one more timeout, so their capacity spills to the next pool instead of
  bouncing back on the next reconcile.

Rebalance (opt-in per workload): when a pool earlier in the order has room and replicas run in a
later one, a bounded step of capacity moves forward, as a rolling update would move it:
- Surge: replicas are added in the earliest pool that has room (not paused, blocked, unreachable,
  nor with Pending pods), as an add like any other for the limits stage (every cap holds), to
  replace whole replicas of the last pool that runs any. At most `REBALANCE_SURGE` of the
  workload's capacity is starting in earlier pools at once, topped up as it gets Ready (a rolling
  update's maxSurge: a slow replica of a heavy-tailed pool holds up only its own share); no step
  is taken while the workload needs more than it has (new replicas go to the preferred pool anyway
  then), and `engine.reconcile` drops the surges when another workload would get more without them.
- Removal: scale-in never counts capacity of earlier pools that is not Ready yet. A later pool
  keeps the replicas only that capacity would replace, and no earlier pool is trimmed meanwhile,
  so the surge stays; once it is Ready, the ordinary scale-in takes the same capacity (whole
  replicas) from the last pool first. A surge that never schedules is given up at its pending
  timeout like any other Pending pod, and the later pool is trimmed only by what did get Ready.
- No flapping: capacity only moves toward earlier pools, and scale-in takes the last pools first,
  so a migrated replica has no way back but a spill (its pool full, blocked or stuck).
Nothing of it is remembered between reconciles: what is starting where is in the snapshot, so a
new leader carries a migration on where the old one left it.

Callers: `engine.reconcile`. The cross-workload part (caps, fairness) is in `engine.limits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autoscaler.engine.types import ClusterSnapshot, Dim, Frozen, NodeClass, PoolSpec, PoolStatus

EPS = 1e-9
_ABSENT = PoolStatus(0)
# The capacity a rebalance may have starting at once in earlier pools, as a share of the workload's
# capacity (at least one replica of the pool it empties): a Deployment's rolling update surges 25 %
# by default (maxSurge), the same bound on what is paid for twice while replacements start.
REBALANCE_SURGE = 0.25


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
    rebalance: int = 0  # replicas this pool may add as a rebalance step's surge

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        spec: PoolSpec,
        current: int,
        keep: int,
        room: int | None,
        cap_dims: tuple[Dim, ...],
        add_dims: tuple[Dim, ...],
        pending: int = 0,
        terminating: int = 0,
        surplus: int = 0,
        paused: bool = False,
        gave_up: int = 0,
        rebalance: int = 0,
    ) -> None:
        self.spec = spec
        self.current = current
        self.keep = keep
        self.room = room
        self.cap_dims = cap_dims
        self.add_dims = add_dims
        self.pending = pending
        self.terminating = terminating
        self.surplus = surplus
        self.paused = paused
        self.gave_up = gave_up
        self.rebalance = rebalance


@dataclass(slots=True)
class Ask:
    """What one workload wants from the limits stage."""

    name: str
    priority: int
    weight: float
    min_units: int
    desired_units: float
    pools: list[PoolAsk]
    surge: float = 0.0  # units of `desired_units` that are a rebalance step's surge

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        name: str,
        priority: int,
        weight: float,
        min_units: int,
        desired_units: float,
        pools: list[PoolAsk],
        surge: float = 0.0,
    ) -> None:
        self.name = name
        self.priority = priority
        self.weight = weight
        self.min_units = min_units
        self.desired_units = desired_units
        self.pools = pools
        self.surge = surge


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
class Placement(Frozen):
    pools: list[PoolAsk]
    blocked_until: dict[str, float]
    steps: tuple[str, ...]
    # The units to ask of the limits stage: the desired units, or (a rebalance) more, for the
    # replicas a later pool keeps until their replacements are Ready and for a surge.
    units: float
    surge: float = 0.0  # the part of `units` that is a surge

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        pools: list[PoolAsk],
        blocked_until: dict[str, float],
        steps: tuple[str, ...],
        units: float,
        surge: float = 0.0,
    ) -> None:
        object.__setattr__(self, "pools", pools)
        object.__setattr__(self, "blocked_until", blocked_until)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "surge", surge)


def place(
    pools: tuple[PoolSpec, ...],
    statuses: Mapping[str, PoolStatus],
    desired_units: float,
    blocked_until: Mapping[str, float],
    snapshot: ClusterSnapshot,
    type_caps: Mapping[tuple[str, str], int],
    provider_caps: Mapping[str, int],
    now: float,
    rebalance: bool = False,
) -> Placement:
    """Keep what is running, trim from the back to `desired_units`, and say where more may go;
    with `rebalance`, also move capacity to earlier pools a step at a time (module docstring)."""
    steps: list[str] = []
    blocked = {k: t for k, t in blocked_until.items() if t > now} if blocked_until else {}
    asks: list[PoolAsk] = []
    capacity = 0.0
    for i, pool in enumerate(pools):
        status = statuses.get(pool.key) or _ABSENT
        stuck = 0 if status.paused else stuck_pending(status, pool, now)
        if stuck:
            timeout = pool.pending_timeout_seconds
            blocked[pool.key] = now + timeout
            # Giving up stuck pods only helps when a later pool could take new replicas at all (as
            # things stood before this reconcile blocked anything). With none, they are kept (they
            # may still schedule) rather than deleted and created again one timeout later, over and
            # over.
            later = pools[i + 1 :]
            if not any(pool_room(p, statuses.get(p.key), blocked_until, now) != 0 for p in later):
                steps.append(
                    f"{stuck} pod(s) of {pool.deployment} Pending over {timeout:g}s: kept, no later "
                    f"pool can take them; the pool takes no new replicas for {timeout:g}s"
                )
                stuck = 0
            else:
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
        # Positional, in field order (spec, current, keep, room, cap_dims, add_dims, pending,
        # terminating, surplus, paused, gave_up): keywords cost three times as much, for every pool
        # of every workload.
        asks.append(
            PoolAsk(
                pool,
                status.spec_replicas,
                keep,
                room,
                cdims,
                (*cdims, fdim) if fdim else cdims,
                len(status.pending_since),
                status.terminating,
                status.surplus,
                status.paused,
                stuck,
            )
        )
        capacity += keep * pool.relative_throughput
    if not rebalance:
        if capacity > desired_units + EPS:  # else `_scale_in` stops at once: nothing to take
            _scale_in(asks, capacity, desired_units, None)
        return Placement(asks, blocked, tuple(steps), desired_units)
    units, surge = _rebalance(asks, statuses, capacity, desired_units, blocked, snapshot, now, steps)
    return Placement(asks, blocked, tuple(steps), units, surge)


def _scale_in(
    asks: list[PoolAsk], capacity: float, desired_units: float, starting: Sequence[float] | None
) -> tuple[float, int, int]:
    """Scale in from the last pool first, whole replicas only, never below the desired capacity.
    `starting[i]`: the capacity of pools before i not Ready yet (a rebalance), which no removal from
    pool i may count on; the first pool that keeps replicas for it ends the scale-in. Returns the
    capacity kept, that pool's index (-1: none) and the replicas it keeps for it."""
    for i in range(len(asks) - 1, -1, -1):
        a = asks[i]
        if capacity <= desired_units + EPS:
            break
        if a.paused or a.keep == 0:
            continue
        thr = a.spec.relative_throughput
        drop = min(a.keep, int((capacity - desired_units) / thr + EPS))
        held = 0
        if starting is not None:
            sure = max(0, int((capacity - starting[i] - desired_units) / thr + EPS))
            held = max(0, drop - sure)
            drop -= held
        if drop:
            a.keep -= drop
            capacity -= drop * thr
        if held:
            return capacity, i, held
    return capacity, -1, 0


def _rebalance(
    asks: list[PoolAsk],
    statuses: Mapping[str, PoolStatus],
    capacity: float,
    desired_units: float,
    blocked: Mapping[str, float],
    snapshot: ClusterSnapshot,
    now: float,
    steps: list[str],
) -> tuple[float, float]:
    """Scale in without counting capacity that is not Ready, then take one surge step if none is
    under way (module docstring). Returns the units to ask of the limits stage and the surge's."""
    starting: list[float] = []
    not_ready = 0.0
    for a in asks:
        starting.append(not_ready)
        ready = (statuses.get(a.spec.key) or _ABSENT).ready
        not_ready += max(0, a.keep - ready) * a.spec.relative_throughput
    capacity, held_at, held = _scale_in(asks, capacity, desired_units, starting)
    base = desired_units  # what the limits stage is asked for without a surge
    if held:
        kept = asks[held_at]
        steps.append(
            f"rebalance: {held} replica(s) of {kept.spec.deployment} kept until the "
            f"{starting[held_at]:g} unit(s) starting in earlier pools are Ready"
        )
        base = capacity  # the kept replicas too, or the limits stage would trim them
    elif capacity < desired_units - EPS:
        return desired_units, 0.0  # short of capacity: new replicas go to the preferred pool anyway
    src = next((i for i in range(len(asks) - 1, 0, -1) if asks[i].keep and not asks[i].paused), None)
    if src is None:
        return base, 0.0
    dst, room = _surge_pool(asks, src, statuses, blocked, snapshot, now)
    if dst is None:
        return base, 0.0
    out, into = asks[src].spec, asks[dst].spec
    thr_out, thr_in = out.relative_throughput, into.relative_throughput
    # Whole replicas of the source, as many as the step allows: what is starting in earlier pools
    # already counts, and a step tops it up as it gets Ready (a rolling update's maxSurge);
    # the fewest replicas of the destination that replace them, within its room; and so the whole
    # replicas of the source those replace, which the scale-in takes once they are Ready.
    step = max(REBALANCE_SURGE * desired_units, thr_out)
    movable = asks[src].keep * thr_out - starting[src]  # not replaced yet
    whole = int(min(step - starting[src], movable) / thr_out + EPS)
    added = math.ceil(whole * thr_out / thr_in - EPS)
    if room is not None:
        added = min(added, room)
    removed = min(int(movable / thr_out + EPS), int(added * thr_in / thr_out + EPS))
    if whole < 1 or removed < 1:
        return base, 0.0
    for i, a in enumerate(asks):
        a.room = added if i == dst else 0  # the surge goes there or nowhere
    asks[dst].rebalance = added
    steps.append(
        f"rebalance: a surge of {added} replica(s) in {into.deployment} to replace {removed} of "
        f"{out.deployment} once they are Ready"
    )
    return capacity + added * thr_in, added * thr_in


def _surge_pool(
    asks: Sequence[PoolAsk],
    src: int,
    statuses: Mapping[str, PoolStatus],
    blocked: Mapping[str, float],
    snapshot: ClusterSnapshot,
    now: float,
) -> tuple[int | None, int | None]:
    """The earliest pool before `src` a surge may go to, and its room (None: unbounded): not
    paused (nor unreachable), not blocked, no Pending pod (they would wait for the same GPUs, and
    may be stuck), room by `pool_room`."""
    for i in range(src):
        a = asks[i]
        status = statuses.get(a.spec.key) or _ABSENT
        if a.paused or status.pending_since:
            continue
        room = pool_room(a.spec, status, blocked, now, snapshot.free_gpus)
        if room != 0:
            return i, room
    return None, None


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
    # An empty `blocked_until` (most workloads) needs no lookup.
    if status.paused or (blocked_until and blocked_until.get(pool.key, -math.inf) > now):
        return 0
    room = None if pool.max_replicas is None else max(0, pool.max_replicas - status.spec_replicas)
    fit = free_fit(pool, status, free_gpus)
    if fit is not None:
        fit = max(0, fit - len(status.pending_since))
        room = fit if room is None else min(room, fit)
    return room


def free_fit(
    pool: PoolSpec, status: PoolStatus, free_gpus: Mapping[tuple[str, str], int] | None
) -> int | None:
    """The replicas of `pool` its GPU type's free GPUs fit, up to where its maxReplicas bounds its
    room instead: all `pool_room` takes of the free count, so two counts give the same room when
    they give the same number here (the incremental engine compares it, not the count, which moves
    with every pod scheduled anywhere in the cluster). None: a virtual pool, or no count known."""
    if free_gpus is None or pool.node_class is not NodeClass.REGULAR:
        return None
    free = free_gpus.get((pool.cluster, pool.gpu_type))
    if free is None:
        return None
    fit = free // max(pool.gpus_per_replica, 1)
    if pool.max_replicas is not None:
        # From here on the room is maxReplicas less what runs, whatever more is free.
        fit = min(fit, max(0, pool.max_replicas - status.spec_replicas) + len(status.pending_since))
    return fit


def first_open_pool(pools: tuple[PoolSpec, ...], rooms: Sequence[int | None]) -> PoolSpec:
    """The pool new replicas would go to first, given each pool's `pool_room` (with the free GPUs):
    its startup time is the policy's look-ahead.

    A regular pool whose nodes have no free GPU left (after what its own unscheduled pods wait for)
    is skipped: its next replica would sit Pending and spill, so sizing for its 90 s startup while
    the replicas really land on a virtual pool that takes minutes would order them too late."""
    # By index rather than zip(strict=True), which costs more than the loop: one per workload per
    # reconcile. `rooms` has one entry per pool.
    for i, room in enumerate(rooms):
        if room != 0:
            return pools[i]
    return pools[0]
