"""`reconcile`: one pure decision over every workload.

    reconcile(workloads, snapshot, readings, state, limits, now) -> (plan, state)

Stages, in order: policy (readings -> recommended units), behavior (HPA-like smoothing, activation,
cooldown, fallback), placement (which pools keep and may add replicas), limits (caps and fair share
over all workloads). Everything the decision needs comes in as arguments; nothing here reads a
clock, a socket, the environment or a global, so the simulator and the live controller run the same
code, and identical inputs give identical plans. Callers: `sim.runner`; the live controller calls
`engine.incremental.reconcile_incremental`, which gives the same plan recomputing only what changed,
from the same pieces: `stage` (one workload up to the caps), `share` (the caps over all of them)
and `conclude` (one workload's decision and actions). `reconcile` stays the reference it is
checked against.

DESIGN.md writes the signature without `workloads`; the compiled policy files are passed explicitly
rather than hidden in `limits` or `state`, so a hot reload is simply a different argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from autoscaler.engine.behavior import BehaviorInput, decide
from autoscaler.engine.limits import AllocationMemo, Grant, allocate, held_gpus, usage
from autoscaler.engine.placement import (
    EPS,
    Ask,
    Placement,
    PoolAsk,
    first_open_pool,
    free_fit,
    place,
    pool_room,
)
from autoscaler.engine.policy import PolicyContext, Recommendation, reads_pool_room, triggers_read
from autoscaler.engine.types import (
    ActionKind,
    ClusterSnapshot,
    Decision,
    Dim,
    EngineState,
    FallbackBehavior,
    Frozen,
    Limits,
    Plan,
    PoolSpec,
    PoolStatus,
    Reading,
    ScaleAction,
    WorkloadSpec,
    WorkloadState,
)

# What a workload has before its first reconcile, what a pool the cluster does not show has, and
# what a workload without readings has (`engine.incremental` uses the same).
EMPTY_STATE = WorkloadState()
ABSENT = PoolStatus(0)
NO_READINGS: Mapping[str, Reading] = {}
# The failed triggers of a workload whose readings all came (one shared value, not one per call).
_NONE_FAILED: frozenset[str] = frozenset()


def recommend(workload: WorkloadSpec, ctx: PolicyContext) -> Recommendation:
    try:
        return workload.policy.recommend(ctx)
    except Exception as exc:  # a third-party policy's bug must not stop the other workloads
        return Recommendation(None, f"policy {type(workload.policy).__name__} failed: {exc!r}", ctx.memory)


def _action_kind(
    decision: Decision, pool: PoolAsk, target: int, *, first: bool, migrating: bool
) -> ActionKind:
    """Why this pool goes from `pool.current` to `target`: the first that applies, most specific
    first (the fallback set the size; stuck pods given up or replicas past the first pool; a cap
    granted less than wanted; the cooldown to zero; a rebalance step; else the plain direction).
    `migrating`: the workload rebalances and its wish did not fall, so a pool that shrinks gives up
    capacity that Ready replicas of earlier pools replaced (placement keeps no record of which)."""
    if decision.fallback:
        return ActionKind.FALLBACK
    capped = decision.granted_units + EPS < decision.desired_units
    if target < pool.current:
        if pool.gave_up:
            return ActionKind.SPILL
        if capped:
            return ActionKind.CAP
        if target == 0 and decision.desired_units == 0:
            return ActionKind.COOLDOWN
        return ActionKind.REBALANCE if migrating and not first else ActionKind.SCALE_DOWN
    if pool.rebalance:
        return ActionKind.REBALANCE
    if not first:
        return ActionKind.SPILL
    return ActionKind.CAP if capped else ActionKind.SCALE_UP


def failed_write_notes(workload: WorkloadSpec, snapshot: ClusterSnapshot) -> tuple[str, ...]:
    """The workload's writes of the previous reconcile that did not land, for its explanation (the
    sizes above already come from what the cluster has, so nothing else needs to know)."""
    if not snapshot.failed_writes:
        return ()
    return tuple(
        f"the last write did not land: {result.describe()}"
        for p in workload.pools
        if (result := snapshot.failed_writes.get(p.key)) is not None
    )


def _hold_unreachable(
    workload: WorkloadSpec, statuses: dict[str, PoolStatus], snapshot: ClusterSnapshot, now: float
) -> tuple[str, ...]:
    """Pools in clusters that cannot be reached hold as paused ones do (`statuses` is changed in
    place): whatever is planned there could not be written, and their last known GPUs stay
    counted. One line per such cluster for the explanation."""
    notes: dict[str, str] = {}
    for p in workload.pools:
        since = snapshot.unreachable.get(p.cluster)
        if since is None:
            continue
        statuses[p.key] = replace(statuses[p.key], paused=True)
        notes.setdefault(
            p.cluster,
            f"cluster {p.cluster} unreachable since t={since:.1f}s ({max(0.0, now - since):.0f}s): its "
            "pools hold their size, and their last known GPUs keep counting against the caps",
        )
    return tuple(notes.values())


_SURGE_DROPPED = "rebalance: surge dropped, another workload gets more GPUs without it"


def _surges_last(
    asks: list[Ask],
    grants: dict[str, Grant],
    limits: Limits,
    snapshot: ClusterSnapshot,
    held: Mapping[Dim, int],
) -> tuple[dict[str, Grant], frozenset[str]]:
    """A rebalance's surge is an improvement, never worth another workload's need: when some
    workload got less than it needs (its ask less any surge of its own), the limits stage shares
    the GPUs again with no surge at all, and that stands if it gives any workload more of what it
    needs. Returns the grants that stand and the workloads whose surge was dropped. A second
    allocation only when a surge meets a shortage."""
    if not any(a.surge for a in asks):
        return grants, frozenset()
    if all(grants[a.name].units >= a.desired_units - a.surge - EPS for a in asks):
        return grants, frozenset()
    # A surge is asked only when the workload needs no new replica, so without it no pool of its
    # adds any (their room stays as the surge left it).
    bare = [
        Ask(a.name, a.priority, a.weight, a.min_units, a.desired_units - a.surge, a.pools) if a.surge else a
        for a in asks
    ]
    shared = allocate(bare, limits, snapshot, held)
    if any(
        shared[a.name].units > min(grants[a.name].units, b.desired_units) + EPS
        for a, b in zip(asks, bare, strict=True)
    ):
        return shared, frozenset(a.name for a in asks if a.surge)
    return grants, frozenset()


@dataclass(frozen=True, slots=True)
class Staged(Frozen):
    """One workload at one reconcile up to the caps: its policy's, behavior's and placement's
    results, its ask for the limits stage and the state it carries to the next reconcile.

    `wake_at` and the inputs after it are for the incremental engine (`engine.incremental`): until
    when these results hold with unchanged inputs (None: not beyond this reconcile; math.inf: until
    an input changes), and what the policy and the behavior were given, to run them again later."""

    workload: WorkloadSpec
    rec: Recommendation
    desired: int
    behavior_steps: tuple[str, ...]
    fallback: bool
    placement: Placement
    failed: tuple[str, ...]
    cut_off: tuple[str, ...]
    ask: Ask
    state: WorkloadState
    wake_at: float | None
    ctx: PolicyContext
    behavior_input: BehaviorInput
    # The workload rebalances and its wish did not fall: a later pool that shrinks is a migration.
    migrating: bool = False

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        workload: WorkloadSpec,
        rec: Recommendation,
        desired: int,
        behavior_steps: tuple[str, ...],
        fallback: bool,
        placement: Placement,
        failed: tuple[str, ...],
        cut_off: tuple[str, ...],
        ask: Ask,
        state: WorkloadState,
        wake_at: float | None,
        ctx: PolicyContext,
        behavior_input: BehaviorInput,
        migrating: bool = False,
    ) -> None:
        object.__setattr__(self, "workload", workload)
        object.__setattr__(self, "rec", rec)
        object.__setattr__(self, "desired", desired)
        object.__setattr__(self, "behavior_steps", behavior_steps)
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "placement", placement)
        object.__setattr__(self, "failed", failed)
        object.__setattr__(self, "cut_off", cut_off)
        object.__setattr__(self, "ask", ask)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "wake_at", wake_at)
        object.__setattr__(self, "ctx", ctx)
        object.__setattr__(self, "behavior_input", behavior_input)
        object.__setattr__(self, "migrating", migrating)


def stage(
    wl: WorkloadSpec,
    ws: WorkloadState,
    snapshot: ClusterSnapshot,
    got: Mapping[str, Reading],
    limits: Limits,
    now: float,
) -> Staged:
    """Policy, behavior and placement of one workload: everything but the shared caps."""
    known_pools = snapshot.pools
    free_gpus = snapshot.free_gpus
    statuses: dict[str, PoolStatus] = {}
    for p in wl.pools:
        statuses[p.key] = known_pools.get(p.key, ABSENT)
    cut_off = _hold_unreachable(wl, statuses, snapshot, now) if snapshot.unreachable else ()
    current_units = 0.0
    ready_units = 0.0
    pool_replicas: list[int] = []
    pool_ready: list[int] = []
    rooms: list[int | None] = []
    for p in wl.pools:
        s = statuses[p.key]
        current_units += s.spec_replicas * p.relative_throughput
        ready_units += s.ready * p.relative_throughput
        pool_replicas.append(s.spec_replicas)
        pool_ready.append(s.ready)
        rooms.append(pool_room(p, s, ws.blocked_until, now, free_gpus))

    # Only the triggers the policy reads may hold the workload (fallback, no scale-down on
    # partial data) or activate it; the others are reported, never obeyed.
    reads = triggers_read(wl.policy, wl)
    values: dict[str, float] = {}
    failed: list[str] = []
    ignored: list[str] = []
    failed_at: dict[str, float] = {}
    active = False
    for t in wl.triggers:
        r = got.get(t.name)
        used = reads is None or t.name in reads
        if r is None or r.value is None or not math.isfinite(r.value):
            (failed if used else ignored).append(t.name)
            if r is not None and used:
                failed_at[t.name] = r.at
            continue
        values[t.name] = r.value
        if used and r.value > t.activation:
            active = True

    # Positional, in field order (workload, values, failed, current_units, ready_units,
    # startup_seconds, now, memory, pool_replicas, pool_ready, pool_room): a frozen dataclass's
    # keywords cost half again as much, for every workload.
    ctx = PolicyContext(
        wl,
        values,
        frozenset(failed) if failed else _NONE_FAILED,
        current_units,
        ready_units,
        first_open_pool(wl.pools, rooms).startup_seconds,
        now,
        ws.policy_memory,
        tuple(pool_replicas),
        tuple(pool_ready),
        tuple(rooms),
    )
    rec = recommend(wl, ctx)
    if ignored:
        unread = ", ".join(ignored)
        rec = replace(rec, reason=f"{rec.reason}; trigger(s) {unread} failed, not read by the policy")
    current = math.ceil(current_units - EPS)
    # The behavior stage smooths what the workload wants, so its "current" is what it wanted last
    # time, not what the caps let it have: otherwise a capped wish would count as a scale-up in
    # every rate period, swing with the grant, and make workloads preempt each other in turn.
    wanted = ws.last_desired if ws.last_desired is not None else current
    inp = BehaviorInput(rec.units, active, ctx.failed, wanted, failed_at)
    beh = decide(wl, ws, inp, now, rec.memory)
    # Holding means holding: a workload at 1.5 units that the behavior keeps at 2 must not gain
    # half a unit somewhere just because units are whole numbers.
    target_units = current_units if beh.desired == current else float(beh.desired)
    if failed and wl.fallback.behavior is not FallbackBehavior.STATIC:
        # The behavior stage steps from its last wish, which may sit below what runs now (whole
        # replicas of slow pools overshoot it); missing data must not trim that overshoot either.
        target_units = max(target_units, min(current_units, float(wl.max_replicas)))
    placement = place(
        wl.pools,
        statuses,
        target_units,
        ws.blocked_until,
        snapshot,
        limits.cluster_gpu_types,
        limits.provider_max_gpus,
        now,
        wl.rebalance,
    )
    ask = Ask(
        wl.name, wl.priority, wl.weight, wl.min_replicas, placement.units, placement.pools, placement.surge
    )
    new_state = beh.state  # with the policy's new memory already
    if placement.blocked_until != new_state.blocked_until:  # rare: a pool blocked or unblocked
        new_state = replace(new_state, blocked_until=placement.blocked_until)
    wake_at = None
    # Pods given up or kept past their timeout (placement's steps) make a new block every time.
    if rec.wake_at is not None and beh.wake_at is not None and not placement.steps:
        wake_at = min(rec.wake_at, beh.wake_at, _placement_wake(placement, statuses, wl))
    failed_t = (*failed, *ignored)
    return Staged(
        wl,
        rec,
        beh.desired,
        beh.steps,
        beh.fallback,
        placement,
        failed_t,
        cut_off,
        ask,
        new_state,
        wake_at,
        ctx,
        inp,
        wl.rebalance and beh.desired >= wanted,
    )


def free_gpus_read(
    wl: WorkloadSpec, pool: PoolSpec, status: PoolStatus, free_gpus: Mapping[tuple[str, str], int]
) -> int | bool | None:
    """What `stage` takes of the free GPU count of `pool`'s type (None: none), for the incremental
    engine to compare instead of the count, which moves with every pod scheduled anywhere: the
    room it leaves (`placement.free_fit`) where the policy reads rooms or a rebalance may surge
    into the pool, else only whether it leaves any (the first open pool, the look-ahead's
    startup); its pending pods and maxReplicas are in `status` and the spec, compared apart."""
    fit = free_fit(pool, status, free_gpus)
    if fit is None or wl.rebalance or reads_pool_room(wl.policy):
        return fit
    return fit > len(status.pending_since)


def _placement_wake(placement: Placement, statuses: Mapping[str, PoolStatus], wl: WorkloadSpec) -> float:
    """The first time placement alone would decide otherwise: a pending pod reaching its pool's
    timeout, a block ending (`pool_room` and `place` compare both with `now`)."""
    blocked = placement.blocked_until
    # The common case, no block, without min()'s keyword call: the same math.inf.
    first = min(blocked.values()) if blocked else math.inf
    for p in wl.pools:
        pending = statuses[p.key].pending_since
        if pending:
            first = min(first, min(pending) + p.pending_timeout_seconds)
    return first


def conclude(
    s: Staged, grant: Grant, snapshot: ClusterSnapshot, now: float, surge_dropped: bool = False
) -> tuple[Decision, list[ScaleAction]]:
    """The workload's decision and its actions, once the limits stage granted it `grant`
    (`surge_dropped`: without the rebalance surge its ask had, see `_surges_last`)."""
    wl = s.workload
    steps = (
        s.rec.reason,
        *s.behavior_steps,
        *s.placement.steps,
        *((_SURGE_DROPPED,) if surge_dropped else ()),
        *grant.steps,
        *failed_write_notes(wl, snapshot),
        *s.cut_off,
    )
    # Positional, in field order (workload, at, recommended_units, desired_units, granted_units,
    # targets, steps, failed_triggers, fallback): keyword calls cost several times as much, and
    # this is built for every workload at every reconcile.
    decision = Decision(
        wl.name, now, s.rec.units, s.desired, grant.units, grant.targets, steps, s.failed, s.fallback
    )
    resized: list[tuple[PoolAsk, int, ActionKind]] = []
    for i, ask_pool in enumerate(s.placement.pools):
        target = grant.targets[ask_pool.spec.key]
        if target != ask_pool.current:
            kind = _action_kind(decision, ask_pool, target, first=i == 0, migrating=s.migrating)
            resized.append((ask_pool, target, kind))
    if s.migrating:
        # The removal half of a migration step: placement says why a surge was added or a later
        # pool kept; only the plan knows when the kept replicas go.
        replaced = tuple(
            f"rebalance: {p.spec.deployment} {p.current}->{target}: replaced by Ready replicas of "
            "earlier pools"
            for p, target, kind in resized
            if kind is ActionKind.REBALANCE and target < p.current
        )
        if replaced:
            steps = (*steps, *replaced)
            decision = replace(decision, steps=steps)
    if not resized:  # most workloads at most reconciles
        return decision, []
    reason = "; ".join(steps)
    actions = [
        ScaleAction(p.spec.key, wl.name, p.current, target, reason, kind) for p, target, kind in resized
    ]
    return decision, actions


def reconcile(
    workloads: Sequence[WorkloadSpec],
    snapshot: ClusterSnapshot,
    readings: Mapping[str, Mapping[str, Reading]],
    state: EngineState,
    limits: Limits,
    now: float,
) -> tuple[Plan, EngineState]:
    staged = [
        stage(
            wl,
            state.workloads.get(wl.name, EMPTY_STATE),
            snapshot,
            readings.get(wl.name, NO_READINGS),
            limits,
            now,
        )
        for wl in workloads
    ]
    return share(
        staged, snapshot, limits, lambda s, grant, dropped: conclude(s, grant, snapshot, now, dropped)
    )


def share(
    staged: Sequence[Staged],
    snapshot: ClusterSnapshot,
    limits: Limits,
    conclude_one: Callable[[Staged, Grant, bool], tuple[Decision, Sequence[ScaleAction]]],
    held: Mapping[Dim, int] | None = None,
    allocation: AllocationMemo | None = None,
) -> tuple[Plan, EngineState]:
    """The limits stage over every workload's ask, then the plan and the state: `conclude_one` gives
    each workload's decision and actions once its grant is known (`conclude`, or a cached one), and
    whether its rebalance surge was dropped.
    `held`: `held_gpus` of the asks, when the caller knows it already; `allocation`: the limits
    stage's memo, when the caller keeps one."""
    asks = [s.ask for s in staged]
    if held is None:
        held = held_gpus(asks, snapshot)
    grants = allocate(asks, limits, snapshot, held, allocation)
    grants, unsurged = _surges_last(asks, grants, limits, snapshot, held)

    downs: list[ScaleAction] = []
    ups: list[ScaleAction] = []
    decisions: dict[str, Decision] = {}
    new_states: dict[str, WorkloadState] = {}
    # Only a workload with an action changes what the plan holds under a cap (`usage`).
    moving: list[Ask] = []
    for s in staged:
        name = s.workload.name
        decisions[name], actions = conclude_one(s, grants[name], name in unsurged)
        if actions:
            moving.append(s.ask)
            for action in actions:
                (downs if action.is_scale_down else ups).append(action)
        new_states[name] = s.state

    plan = Plan(tuple(downs + ups), decisions, usage(moving, grants, held, limits))
    return plan, EngineState(new_states)
