"""Limits: share the company's GPUs between all workloads' wishes.

Two phases, both over every cap at once (company total, per cluster and GPU type, per provider, and
the free GPUs of regular nodes for new replicas):

1. Entitlement, as if nothing ran yet: guaranteed minimums first (by priority), then each priority
   tier in turn, and within a tier weighted max-min fair share of GPUs (progressive filling: the
   workload with the fewest GPUs per unit of weight gets the next replicas). Each workload climbs
   its own ladder: the replicas it keeps (preferred pool first), then new ones in preference order,
   skipping a pool whose caps are full, which is how a full GPU type spills to the next pool.
2. Feasibility, from what exists now: a scale-down happens at once, but its GPUs count as used until
   it is done, so a scale-up only takes headroom left by replicas that exist now. A grant to B waits
   until A's scale-down has really freed the GPUs; at no moment do existing plus requested GPUs
   exceed a cap.

Callers: `engine.reconcile`. Per-workload pool logic is in `engine.placement`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autoscaler.engine.placement import EPS, Ask, PoolAsk, usage_dims
from autoscaler.engine.types import COMPANY, ClusterSnapshot, Dim, Frozen, GpuUsage, Limits


@dataclass(frozen=True, slots=True)
class Grant(Frozen):
    targets: dict[str, int]  # pool key -> replicas to ask for now
    units: float
    steps: tuple[str, ...]

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(self, targets: dict[str, int], units: float, steps: tuple[str, ...]) -> None:
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "steps", steps)


def describe(dim: Dim, caps: Mapping[Dim, int]) -> str:
    cap = caps.get(dim)
    if dim == COMPANY:
        return f"company cap ({cap} GPUs)"
    if dim[0] == "type":
        return f"cap of {dim[2]} in cluster {dim[1]} ({cap} GPUs)"
    if dim[0] == "provider":
        return f"quota of provider {dim[1]} ({cap} GPUs)"
    return f"free {dim[2]} GPUs on regular nodes of {dim[1]}"


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


# Replicas a ladder would take next: (GPUs, dims they count against, pool index, kept or new).
Segment = tuple[int, tuple[Dim, ...], int, bool]

# A ladder's state after `take_first(count)` from its fresh state: granted, added, keep_left, units,
# gpus, and the GPUs it took per group of dims.
_Taken = tuple[list[int], list[int], list[int], float, int, "_Took"]


# `_Ladder.path` of a ladder `climbed` from its fresh state.
_CLIMBED = -2


# The GPUs a ladder took, in the order it took them, with the dims they count against.
_Took = list[tuple[tuple[Dim, ...], int]]


def _spend(took: _Took, remaining: dict[Dim, int]) -> None:
    """Count these GPUs against every cap they count under."""
    for dims, k in took:
        for d in dims:
            if d in remaining:
                remaining[d] -= k


def _fits(took: _Took, remaining: Mapping[Dim, int]) -> bool:
    """Whether each of these takes, in turn, finds its GPUs under every cap it counts against (a
    dim not in `remaining` has no cap): then `climb` takes them all, unbounded."""
    spent: dict[Dim, int] = {}
    for dims, k in took:
        for d in dims:
            left = remaining.get(d)
            if left is not None:
                used = spent.get(d, 0) + k
                if left < used:
                    return False
                spent[d] = used
    return True


class _Known:
    """What the limits stage worked out for one `Ask` object, for the next calls that get the same
    object (`AllocationMemo`): functions of the ask alone, keyed by the ladder's path from its fresh
    state (`_Ladder.path`)."""

    __slots__ = ("ask", "climbed", "grants", "plan", "shape", "starved", "taken")

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.shape = _shape(ask)
        self.plan: tuple[list[Segment], int] | None = None  # `plan` of the fresh ladder
        self.taken: dict[int, _Taken] = {}  # count -> state after `take_first`
        # The state after `climb(desired_units, remaining, None)` when no cap bounded it: `remaining`
        # only decides whether a cap bounds it, so where every take still fits, it is the same.
        self.climbed: _Taken | None = None
        self.starved: dict[int, tuple[list[int], Dim | None]] = {}  # path -> keep_left, blocked_by
        # (path, the cap of the dim it is bounded by) -> its grant; not when it rises (phase 2 then
        # waits for headroom, which depends on the others).
        self.grants: dict[tuple[int, int | None], Grant] = {}


def _shape(ask: Ask) -> tuple[bool, bool]:
    """Whether every pool of `ask` has one GPU per replica, and whether every one counts against
    the company cap first (`_fill_tier`)."""
    one_gpu = company_first = True
    for p in ask.pools:
        if p.spec.gpus_per_replica != 1:
            one_gpu = False
        if p.cap_dims[0] != COMPANY or p.add_dims[0] != COMPANY:
            company_first = False
    return one_gpu, company_first


class AllocationMemo:
    """What `allocate` keeps between calls, for the incremental engine: per ask, the results that
    depend on the ask alone (the replicas its ladder would climb, its state after taking a given
    number of them, after being starved, its grant from a given state), reused while the caller
    passes the same `Ask` object again (asks are never changed once placement made them). Asks no
    longer passed are dropped once they are a quarter as many as those of the last call. A cache:
    allocate gives the same grants with or without it."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[int, _Known] = {}  # id(ask) -> (the entry checks it is the same object)


class _Ladder:
    """One workload's progress through phase 1. Cheap to clone so a tier can be tried greedily.

    `path` says how it got where it is, when that is one of the paths whose results `_Known`
    keeps: 2 * count for `take_first(count)` from its fresh state (0: fresh), plus 1 once starved;
    `_CLIMBED` for `climbed` from its fresh state; -1 for anything else (a climb, a clone)."""

    __slots__ = ("added", "ask", "blocked_by", "gpus", "granted", "keep_left", "known", "path", "units")

    def __init__(
        self,
        ask: Ask,
        known: _Known | None,
        path: int,
        granted: list[int],
        added: list[int],
        keep_left: list[int],
        units: float,
        gpus: int,
        blocked_by: Dim | None,
    ) -> None:
        self.ask, self.known, self.path = ask, known, path
        self.granted, self.added, self.keep_left = granted, added, keep_left
        self.units, self.gpus, self.blocked_by = units, gpus, blocked_by

    @staticmethod
    def fresh(ask: Ask, known: _Known | None = None) -> _Ladder:
        """The ladder of `ask` before phase 1: its paused pools hold what they have, the others
        nothing yet, with their running replicas to keep."""
        pools = ask.pools
        path = 0 if known is not None else -1
        for p in pools:
            if p.paused:
                break
        else:  # the common case, at a fraction of the cost
            n = len(pools)
            return _Ladder(ask, known, path, [0] * n, [0] * n, [p.keep for p in pools], 0.0, 0, None)
        granted = [p.current if p.paused else 0 for p in pools]
        return _Ladder(
            ask,
            known,
            path,
            granted,
            [0] * len(pools),
            [0 if p.paused else p.keep for p in pools],
            sum(g * p.spec.relative_throughput for g, p in zip(granted, pools, strict=True)),
            sum(g * p.spec.gpus_per_replica for g, p in zip(granted, pools, strict=True)),
            None,
        )

    def climbed(self, remaining: dict[Dim, int]) -> _Ladder:
        """A copy of this ladder after `climb(desired_units, remaining, None)` (`remaining` taken
        from): the climb `_Known` kept for a fresh ladder when every take of it still fits."""
        known = self.known
        if self.path == 0 and known is not None and known.climbed and _fits(known.climbed[5], remaining):
            # `restore` replaces the lists, units and GPUs: this ladder's stand in until it does, and
            # are not copied only to be thrown away.
            c = _Ladder(self.ask, known, _CLIMBED, self.granted, self.added, self.keep_left, 0.0, 0, None)
            c.restore(known.climbed, _CLIMBED, remaining)
            return c
        c = self.clone()
        c.climb(self.ask.desired_units, remaining, None)
        if self.path == 0 and known is not None and c.blocked_by is None:
            # Its takes, in the order `climb` made them: each pool's kept replicas, then new ones.
            pools = self.ask.pools
            took = [
                (p.cap_dims, (keep - left) * p.spec.gpus_per_replica)
                for p, keep, left in zip(pools, self.keep_left, c.keep_left, strict=True)
                if keep > left
            ]
            took += [
                (p.add_dims, n * p.spec.gpus_per_replica) for p, n in zip(pools, c.added, strict=True) if n
            ]
            known.climbed = c.kept(took)
            c.known, c.path = known, _CLIMBED
        return c

    def kept(self, took: _Took) -> _Taken:
        """This ladder's state, for `_Known` to keep (`took`: the GPUs it took to get here)."""
        return (self.granted.copy(), self.added.copy(), self.keep_left.copy(), self.units, self.gpus, took)

    def restore(self, state: _Taken, path: int, remaining: dict[Dim, int]) -> None:
        """Take the state `_Known` kept for `path`, and count what it took against the caps."""
        granted, added, keep_left, self.units, self.gpus, took = state
        self.granted, self.added, self.keep_left = granted.copy(), added.copy(), keep_left.copy()
        self.path = path
        _spend(took, remaining)

    def clone(self) -> _Ladder:
        return _Ladder(
            self.ask,
            None,
            -1,
            self.granted.copy(),
            self.added.copy(),
            self.keep_left.copy(),
            self.units,
            self.gpus,
            self.blocked_by,
        )

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
        self.path = -1
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

    def starve(self) -> None:
        """What `climb(desired_units, remaining, None)` does once the company cap, first among the
        dims of every pool, has no GPU left: it takes nothing, gives up the running replicas it
        would keep, and is bounded by the company cap if it would have taken any, that is if a pool
        it would try (kept replicas left, or room for new ones) has a replica's worth of the wish
        to climb: ceil(short / throughput - EPS) > 0."""
        target = self.ask.desired_units
        if self.units >= target - EPS:
            return
        path, known = self.path, self.known
        if known is not None and path >= 0 and not path & 1:
            hit = known.starved.get(path)
            if hit is not None:
                self.keep_left = hit[0].copy()
                self.blocked_by = hit[1]
                self.path = path + 1
                return
        else:
            self.path = -1
        short = target - self.units
        keep_left, added = self.keep_left, self.added
        blocked = False
        for i, pool in enumerate(self.ask.pools):
            if not blocked:
                room = pool.room
                tried = keep_left[i] or room is None or added[i] < room
                blocked = bool(tried) and short / pool.spec.relative_throughput - EPS > 0
            keep_left[i] = 0
        if blocked:
            self.blocked_by = COMPANY
        if self.path >= 0 and known is not None:
            known.starved[path] = (keep_left.copy(), self.blocked_by)
            self.path = path + 1

    def plan(self) -> tuple[list[Segment], int]:
        """`next_gpus`, and how many GPUs they are in all."""
        known = self.known if self.path == 0 else None
        if known is not None and known.plan is not None:
            return known.plan
        segments = self.next_gpus()
        plan = (segments, sum(seg[0] for seg in segments))
        if known is not None:
            known.plan = plan
        return plan

    def next_gpus(self) -> list[Segment]:
        """The replicas `climb` would take next, were no cap in the way: (GPUs, dims they count
        against, pool index, kept), in the order it takes them (running ones kept first, then new
        ones)."""
        target = self.ask.desired_units
        units = self.units
        out: list[Segment] = []
        pools = self.ask.pools
        for i, pool in enumerate(pools):
            if self.keep_left[i] and units < target - EPS:
                thr = pool.spec.relative_throughput
                n = min(self.keep_left[i], math.ceil((target - units) / thr - EPS))
                if n > 0:
                    out.append((n * pool.spec.gpus_per_replica, pool.cap_dims, i, True))
                    units += n * thr
        for i, pool in enumerate(pools):
            if units >= target - EPS:
                break
            if pool.room is not None and self.added[i] >= pool.room:
                continue
            thr = pool.spec.relative_throughput
            n = math.ceil((target - units) / thr - EPS)
            if pool.room is not None:
                n = min(n, pool.room - self.added[i])
            if n > 0:
                out.append((n * pool.spec.gpus_per_replica, pool.add_dims, i, False))
                units += n * thr
        return out

    def take_first(self, segments: list[Segment], count: int, remaining: dict[Dim, int]) -> None:
        """`climb(desired_units, remaining, count)` with one GPU per replica, `segments` from
        `next_gpus` and caps that hold the first `count` of them: take those, segment by segment.
        The same GPUs and state, but for the kept replicas of a pool where `climb` would take none
        (within a hair of the wish, `next_gpus` gives it no segment): `climb` gives them up, this
        leaves them, and no later climb takes any of them either (the wish only gets closer)."""
        known = self.known
        if self.path == 0 and known is not None:
            hit = known.taken.get(count)
            if hit is None:
                self._take_first(segments, count, remaining)
                if self.path == 0:  # it did not go on climbing: a function of the ask and count
                    took: _Took = []
                    left = count
                    for n, dims, _, _ in segments:
                        if left <= 0:
                            break
                        took.append((dims, min(n, left)))
                        left -= n
                    known.taken[count] = self.kept(took)
                    self.path = 2 * count
                return
            self.restore(hit, 2 * count, remaining)
            return
        self.path = -1
        self._take_first(segments, count, remaining)

    def _take_first(self, segments: list[Segment], count: int, remaining: dict[Dim, int]) -> None:
        pools = self.ask.pools
        left = count
        for n, dims, i, kept in segments:
            k = n if n < left else left
            for d in dims:
                if d in remaining:
                    remaining[d] -= k
            self.granted[i] += k
            self.units += k * pools[i].spec.relative_throughput
            self.gpus += k
            left -= k
            if not kept:
                self.added[i] += k
            elif (keep := self.keep_left[i] - k) and left and self.units < self.ask.desired_units - EPS:
                # Where rounding leaves a kept replica's climb short of the wish by a hair, `climb`
                # looks at that pool again: let it go on from here.
                self.keep_left[i] = keep
                self.climb(self.ask.desired_units, remaining, left)
                return
            else:
                self.keep_left[i] = keep
            if not left:
                return

    def climb(self, target: float, remaining: dict[Dim, int], budget_gpus: int | None) -> int:
        """Take replicas until `target` units, the GPU budget, or every cap is reached.
        Returns the GPUs taken (0: nothing more is possible now)."""
        self.path = -1
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
            if p.pending and p.add_dims[-1][0] == "free":
                caps[p.add_dims[-1]] -= p.pending * p.spec.gpus_per_replica
    return caps


def _fill_tier(ladders: list[_Ladder], remaining: dict[Dim, int]) -> None:
    """Weighted max-min fair share: progressive filling, batched up to the next workload's level.
    `ladders` come in the order of their names (ties: as given), the order filling breaks ties in."""
    # Every pool counts against the company cap first (`PoolSpec.usage_dims`): once it has no GPU
    # left, every climb takes nothing, changes no shared count and is bounded by it, so the order of
    # the rest no longer matters and the heap can go.
    company_binds = COMPANY in remaining
    one_gpu = True
    for lad in ladders:
        one, company_first = _shape(lad.ask) if lad.known is None else lad.known.shape
        one_gpu = one_gpu and one
        company_binds = company_binds and company_first
    took = [0] * len(ladders)
    if not (company_binds and remaining[COMPANY] <= 0) and one_gpu:
        took = _fill_unhindered(ladders, remaining)
    if company_binds and remaining[COMPANY] <= 0:
        # No climb takes anything now, so their order does not matter and the heap is not needed.
        for lad in ladders:
            if lad.units < lad.ask.desired_units - EPS:  # else `starve` has nothing to do
                lad.starve()
        return
    # The heap filling would hold now: a workload that reached its wish has left it, one that
    # never took anything is still in it, satisfied or not (its share bounds the others' steps).
    heap = [
        (lad.gpus / lad.ask.weight, lad.ask.name, i)
        for i, lad in enumerate(ladders)
        if not took[i] or lad.units < lad.ask.desired_units - EPS
    ]
    heapq.heapify(heap)
    while heap:
        if company_binds and remaining[COMPANY] <= 0:
            for _, _, i in heap:
                ladders[i].starve()
            return
        share, _, i = heapq.heappop(heap)
        lad = ladders[i]
        target = lad.ask.desired_units
        if heap:
            gap = (heap[0][0] - share) * lad.ask.weight
            budget = max(1, math.ceil(gap - EPS))
        else:
            budget = None
        if lad.climb(target, remaining, budget) and lad.units < target - EPS:
            heapq.heappush(heap, (lad.gpus / lad.ask.weight, lad.ask.name, i))


def _fill_unhindered(ladders: list[_Ladder], remaining: dict[Dim, int]) -> list[int]:
    """Hand out at once every GPU that progressive filling gives before any cap stops a climb.

    With one GPU per replica, progressive filling gives the same GPUs as handing them out one at a
    time, each to the workload with the lowest (share, name): workload i's j-th next GPU goes at
    share (gpus_i + j) / weight_i. Sorting those events and counting them until the first one whose
    pool has a cap with no GPU left gives the state filling reaches just before that GPU; from
    there, progressive filling goes on as it would have (the heap in `_fill_tier`), so the result is
    the same, with one heap step per workload instead of one per GPU (equal up to the rounding the
    heap's own step sizes already absorb with EPS: shares within 1e-9 of a step). Returns the GPUs
    each took."""
    # Events are made in (name, index) order, the order of `ladders`, and the sort is stable, so
    # equal shares keep that order.
    plans: Plans = []
    for i, lad in enumerate(ladders):
        segments, wanted = lad.plan()
        plans.append((i, segments, wanted))
    groups: dict[tuple[Dim, ...], int] = {}
    for _, segments, _ in plans:
        for _, dims, _, _ in segments:
            groups.setdefault(dims, len(groups))
    everywhere = [d for d in remaining if all(d in dims for dims in groups)]
    counts = None
    if everywhere:
        # A cap every event counts against stops the hand-out at its (left + 1)-th event at the
        # latest: the events before it are found without sorting them all, and are the answer
        # unless another cap runs out among them.
        first = min(max(remaining[d], 0) for d in everywhere)
        if first == 0:
            return [0] * len(ladders)
        counts = _first_events(ladders, plans, first)
        if counts is not None and not _within_caps(plans, counts, groups, remaining, everywhere):
            counts = None
    if counts is None:
        counts = _sorted_events(ladders, plans, groups, remaining, everywhere)
    # Each climb takes exactly its count (one GPU per replica), under caps that hold them all.
    for (i, segments, _), n in zip(plans, counts, strict=True):
        if n:
            ladders[i].take_first(segments, n, remaining)
    return counts


# Per ladder: its index, `next_gpus`, and how many GPUs they are in all.
Plans = list[tuple[int, list[Segment], int]]


def _first_events(ladders: list[_Ladder], plans: Plans, first: int) -> list[int] | None:
    """How many of each workload's events are among the `first` events in the order of
    `_fill_unhindered` (None: there are no more than `first` events, or the estimate fell short).

    Each workload's events below a share are counted exactly (a workload's shares only grow), at a
    share from `_share_reaching` with more than `first` events below it; then the surplus is taken
    back from the top: the events that sort last, by (share, name order).

    The events taken back sort after the `first`-th, so they lie at or above its share, and so at
    or above `floor` (`_share_reaching` ahead by one, less a hair for the rounding of shares): only
    the counted events from there up are sorted. Where many workloads sit at the level (alike
    weights) that is thousands of events, each a heap step before."""
    level = _share_reaching(ladders, plans, first + 1)
    if level is None:
        return None
    bound = _share_reaching(ladders, plans, first, ahead=1)
    floor = -math.inf if bound is None else bound - 1e-9 * max(1.0, abs(bound))
    # Workloads at the same step with the same weight and wish count alike (most of a big fleet,
    # fresh each reconcile, starts at 0 GPUs): one count per such group.
    alike: dict[tuple[int, float, int], list[int]] = {}
    for i, _, wanted in plans:
        lad = ladders[i]
        alike.setdefault((lad.gpus, lad.ask.weight, wanted), []).append(i)
    counts = [0] * len(plans)
    total = 0
    top: list[tuple[float, int]] = []
    for (gpus, weight, wanted), members in alike.items():
        # Events gpus / weight ... (gpus + wanted - 1) / weight: how many are <= level, exactly.
        k = min(max(math.floor(level * weight) - gpus + 1, 0), wanted)
        while k > 0 and (gpus + k - 1) / weight > level:
            k -= 1
        while k < wanted and (gpus + k) / weight <= level:
            k += 1
        if not k:
            continue
        for i in members:
            counts[i] = k
        total += k * len(members)
        _counted_from(top, members, gpus, weight, k, floor)
    if total <= first:
        return None
    surplus = total - first
    if len(top) < surplus:  # the bound fell short by rounding after all: sort every counted event
        top = []
        for (gpus, weight, _), members in alike.items():
            _counted_from(top, members, gpus, weight, counts[members[0]], -math.inf)
    top.sort(reverse=True)  # (share, name order) descending: the order they sort last in
    for _, i in top[:surplus]:
        counts[i] -= 1
    return counts


def _counted_from(
    into: list[tuple[float, int]], members: list[int], gpus: int, weight: float, k: int, floor: float
) -> None:
    """Add the first `k` events of each of `members` (workloads at `gpus` of `weight`) that lie at
    or above `floor`, as (share, workload)."""
    while k and (share := (gpus + k - 1) / weight) >= floor:
        into.extend([(share, i) for i in members])
        k -= 1


def _within_caps(
    plans: Plans,
    counts: list[int],
    groups: dict[tuple[Dim, ...], int],
    remaining: Mapping[Dim, int],
    everywhere: list[Dim],
) -> bool:
    """Whether the caps that not every event counts against hold each workload's first `counts`
    events (a workload takes its events in the order of its plan)."""
    others = [d for d in remaining if d not in everywhere]
    if not others:
        return True
    used = [0] * len(groups)
    for (_, segments, _), count in zip(plans, counts, strict=True):
        left = count
        for n, dims, _, _ in segments:
            if left <= 0:
                break
            k = min(n, left)
            used[groups[dims]] += k
            left -= k
    for d in others:
        need = sum(used[g] for dims, g in groups.items() if d in dims)
        if need > max(remaining[d], 0):
            return False
    return True


def _sorted_events(
    ladders: list[_Ladder],
    plans: Plans,
    groups: dict[tuple[Dim, ...], int],
    remaining: Mapping[Dim, int],
    everywhere: list[Dim],
) -> list[int]:
    """How many of each workload's events come before the first that finds a cap empty, by sorting
    the events. When every GPU counts against the company cap, none past its (left + 1)-th is handed
    out: only the events up to that one's share are made (a bound from below on how many lie under a
    share)."""
    company = remaining.get(COMPANY)
    bound = (
        _share_reaching(ladders, plans, company + 1)
        if company is not None and COMPANY in everywhere
        else None
    )
    shares: list[float] = []
    owner: list[int] = []
    group: list[int] = []
    for i, segments, wanted in plans:
        lad = ladders[i]
        gpus, weight = lad.gpus, lad.ask.weight
        end = gpus + wanted if bound is None else math.ceil(bound * weight) + 1
        for n, dims, _, _ in segments:
            top = min(gpus + n, end)
            if top <= gpus:
                break
            shares.extend([g / weight for g in range(gpus, top)])
            owner.extend([i] * (top - gpus))
            group.extend([groups[dims]] * (top - gpus))
            gpus += n
    order = sorted(range(len(shares)), key=shares.__getitem__)
    in_order = [group[e] for e in order]
    # The first event that would find a cap empty: for each cap, its (left + 1)-th event.
    stop = len(order)
    for d, left in remaining.items():
        if d in everywhere:
            stop = min(stop, max(left, 0))
            continue
        ids = {g for dims, g in groups.items() if d in dims}
        if not ids:
            continue
        skip = max(left, 0)
        if len(ids) == 1:
            (only,) = ids
            at = [p for p, g in enumerate(in_order) if g == only][skip : skip + 1]
        else:
            at = [p for p, g in enumerate(in_order) if g in ids][skip : skip + 1]
        if at:
            stop = min(stop, at[0])
    counts = [0] * len(ladders)
    for e in order[:stop]:
        counts[owner[e]] += 1
    return counts


def _share_reaching(ladders: list[_Ladder], plans: Plans, n: int, ahead: int = 0) -> float | None:
    """A share below which at least `n` of the events `_fill_unhindered` sorts lie (None: there are
    not that many). Workload i has at least min(wanted_i, share * weight_i - gpus_i) events below
    `share`: a sum that grows piecewise linearly with it, solved by a sweep over the pieces' ends.
    The slope changes are summed per share first: workloads at the same step (most start at share
    0, most weights are alike) make one end, so the sort and the sweep go over far fewer.

    `ahead` 1: the same sum with one event more per workload under way, min(wanted_i, share *
    weight_i - gpus_i + 1), at least the number of events at or below `share`: the share it
    returns is at most that of the `n`-th event (a bound from below)."""
    changes: dict[float, float] = {}
    total = 0
    for i, _, wanted in plans:
        if wanted:
            lad = ladders[i]
            weight = lad.ask.weight
            start, end = (lad.gpus - ahead) / weight, (lad.gpus + wanted - ahead) / weight
            changes[start] = changes.get(start, 0.0) + weight
            changes[end] = changes.get(end, 0.0) - weight
            total += wanted
    if total < n:
        return None
    shares = sorted(changes)
    count = slope = 0.0
    at = shares[0]
    for share in shares:
        reach = count + slope * (share - at)
        if reach >= n:
            return at + (n - count) / slope
        count, at = reach, share
        slope += changes[share]
    return shares[-1]


def _surely_contended(members: list[_Ladder], remaining: Mapping[Dim, int]) -> bool:
    """A cheap lower bound on the tier's GPU need against the company cap, to skip a doomed
    greedy trial when the cap obviously binds."""
    left = remaining.get(COMPANY)
    if left is None:
        return False
    need = 0.0
    enough = left + EPS
    for lad in members:
        short = lad.ask.desired_units - lad.units
        if short > 0:
            need += short * min(p.spec.gpus_per_replica / p.spec.relative_throughput for p in lad.ask.pools)
            if need > enough:  # the need only grows: the rest cannot change the answer
                return True
    return False


def allocate(
    asks: list[Ask],
    limits: Limits,
    snapshot: ClusterSnapshot,
    held: Mapping[Dim, int],
    memo: AllocationMemo | None = None,
) -> dict[str, Grant]:
    """`held`: `held_gpus(asks, snapshot)`, the GPUs every dimension holds now (phase 2). `memo`:
    what the last call kept, updated for the next one (the same grants without it)."""
    caps = _caps(limits, snapshot, asks)
    if memo is None:
        ladders = [_Ladder.fresh(a) for a in asks]
    else:
        known = memo.known
        ladders = []
        for a in asks:
            k = known.get(id(a))
            if k is None or k.ask is not a:
                k = known[id(a)] = _Known(a)
            ladders.append(_Ladder.fresh(a, k))
        # Asks of earlier calls (replaced, or their workload gone) go once they are a quarter as
        # many as this call's: a new dict costs a few ms at 10,000 asks, an entry a few KB.
        if len(known) > len(asks) * 5 // 4:
            memo.known = {id(a): known[id(a)] for a in asks}

    # GPUs of Deployments no longer managed count against their caps in both phases until gone.
    held_elsewhere = _unmanaged_gpus(snapshot)

    # Phase 1: entitlement. Paused pools keep what they have and count against every cap.
    remaining = {d: n - held_elsewhere.get(d, 0) for d, n in caps.items()}
    for lad in ladders:
        if not lad.gpus:
            continue
        for g, p in zip(lad.granted, lad.ask.pools, strict=True):
            for d in p.cap_dims:
                if g and d in remaining:
                    remaining[d] -= g * p.spec.gpus_per_replica
    # By (-priority, name, index), as two stable sorts on plain keys: no key tuple per ask.
    names = [a.name for a in asks]
    order = sorted(range(len(asks)), key=names.__getitem__)
    ranks = [-a.priority for a in asks]
    several_tiers = len(set(ranks)) > 1
    if several_tiers:
        order.sort(key=ranks.__getitem__)
    for i in order:
        ask = asks[i]
        if ask.min_units:  # else the floor is 0 and the climb would take nothing
            lad = ladders[i]
            floor = min(ask.min_units, ask.desired_units)
            if lad.units < floor - EPS:
                lad.climb(floor, remaining, None)
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
        trial: list[_Ladder] = []
        trial_remaining = dict(remaining)
        for lad in members:
            copy = lad.climbed(trial_remaining)
            if copy.units < copy.ask.desired_units - EPS:  # the trial is void: the rest need not climb
                break
            trial.append(copy)
        if len(trial) == len(members):
            for i, lad in zip(tiers[prio], trial, strict=True):
                ladders[i] = lad
            remaining = trial_remaining
        else:
            _fill_tier(members, remaining)

    # Phase 2: feasibility against what exists now: every pod, whatever spec.replicas says. Only a
    # scale-up takes headroom, so only the asks with one wait for their turn below; the others get
    # what phase 1 gave them at once, in the order of `asks`.
    described: dict[Dim, str] = {}  # `describe` per dim, once
    results: dict[str, Grant] = {}
    rising: list[int] = []
    for idx, (ask, lad) in enumerate(zip(asks, ladders, strict=True)):
        # A ladder on a path `_Known` keeps has the grant it had on that path before, unless the
        # cap that bounds it (named in the grant's steps) changed.
        kept_in: dict[tuple[int, int | None], Grant] | None = None
        if lad.path != -1 and lad.known is not None:
            kept_in = lad.known.grants
            key = (lad.path, None if lad.blocked_by is None else caps.get(lad.blocked_by))
            kept = kept_in.get(key)
            if kept is not None:
                results[ask.name] = kept
                continue
        # Whole replicas of slow pools can overshoot the wish; drop the surplus now, by placement's
        # own rule (from the last pool), or the next reconcile would trim it and count it as a
        # scale-in.
        if lad.units - ask.desired_units > EPS:
            lad.trim_surplus()
        targets: dict[str, int] = {}
        units = 0.0
        # One length by construction; a strict zip per ask costs a tenth of this loop.
        for p, g in zip(ask.pools, lad.granted, strict=False):
            if g > p.current and not p.paused:
                rising.append(idx)
                break
            spec = p.spec
            targets[spec.key] = g
            units += g * spec.relative_throughput
        else:
            short = _short_of_wish(ask, lad, caps, described)
            grant = results[ask.name] = Grant(targets, units, () if short is None else (short,))
            if kept_in is not None:
                kept_in[key] = grant

    headroom = {d: n - held.get(d, 0) for d, n in caps.items()}
    # Scale-ups take headroom by (-below its minimum, -priority, share, name, index): stable sorts
    # of the phase 1 order, which is already by (-priority, name, index).
    if len(rising) > 1:
        up = set(rising)
        rising = [i for i in order if i in up]
        shares = {i: ladders[i].gpus / asks[i].weight for i in rising}
        rising.sort(key=shares.__getitem__)
        if several_tiers:
            rising.sort(key=ranks.__getitem__)
        met = {i: ladders[i].units >= asks[i].min_units - EPS for i in rising}
        if not all(met.values()):
            rising.sort(key=met.__getitem__)
    for idx in rising:
        ask, lad = asks[idx], ladders[idx]
        waits: list[str] = []
        targets = {}
        units = 0.0
        for p, g in zip(ask.pools, lad.granted, strict=False):
            spec = p.spec
            target = g
            if g > p.current and not p.paused:
                gpr = spec.gpus_per_replica
                fit, binding = _fit(headroom, p.add_dims, gpr)
                add = g - p.current if fit is None else min(g - p.current, fit)
                if add < g - p.current and binding is not None:
                    waits.append(
                        f"{spec.deployment}: {g - p.current - add} more replica(s) wait for GPUs under the "
                        f"{_described(binding, caps, described)} to be freed by scale-downs in progress"
                    )
                target = p.current + add
                for d in p.add_dims:
                    if d in headroom:
                        headroom[d] -= add * gpr
            targets[spec.key] = target
            units += target * spec.relative_throughput
        short = _short_of_wish(ask, lad, caps, described)
        results[ask.name] = Grant(targets, units, tuple(waits) if short is None else (short, *waits))
    return results


def _short_of_wish(ask: Ask, lad: _Ladder, caps: Mapping[Dim, int], described: dict[Dim, str]) -> str | None:
    """The step that says why phase 1 granted less than the wish (None: it granted it all)."""
    if lad.units >= ask.desired_units - EPS:
        return None
    if lad.blocked_by is None:
        return f"limits: granted {lad.units:g} of {ask.desired_units} units, every pool is full"
    return (
        f"limits: granted {lad.units:g} of {ask.desired_units} units, bounded by the "
        f"{_described(lad.blocked_by, caps, described)}"
    )


def _described(dim: Dim, caps: Mapping[Dim, int], memo: dict[Dim, str]) -> str:
    text = memo.get(dim)
    if text is None:
        text = memo[dim] = describe(dim, caps)
    return text


def _unmanaged_gpus(snapshot: ClusterSnapshot) -> dict[Dim, int]:
    held: dict[Dim, int] = {}
    for gone in snapshot.unmanaged:
        for d in usage_dims(gone.pool):
            held[d] = held.get(d, 0) + gone.replicas * gone.pool.gpus_per_replica
    return held


def held_gpus(asks: Sequence[Ask], snapshot: ClusterSnapshot) -> dict[Dim, int]:
    """GPUs held now under every dimension (`placement.usage_dims`): every pod of every pool (its
    spec, the surplus beyond it, the pods terminating) and the Deployments no longer managed."""
    held = _unmanaged_gpus(snapshot)
    for ask in asks:
        for p in ask.pools:
            gpus = (p.current + p.terminating + p.surplus) * p.spec.gpus_per_replica
            for d in usage_dims(p.spec):
                held[d] = held.get(d, 0) + gpus
    return held


def usage(
    asks: Sequence[Ask], grants: Mapping[str, Grant], held: Mapping[Dim, int], limits: Limits
) -> dict[Dim, GpuUsage]:
    """What the plan holds under every dimension, now (`held`, as `allocate` counted it) and once its
    targets are reached, with the caps: the limits stage's own count, for the dashboards."""
    granted = dict(held)
    for ask in asks:
        targets = grants[ask.name].targets
        for p in ask.pools:
            change = (targets.get(p.spec.key, p.current) - p.current) * p.spec.gpus_per_replica
            if change:
                for d in usage_dims(p.spec):
                    granted[d] = granted.get(d, 0) + change
    caps = _cap_limits(limits)
    return {
        d: GpuUsage(held.get(d, 0), granted.get(d, 0), caps.get(d)) for d in sorted({COMPANY, *held, *caps})
    }
