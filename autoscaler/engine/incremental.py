"""`reconcile_incremental`: the plan `reconcile` gives, recomputing only the workloads that need it.

    reconcile_incremental(workloads, snapshot, readings, state, limits, now, memo)
        -> (plan, state, memo)

`reconcile` runs every workload's policy, behavior and placement at every call; at 10,000 workloads
that is most of a reconcile, for workloads of which a few changed. Here a workload's results
(`reconcile.Staged`) are kept in a `Memo` that the caller passes back at the next call, and reused
while nothing they depend on changed:

- its configuration (the same `WorkloadSpec` object) and its state (the same `WorkloadState` object
  this engine handed back: a state adopted from another leader is recomputed from);
- its inputs: the values of its triggers' readings (a workload's readings mapping is never changed
  once given: the same mapping object again is taken for the same readings, as the controller's
  `put_reading` makes a new one per change), the `PoolStatus` of its pools, whether their
  clusters are unreachable, the free GPUs of their (cluster, GPU type) as far as
  `stage` reads them (`reconcile.free_gpus_read`), the type and provider caps
  (which caps its pools count against);
- time: each stage says until when its results hold with unchanged inputs (`Recommendation.wake_at`,
  `BehaviorResult.wake_at`, and placement's pending timeouts and blocks); a policy that says nothing
  (third-party ones, the baselines) runs at every reconcile.

The caps are shared, so the limits stage runs whole over every workload's ask and every decision
takes its new grant; the unchanged workloads' `Ask` objects are reused, and the limits stage keeps
what depends on an ask alone in its own memo (`limits.AllocationMemo`, kept in `Memo.allocation`).

Exactness. A skipped workload's state is the one of its last computation, while `reconcile` would
have moved its time stamps along (the policy memory's time, the newest stabilization entry,
`last_active`). The stages promise that, while their results hold, one call at a later time
rebuilds the state that calls at every reconcile up to then would have built. So before a skipped
workload is computed again, its policy and behavior run once at the previous reconcile's time with
the inputs they had (`settle` does the same for the whole state: the caller gives the settled state,
never the raw one, to anything outside the engine, such as the Lease). The plan is then the one
`reconcile` gives; tests/engine/test_incremental.py checks it on random sequences.

What may differ: a skipped workload keeps its previous `Decision` (its time and its explanation's
wording, e.g. "idle 40s", are of its last computation) unless its grant changed. Pure, as
`reconcile`: everything comes in as arguments, the new memo goes out; the memo is a cache, never
part of the engine state, and nothing is lost without it (a fresh `Memo()` recomputes everything).
One part of it is changed in place rather than copied, the limits stage's `Memo.allocation`: it
only ever holds functions of one `Ask` object each, so an older memo passed again still gives the
same plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from autoscaler.engine.behavior import decide
from autoscaler.engine.limits import AllocationMemo, Grant, held_gpus
from autoscaler.engine.placement import Ask
from autoscaler.engine.reconcile import (
    ABSENT,
    EMPTY_STATE,
    NO_READINGS,
    Staged,
    conclude,
    failed_write_notes,
    free_gpus_read,
    recommend,
    share,
    stage,
)
from autoscaler.engine.types import (
    ClusterSnapshot,
    Decision,
    Dim,
    EngineState,
    Frozen,
    Limits,
    Plan,
    PoolStatus,
    Reading,
    ScaleAction,
    WorkloadSpec,
    WorkloadState,
)

__all__ = ["Memo", "reconcile_incremental", "settle"]

# What a workload's stages were given besides its spec, state and the time (see `_inputs`): its
# pools' statuses, its triggers' values, since when each pool's cluster is unreachable and what
# `stage` takes of each pool's free GPU count (`reconcile.free_gpus_read`) (the last two empty
# when the snapshot has none anywhere).
_Inputs = tuple[
    tuple[PoolStatus, ...], tuple[float | None, ...], tuple[float | None, ...], tuple[int | bool | None, ...]
]
# A cluster with nothing unmanaged, to count what asks alone hold.
_NOWHERE = ClusterSnapshot(pools={})


@dataclass(frozen=True, slots=True)
class _Entry(Frozen):
    staged: Staged
    inputs: _Inputs
    at: float  # when `staged` was computed
    grant: Grant
    decision: Decision
    actions: tuple[ScaleAction, ...]
    # The decision carries a note of that reconcile only (a write that did not land, a dropped surge).
    noted: bool
    # The readings mapping `inputs` was taken from: the same object again holds the same values
    # (callers never change a workload's readings mapping once given, see `reconcile_incremental`).
    got: Mapping[str, Reading]


@dataclass(frozen=True, slots=True)
class Memo(Frozen):
    """What `reconcile_incremental` keeps between calls. `at`: the time of the call that made it;
    `recomputed`: how many workloads that call computed (the others were reused)."""

    at: float | None = None
    entries: Mapping[str, _Entry] = field(default_factory=dict)
    type_caps: Mapping[tuple[str, str], int] = field(default_factory=dict)
    provider_caps: Mapping[str, int] = field(default_factory=dict)
    recomputed: int = 0
    # `held_gpus` of the entries' asks without the unmanaged Deployments (those come from each
    # snapshot), and how many pools count under each dimension: updated by the asks that changed.
    held: Mapping[Dim, int] = field(default_factory=dict)
    pools: Mapping[Dim, int] = field(default_factory=dict)
    # The earliest time a workload's results stop holding with unchanged inputs (its `wake_at`): a
    # stabilization window, a cooldown or a pending timeout running out. The live loop reconciles
    # then, so a decision only time changes is made on time, not at the next periodic resync.
    # Workloads that change at every reconcile (no wake_at, e.g. a decaying hold) are not in it.
    next_wake: float = math.inf
    # The limits stage's own cache (per `Ask` object: the unchanged workloads' asks are reused).
    allocation: AllocationMemo = field(default_factory=AllocationMemo)
    # The snapshot's free GPUs and unreachable clusters at that call. Every entry's inputs agree with
    # them (it was computed or checked then), so while they are the same, a workload whose statuses
    # are the same needs no check of its own (`_unchanged`).
    free_gpus: Mapping[tuple[str, str], int] = field(default_factory=dict)
    unreachable: Mapping[str, float] = field(default_factory=dict)


def _inputs(wl: WorkloadSpec, snapshot: ClusterSnapshot, got: Mapping[str, Reading]) -> _Inputs:
    """Everything of this reconcile's inputs that `stage` reads for `wl`, as a value compared with
    `==`. Readings count by value (pollers make a new `Reading` at every poll); a failed one's time
    is left out because a failed trigger keeps its workload computed at every reconcile anyway
    (the behavior stage counts failures), and an unread one's time is never used."""
    pools = snapshot.pools
    statuses = tuple([pools.get(p.key, ABSENT) for p in wl.pools])
    values = tuple([None if (r := got.get(t.name)) is None else r.value for t in wl.triggers])
    return (statuses, values, *_cluster_inputs(wl, snapshot, statuses))


def _cluster_inputs(
    wl: WorkloadSpec, snapshot: ClusterSnapshot, statuses: tuple[PoolStatus, ...]
) -> tuple[tuple[float | None, ...], tuple[int | bool | None, ...]]:
    """The last two parts of `_inputs`, given the first (the pools' statuses)."""
    unreachable = snapshot.unreachable
    free = snapshot.free_gpus
    return (
        tuple([unreachable.get(p.cluster) for p in wl.pools]) if unreachable else (),
        tuple([free_gpus_read(wl, p, s, free) for p, s in zip(wl.pools, statuses, strict=True)])
        if free
        else (),
    )


def _unchanged(
    e: _Entry, wl: WorkloadSpec, snapshot: ClusterSnapshot, got: Mapping[str, Reading], same_cluster: bool
) -> bool:
    """`_inputs(wl, snapshot, got) == e.inputs`, without building it: the check every reused
    workload pays (the same object is the same status or readings; a value that is not equal to
    itself, NaN, counts as a change). `same_cluster`: the free GPUs and unreachable clusters are
    those of the last call (`Memo.free_gpus`), so with equal statuses the last two parts are too."""
    before = e.inputs
    statuses, values, unreachable, free = before
    pools = snapshot.pools
    for p, old in zip(wl.pools, statuses, strict=True):
        status = pools.get(p.key, ABSENT)
        if status is not old and status != old:
            return False
    if got is not e.got:
        for t, value in zip(wl.triggers, values, strict=True):
            r = got.get(t.name)
            if (None if r is None else r.value) != value:
                return False
    if not same_cluster and (unreachable or snapshot.unreachable or free or snapshot.free_gpus):
        # The statuses are equal to those of before: theirs serve.
        return _cluster_inputs(wl, snapshot, statuses) == (unreachable, free)
    return True


def _caught_up(s: Staged, at: float) -> WorkloadState:
    """The state `reconcile` would hold for this workload after a call at `at` (later than its
    computation, before its `wake_at`), its inputs unchanged: its policy and behavior run once more
    with what they were given then (the promise of `Recommendation.wake_at`)."""
    ws = s.state
    rec = recommend(s.workload, replace(s.ctx, now=at, memory=ws.policy_memory))
    caught_up = decide(s.workload, ws, s.behavior_input, at, rec.memory).state
    if not ws.blocked_until:
        return caught_up
    # Placement, run at `at`, drops the blocks that ran out by then.
    return replace(caught_up, blocked_until={k: t for k, t in ws.blocked_until.items() if t > at})


def settle(state: EngineState, memo: Memo) -> EngineState:
    """`state` (as `reconcile_incremental` returned it with `memo`) as `reconcile` would hold it: the
    workloads skipped at the last call caught up to its time. What to write where another process
    reads it (the Lease)."""
    at = memo.at
    if at is None:
        return state
    settled = dict(state.workloads)
    for name, e in memo.entries.items():
        if e.at < at and settled.get(name) is e.staged.state:
            settled[name] = _caught_up(e.staged, at)
    return EngineState(settled)


def _tally(asks: Sequence[Ask], held: dict[Dim, int], pools: dict[Dim, int], sign: int) -> None:
    """Add (sign 1) or take away (-1) what `asks` hold now under each dimension (`held_gpus`)."""
    for d, gpus in held_gpus(asks, _NOWHERE).items():
        held[d] = held.get(d, 0) + sign * gpus
    for ask in asks:
        for p in ask.pools:
            for d in p.spec.usage_dims:
                pools[d] = pools.get(d, 0) + sign


def reconcile_incremental(
    workloads: Sequence[WorkloadSpec],
    snapshot: ClusterSnapshot,
    readings: Mapping[str, Mapping[str, Reading]],
    state: EngineState,
    limits: Limits,
    now: float,
    memo: Memo,
) -> tuple[Plan, EngineState, Memo]:
    """`reconcile`, reusing what `memo` kept (see the module docstring). Give back the memo this
    returns at the next call; `Memo()` for a first call."""
    previous = memo.at
    entries = memo.entries
    # Reuse needs time to go forward, and the same capped dimensions (which caps a pool's replicas
    # count against is placement's); catching up skipped states is always due.
    same_cluster = snapshot.free_gpus == memo.free_gpus and snapshot.unreachable == memo.unreachable
    reusable = (
        previous is not None
        and now >= previous
        and limits.cluster_gpu_types == memo.type_caps
        and limits.provider_max_gpus == memo.provider_caps
    )
    staged: list[Staged] = []
    # The entries of the workloads reused, and the inputs of those computed now.
    kept: dict[str, _Entry] = {}
    fresh_asks: list[Ask] = []
    fresh: dict[str, tuple[_Inputs, Mapping[str, Reading]]] = {}
    for wl in workloads:
        name = wl.name
        ws = state.workloads.get(name, EMPTY_STATE)
        got = readings.get(name, NO_READINGS)
        e = entries.get(name)
        if e is not None and e.staged.state is ws:
            s = e.staged
            if (
                reusable
                and s.workload is wl
                and s.wake_at is not None
                and now < s.wake_at
                and _unchanged(e, wl, snapshot, got, same_cluster)
            ):
                staged.append(s)
                kept[name] = e
                continue
            if previous is not None and e.at < previous:
                # Skipped last time: caught up under what held then (its spec of then, too).
                ws = _caught_up(s, previous)
        computed = stage(wl, ws, snapshot, got, limits, now)
        staged.append(computed)
        fresh[name] = (_inputs(wl, snapshot, got), got)
        fresh_asks.append(computed.ask)

    # What every pool holds now, from the last call's count: only the asks that changed move it (a
    # dimension no pool counts under any more leaves it, as it is absent from `held_gpus`).
    held_by_asks, pools = dict(memo.held), dict(memo.pools)
    _tally([entries[name].staged.ask for name in entries.keys() - kept.keys()], held_by_asks, pools, -1)
    _tally(fresh_asks, held_by_asks, pools, 1)
    held_by_asks = {d: gpus for d, gpus in held_by_asks.items() if pools[d]}
    held = dict(held_by_asks)
    for d, gpus in held_gpus((), snapshot).items():  # the unmanaged Deployments
        held[d] = held.get(d, 0) + gpus

    new_entries: dict[str, _Entry] = {}

    def conclude_one(s: Staged, grant: Grant, surge_dropped: bool) -> tuple[Decision, Sequence[ScaleAction]]:
        wl = s.workload
        e = kept.get(wl.name)
        # A failed write or a dropped surge is a note of this reconcile only: the next one words
        # the decision again.
        noted = surge_dropped or bool(failed_write_notes(wl, snapshot))
        if e is None or noted or e.noted or (grant is not e.grant and grant != e.grant):
            decision, actions = conclude(s, grant, snapshot, now, surge_dropped)
            at = now if e is None else e.at
            seen, got = (e.inputs, e.got) if e is not None else fresh[wl.name]
            e = _Entry(s, seen, at, grant, decision, tuple(actions), noted, got)
        new_entries[wl.name] = e
        return e.decision, e.actions

    plan, new_state = share(staged, snapshot, limits, conclude_one, held, memo.allocation)
    new_memo = Memo(
        now,
        new_entries,
        limits.cluster_gpu_types,
        limits.provider_max_gpus,
        len(fresh),
        held_by_asks,
        {d: n for d, n in pools.items() if n},
        min((w for e in new_entries.values() if (w := e.staged.wake_at) is not None), default=math.inf),
        memo.allocation,
        dict(snapshot.free_gpus),
        dict(snapshot.unreachable),
    )
    return plan, new_state, new_memo
