"""`limits.allocate` gives exactly the grants of the allocation it replaced (progressive filling
one heap step at a time), on random asks, caps and cluster states.

`_reference_allocate` below is that allocation as it was (commit 7a00240), kept only as the
reference: the package's `_fill_tier` now hands out, in one step, every GPU that filling gives
before a cap stops a climb, and skips the heap once the company cap has no GPU left.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine.limits import AllocationMemo, Grant, allocate, describe, held_gpus
from autoscaler.engine.placement import EPS, Ask, PoolAsk, cap_dims, usage_dims
from autoscaler.engine.types import COMPANY, ClusterSnapshot, Dim, Limits, NodeClass, PoolSpec, UnmanagedPool

# ---- reference: limits.allocate as of 7a00240 ----------------------------------------------------


def _fit(remaining: Mapping[Dim, int], dims: tuple[Dim, ...], gpus: int) -> tuple[int | None, Dim | None]:
    """How many replicas of `gpus` each fit under every dim (None: unbounded) and the dim that binds."""
    best: int | None = None
    binding: Dim | None = None
    for d in dims:
        left = remaining.get(d)
        if left is None:
            continue
        n = left // gpus if left > 0 else 0
        if best is None or n < best:
            best, binding = n, d
    return best, binding


class _Ladder:
    """One workload's progress through phase 1. Cheap to clone so a tier can be tried greedily."""

    __slots__ = ("added", "ask", "blocked_by", "gpus", "granted", "keep_left", "units")

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.keep_left = [0 if p.paused else p.keep for p in ask.pools]
        self.granted = [p.current if p.paused else 0 for p in ask.pools]
        self.added = [0] * len(ask.pools)
        self.units = sum(g * p.spec.relative_throughput for g, p in zip(self.granted, ask.pools, strict=True))
        self.gpus = sum(g * p.spec.gpus_per_replica for g, p in zip(self.granted, ask.pools, strict=True))
        self.blocked_by: Dim | None = None

    def clone(self) -> _Ladder:
        c = _Ladder.__new__(_Ladder)
        c.ask = self.ask
        c.keep_left = self.keep_left.copy()
        c.granted = self.granted.copy()
        c.added = self.added.copy()
        c.units, c.gpus, c.blocked_by = self.units, self.gpus, self.blocked_by
        return c

    def _take(self, i: int, pool: PoolAsk, n: int, dims: tuple[Dim, ...], remaining: dict[Dim, int]) -> None:
        g = n * pool.spec.gpus_per_replica
        for d in dims:
            if d in remaining:
                remaining[d] -= g
        self.granted[i] += n
        self.units += n * pool.spec.relative_throughput
        self.gpus += g

    def trim_surplus(self) -> None:
        # Only replicas added in this allocation: a running one kept by placement is not traded for
        # a new one elsewhere (that churn would also scale a pool down while a trigger fails).
        surplus = self.units - self.ask.desired_units
        for i in range(len(self.granted) - 1, -1, -1):
            pool = self.ask.pools[i]
            if surplus <= EPS or pool.paused:
                continue
            thr = pool.spec.relative_throughput
            drop = min(self.added[i], int(surplus / thr + EPS))
            if drop:
                self.granted[i] -= drop
                self.added[i] -= drop
                self.units -= drop * thr
                self.gpus -= drop * pool.spec.gpus_per_replica
                surplus -= drop * thr

    def climb(self, target: float, remaining: dict[Dim, int], budget_gpus: int | None) -> int:
        """Take replicas until `target` units, the GPU budget, or every cap is reached.
        Returns the GPUs taken (0: nothing more is possible now)."""
        start = self.gpus
        pools = self.ask.pools
        # Replicas already running come first, preferred pool first, so a squeeze trims the back.
        for i, pool in enumerate(pools):
            while self.keep_left[i] and self.units < target - EPS:
                if budget_gpus is not None and self.gpus - start >= budget_gpus:
                    return self.gpus - start
                thr, gpr = pool.spec.relative_throughput, pool.spec.gpus_per_replica
                n = min(self.keep_left[i], math.ceil((target - self.units) / thr - EPS))
                if budget_gpus is not None:
                    n = min(n, max(1, (budget_gpus - (self.gpus - start)) // gpr))
                fit, binding = _fit(remaining, pool.cap_dims, gpr)
                if fit is not None and fit < n:
                    n = fit
                    self.blocked_by = binding
                if n <= 0:
                    self.keep_left[i] = 0  # caps only tighten as others are served: give it up
                    break
                self.keep_left[i] -= n
                self._take(i, pool, n, pool.cap_dims, remaining)
        for i, pool in enumerate(pools):
            if self.units >= target - EPS:
                break
            if pool.room is not None and self.added[i] >= pool.room:
                continue
            if budget_gpus is not None and self.gpus - start >= budget_gpus:
                return self.gpus - start
            thr, gpr = pool.spec.relative_throughput, pool.spec.gpus_per_replica
            n = math.ceil((target - self.units) / thr - EPS)
            if pool.room is not None:
                n = min(n, pool.room - self.added[i])
            if budget_gpus is not None:
                n = min(n, max(1, (budget_gpus - (self.gpus - start)) // gpr))
            fit, binding = _fit(remaining, pool.add_dims, gpr)
            if fit is not None and fit < n:
                n = fit
                self.blocked_by = binding
            if n > 0:
                self.added[i] += n
                self._take(i, pool, n, pool.add_dims, remaining)
        return self.gpus - start


def _cap_limits(limits: Limits) -> dict[Dim, int]:
    """The parallelism limits by dimension."""
    caps: dict[Dim, int] = {}
    if limits.company_max_gpus is not None:
        caps[COMPANY] = limits.company_max_gpus
    for (cluster, gpu_type), n in limits.cluster_gpu_types.items():
        caps[("type", cluster, gpu_type)] = n
    for provider, n in limits.provider_max_gpus.items():
        caps[("provider", provider)] = n
    return caps


def _caps(limits: Limits, snapshot: ClusterSnapshot, asks: list[Ask]) -> dict[Dim, int]:
    caps = _cap_limits(limits)
    # New replicas on regular nodes can only use GPUs that are free now, less what our own
    # unscheduled pods are already waiting for.
    for (cluster, gpu_type), free in snapshot.free_gpus.items():
        caps[("free", cluster, gpu_type)] = free
    for ask in asks:
        for p in ask.pools:
            d = p.add_dims[-1]
            if d[0] == "free" and p.pending:
                caps[d] -= p.pending * p.spec.gpus_per_replica
    return caps


def _fill_tier(ladders: list[_Ladder], remaining: dict[Dim, int]) -> None:
    """Weighted max-min fair share: progressive filling, batched up to the next workload's level."""
    heap = [(lad.gpus / lad.ask.weight, lad.ask.name, i) for i, lad in enumerate(ladders)]
    heapq.heapify(heap)
    while heap:
        share, _, i = heapq.heappop(heap)
        lad = ladders[i]
        target = lad.ask.desired_units
        if heap:
            gap = (heap[0][0] - share) * lad.ask.weight
            budget = max(1, math.ceil(gap - EPS))
        else:
            budget = None
        took = lad.climb(target, remaining, budget)
        if took and lad.units < target - EPS:
            heapq.heappush(heap, (lad.gpus / lad.ask.weight, lad.ask.name, i))


def _surely_contended(members: list[_Ladder], remaining: Mapping[Dim, int]) -> bool:
    """A cheap lower bound on the tier's GPU need against the company cap, to skip a doomed
    greedy trial when the cap obviously binds."""
    left = remaining.get(COMPANY)
    if left is None:
        return False
    need = 0.0
    for lad in members:
        short = lad.ask.desired_units - lad.units
        if short > 0:
            need += short * min(p.spec.gpus_per_replica / p.spec.relative_throughput for p in lad.ask.pools)
    return need > left + EPS


def _reference_allocate(
    asks: list[Ask], limits: Limits, snapshot: ClusterSnapshot, held: Mapping[Dim, int]
) -> dict[str, Grant]:
    """`held`: `held_gpus(asks, snapshot)`, the GPUs every dimension holds now (phase 2)."""
    caps = _caps(limits, snapshot, asks)
    ladders = [_Ladder(a) for a in asks]

    # GPUs of Deployments no longer managed count against their caps in both phases until gone.
    held_elsewhere = _unmanaged_gpus(snapshot)

    # Phase 1: entitlement. Paused pools keep what they have and count against every cap.
    remaining = {d: n - held_elsewhere.get(d, 0) for d, n in caps.items()}
    for lad in ladders:
        for g, p in zip(lad.granted, lad.ask.pools, strict=True):
            for d in p.cap_dims:
                if g and d in remaining:
                    remaining[d] -= g * p.spec.gpus_per_replica
    order = sorted(range(len(ladders)), key=lambda i: (-asks[i].priority, asks[i].name))
    for i in order:
        lad = ladders[i]
        lad.climb(min(lad.ask.min_units, lad.ask.desired_units), remaining, None)
    tiers: dict[int, list[int]] = {}
    for i in order:
        tiers.setdefault(asks[i].priority, []).append(i)
    for prio in sorted(tiers, reverse=True):
        members = [ladders[i] for i in tiers[prio]]
        if _surely_contended(members, remaining):
            _fill_tier(members, remaining)
            continue
        # Most reconciles are uncontended: try everyone in full, and only if somebody is cut short
        # redo the tier fairly from where it started.
        trial = [lad.clone() for lad in members]
        trial_remaining = dict(remaining)
        for lad in trial:
            lad.climb(lad.ask.desired_units, trial_remaining, None)
        if all(lad.units >= lad.ask.desired_units - EPS for lad in trial):
            for i, lad in zip(tiers[prio], trial, strict=True):
                ladders[i] = lad
            remaining = trial_remaining
        else:
            _fill_tier(members, remaining)

    # Whole replicas of slow pools can overshoot the wish; drop the surplus now, by placement's own
    # rule (from the last pool), or the next reconcile would trim it and count it as a scale-in.
    for lad in ladders:
        lad.trim_surplus()

    # Phase 2: feasibility against what exists now: every pod, whatever spec.replicas says.
    headroom = {d: n - held.get(d, 0) for d, n in caps.items()}
    results: dict[str, Grant] = {}
    ups: list[tuple[tuple[int, int, float, str], int]] = []
    for idx, (ask, lad) in enumerate(zip(asks, ladders, strict=True)):
        below_min = 0 if lad.units >= ask.min_units - EPS else 1
        ups.append(((-below_min, -ask.priority, lad.gpus / ask.weight, ask.name), idx))
    ups.sort()
    for _, idx in ups:
        ask, lad = asks[idx], ladders[idx]
        steps: list[str] = []
        targets: dict[str, int] = {}
        units = 0.0
        for p, g in zip(ask.pools, lad.granted, strict=True):
            key = p.spec.key
            target = g
            if g > p.current and not p.paused:
                fit, binding = _fit(headroom, p.add_dims, p.spec.gpus_per_replica)
                add = g - p.current if fit is None else min(g - p.current, fit)
                if add < g - p.current and binding is not None:
                    steps.append(
                        f"{p.spec.deployment}: {g - p.current - add} more replica(s) wait for GPUs under the "
                        f"{describe(binding, caps)} to be freed by scale-downs in progress"
                    )
                target = p.current + add
                for d in p.add_dims:
                    if d in headroom:
                        headroom[d] -= add * p.spec.gpus_per_replica
            targets[key] = target
            units += target * p.spec.relative_throughput
        if lad.units < ask.desired_units - EPS and lad.blocked_by is not None:
            steps.insert(
                0,
                f"limits: granted {lad.units:g} of {ask.desired_units} units, bounded by the "
                f"{describe(lad.blocked_by, caps)}",
            )
        elif lad.units < ask.desired_units - EPS:
            steps.insert(0, f"limits: granted {lad.units:g} of {ask.desired_units} units, every pool is full")
        results[ask.name] = Grant(targets, units, tuple(steps))
    return results


def _unmanaged_gpus(snapshot: ClusterSnapshot) -> dict[Dim, int]:
    held: dict[Dim, int] = {}
    for gone in snapshot.unmanaged:
        for d in usage_dims(gone.pool):
            held[d] = held.get(d, 0) + gone.replicas * gone.pool.gpus_per_replica
    return held


# ---- the comparison ------------------------------------------------------------------------------

CLUSTERS = ("c1", "c2")
GPU_TYPES = ("A100", "H100")
PROVIDERS = ("salad", "acs")


@st.composite
def situations(
    draw: st.DrawFn, max_workloads: int = 10, one_gpu: bool | None = None
) -> tuple[list[Ask], Limits, ClusterSnapshot]:
    """Asks as placement hands them over, under caps tight enough that fair share does real work.
    Half the draws have one GPU per replica everywhere, the case the fast filling takes."""
    if one_gpu is None:
        one_gpu = draw(st.booleans())
    limits = Limits(
        company_max_gpus=draw(st.none() | st.integers(0, 60)),
        cluster_gpu_types={
            (c, t): draw(st.integers(0, 40)) for c in CLUSTERS for t in GPU_TYPES if draw(st.booleans())
        },
        provider_max_gpus={p: draw(st.integers(0, 30)) for p in PROVIDERS if draw(st.booleans())},
    )
    free = {(c, t): draw(st.integers(0, 30)) for c in CLUSTERS for t in GPU_TYPES if draw(st.booleans())}
    snapshot = ClusterSnapshot(pools={}, free_gpus=free)
    names = draw(
        st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=max_workloads, unique=True)
    )
    asks = []
    for name in names:
        pools = []
        for j in range(draw(st.integers(1, 3))):
            virtual = draw(st.booleans())
            spec = PoolSpec(
                f"{name}-p{j}",
                "ns",
                NodeClass.VIRTUAL if virtual else NodeClass.REGULAR,
                draw(st.sampled_from(GPU_TYPES)),
                draw(st.sampled_from(CLUSTERS)),
                1 if one_gpu else draw(st.sampled_from((1, 1, 2, 4))),
                relative_throughput=draw(st.sampled_from((0.5, 1.0, 1.5))),
                provider=draw(st.sampled_from(PROVIDERS)) if virtual else None,
            )
            cdims = cap_dims(spec, limits.cluster_gpu_types, limits.provider_max_gpus)
            fdim: Dim = ("free", spec.cluster, spec.gpu_type)
            with_free = not virtual and (spec.cluster, spec.gpu_type) in free
            current = draw(st.integers(0, 6))
            paused = draw(st.integers(0, 9)) == 0
            pools.append(
                PoolAsk(
                    spec=spec,
                    current=current,
                    keep=draw(st.integers(0, current)),
                    room=0 if paused else draw(st.none() | st.integers(0, 8)),
                    cap_dims=cdims,
                    add_dims=(*cdims, fdim) if with_free else cdims,
                    pending=draw(st.integers(0, 2)),
                    terminating=draw(st.integers(0, 2)),
                    surplus=draw(st.integers(0, 1)),
                    paused=paused,
                )
            )
        asks.append(
            Ask(
                name,
                draw(st.sampled_from((0, 0, 10))),
                draw(st.sampled_from((0.5, 1.0, 2.0, 3.0))),
                draw(st.integers(0, 3)),
                draw(st.integers(0, 40)) / 2,
                pools,
            )
        )
    if draw(st.booleans()):
        gone = PoolSpec("gone", "ns", NodeClass.REGULAR, "A100", "c1", draw(st.sampled_from((1, 2))))
        unmanaged = (UnmanagedPool(gone, draw(st.integers(1, 9))),)
        snapshot = ClusterSnapshot(pools={}, free_gpus=free, unmanaged=unmanaged)
    return asks, limits, snapshot


@settings(max_examples=800, deadline=None)
@given(situations())
def test_allocate_grants_exactly_what_one_step_at_a_time_filling_granted(
    situation: tuple[list[Ask], Limits, ClusterSnapshot],
) -> None:
    asks, limits, snapshot = situation
    held = held_gpus(asks, snapshot)
    # A list of its own; the asks in it are frozen, so neither side can change what the other reads.
    # (Not a deepcopy: the image's compiled frozen classes cannot be copied field by field.)
    expected = _reference_allocate(list(asks), limits, snapshot, held)
    assert allocate(asks, limits, snapshot, held) == expected


@settings(max_examples=400, deadline=None)
@given(situations(max_workloads=40, one_gpu=True))
def test_allocate_grants_exactly_what_one_step_at_a_time_filling_granted_to_many(
    situation: tuple[list[Ask], Limits, ClusterSnapshot],
) -> None:
    """Fleets of up to 40 with one GPU per replica: the company cap often stops the hand-out, with
    workloads at equal shares around its last GPU, which `_fill_unhindered` finds without sorting
    every event (and another cap sometimes runs out first, which it must notice)."""
    asks, limits, snapshot = situation
    held = held_gpus(asks, snapshot)
    expected = _reference_allocate(list(asks), limits, snapshot, held)
    assert allocate(asks, limits, snapshot, held) == expected


def test_many_workloads_at_one_level_share_the_last_gpus_by_name() -> None:
    """Thirty equal workloads want 4 GPUs each under a cap of 100: 3 each, and the last 10 GPUs to
    the first ten names, the order the one-at-a-time filling gave them in."""
    spec = {n: PoolSpec(f"w{n:02}", "ns", NodeClass.REGULAR, "A100", "c1") for n in range(30)}
    asks = [
        Ask(f"w{n:02}", 0, 1.0, 0, 4.0, [PoolAsk(spec[n], 0, 0, None, (COMPANY,), (COMPANY,))])
        for n in reversed(range(30))
    ]
    snapshot = ClusterSnapshot(pools={})
    grants = allocate(asks, Limits(company_max_gpus=100), snapshot, {})
    assert {name: g.targets[f"ns/{name}"] for name, g in grants.items()} == {
        f"w{n:02}": 4 if n < 10 else 3 for n in range(30)
    }
    assert grants == _reference_allocate(asks, Limits(company_max_gpus=100), snapshot, {})


@settings(max_examples=300, deadline=None)
@given(situations(max_workloads=12), st.data())
def test_allocate_with_its_memo_grants_what_it_grants_without(
    situation: tuple[list[Ask], Limits, ClusterSnapshot], data: st.DataObject
) -> None:
    """A sequence of calls sharing an `AllocationMemo`, as the incremental engine makes them: most
    asks are the same objects as at the last call, some are new (another wish, other replicas
    running), the company cap and the free GPUs move. Every call grants what a call without the
    memo grants."""
    asks, limits, snapshot = situation
    memo = AllocationMemo()
    for _ in range(data.draw(st.integers(2, 6), label="calls")):
        held = held_gpus(asks, snapshot)
        assert allocate(asks, limits, snapshot, held, memo) == allocate(asks, limits, snapshot, held)
        changed = data.draw(st.sets(st.integers(0, len(asks) - 1)), label="asks changed")
        asks = [
            Ask(
                a.name,
                a.priority,
                a.weight,
                a.min_units,
                data.draw(st.integers(0, 40)) / 2,
                [replace(p, current=data.draw(st.integers(0, 6)), keep=0) for p in a.pools],
            )
            if i in changed
            else a
            for i, a in enumerate(asks)
        ]
        if data.draw(st.booleans(), label="caps move"):
            limits = replace(limits, company_max_gpus=data.draw(st.none() | st.integers(0, 60)))
            snapshot = replace(
                snapshot, free_gpus={k: data.draw(st.integers(0, 30)) for k in snapshot.free_gpus}
            )
