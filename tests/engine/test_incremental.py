"""`reconcile_incremental` gives the plan `reconcile` gives, and recomputes only what changed.

The property test runs both engines side by side on random sequences of reconciles over random
fleets (queue-sla and target policies, HPA windows, rate policies, cooldowns, fallbacks, caps, pods
stuck Pending, unreachable clusters, free GPUs), each step changing a random part of the inputs:
time, readings, pool statuses, a workload's spec, the limits. After every step the two plans have
the same actions and the same numbers in every decision, and the incremental engine's state, once
settled, equals the full recompute's exactly (so every later decision is the same too).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autoscaler.engine.incremental import Memo, reconcile_incremental, settle
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ActionKind,
    ActionResult,
    BehaviorSpec,
    ClusterSnapshot,
    EngineState,
    FallbackBehavior,
    FallbackSpec,
    Limits,
    Outcome,
    Plan,
    PoolStatus,
    RateKind,
    RatePolicy,
    Reading,
    ScaleAction,
    ScalingRules,
    SelectPolicy,
    UnmanagedPool,
    WorkloadSpec,
)
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from autoscaler.policies.target import TargetOptions, TargetPolicy
from tests.factories import INSTANT, pool, trigger, workload

TRIGGERS = ("backlog", "rate", "done", "inflight")
# Few distinct values, so that readings often stay put (what lets workloads settle).
VALUES = (None, 0.0, 2.0, 7.5, 40.0)
DTS = (0.0, 1.0, 5.0, 15.0, 15.0, 60.0, 240.0, 2000.0)


def _policy(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return TargetPolicy(TargetOptions(tolerance=draw(st.sampled_from((0.0, 0.1)))))
    learn = draw(st.sampled_from(("profiled", "deliveries", "little")))
    options: dict[str, Any] = {
        "maxWaitSeconds": draw(st.sampled_from((5.0, 30.0))),
        "rateTrigger": draw(st.sampled_from((None, "rate"))),
        "holdSeconds": draw(st.sampled_from((0.0, 10.0, 120.0, 1800.0))),
        "holdDecay": draw(st.booleans()),
        "lookahead": draw(st.booleans()),
    }
    if learn == "profiled" or draw(st.booleans()):
        options["serviceRatePerReplica"] = draw(st.sampled_from((0.5, 2.0)))
    if learn != "profiled":
        options["deliveryTrigger"] = "done"
    if learn == "little":
        options["inFlightTrigger"] = "inflight"
        options["concurrencyPerReplica"] = 4
    return QueueSlaPolicy(QueueSlaOptions(**options))


def _behavior(draw: st.DrawFn) -> BehaviorSpec:
    kind = draw(st.sampled_from(("instant", "hpa", "custom")))
    if kind == "instant":
        return INSTANT
    if kind == "hpa":
        return BehaviorSpec(cooldown_seconds=draw(st.sampled_from((0.0, 30.0, 300.0))))
    rates = st.sampled_from(
        (
            (),
            (RatePolicy(RateKind.PODS, 1, 15.0),),
            (RatePolicy(RateKind.PERCENT, 50, 60.0), RatePolicy(RateKind.PODS, 2, 30.0)),
        )
    )
    windows = st.sampled_from((0.0, 20.0, 120.0))
    return BehaviorSpec(
        scale_up=ScalingRules(draw(windows), draw(rates), draw(st.sampled_from(tuple(SelectPolicy)))),
        scale_down=ScalingRules(draw(windows), draw(rates)),
        cooldown_seconds=draw(st.sampled_from((0.0, 30.0, 300.0))),
    )


def _workload(draw: st.DrawFn, i: int) -> WorkloadSpec:
    pools = [
        pool(
            f"w{i}-a100",
            startup=draw(st.sampled_from((30.0, 90.0))),
            timeout=draw(st.sampled_from((20.0, 300.0))),
            max_replicas=draw(st.none() | st.integers(1, 6)),
        )
    ]
    if draw(st.booleans()):
        pools.append(pool(f"w{i}-salad", virtual=True, gpu="RTX4090", cluster="c2", thr=0.5, startup=200.0))
    spec = workload(
        f"w{i}",
        tuple(pools),
        triggers=tuple(trigger(name, target=10.0, activation=1.0) for name in TRIGGERS),
        min_replicas=draw(st.integers(0, 2)),
        max_replicas=draw(st.integers(2, 20)),
        priority=draw(st.sampled_from((0, 10))),
        weight=draw(st.sampled_from((1.0, 2.0))),
        behavior=_behavior(draw),
        fallback=FallbackSpec(
            failure_threshold=draw(st.integers(1, 3)),
            behavior=draw(st.sampled_from(tuple(FallbackBehavior))),
            replicas=2,
        ),
        policy=_policy(draw),
    )
    # Rebalance (placement moving replicas to the first pool as it frees) with two pools only.
    return replace(spec, rebalance=len(pools) > 1 and draw(st.booleans()))


def _limits(draw: st.DrawFn) -> Limits:
    caps = st.none() | st.integers(0, 30)
    return Limits(
        company_max_gpus=draw(caps),
        cluster_gpu_types={
            k: c for k in (("c1", "A100"), ("c2", "RTX4090")) if (c := draw(caps)) is not None
        },
        provider_max_gpus={"salad": c} if (c := draw(caps)) is not None else {},
    )


def _numbers(plan: Plan) -> tuple[object, ...]:
    actions = tuple((a.pool, a.workload, a.from_replicas, a.to_replicas, a.kind) for a in plan.actions)
    decisions = {
        name: (
            d.recommended_units,
            d.desired_units,
            d.granted_units,
            dict(d.targets),
            d.failed_triggers,
            d.fallback,
        )
        for name, d in plan.decisions.items()
    }
    return actions, decisions, dict(plan.usage)


def _differences(got: Any, want: Any) -> object:
    if isinstance(got, tuple):
        return [_differences(g, w) for g, w in zip(got, want, strict=True) if g != w]
    if isinstance(got, dict):
        return {k: (got.get(k), want.get(k)) for k in {*got, *want} if got.get(k) != want.get(k)}
    return (got, want)


class Cluster:
    """Applies every action; new replicas of a regular pool may get stuck Pending."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.pending: dict[str, tuple[float, ...]] = {}
        self.free: dict[tuple[str, str], int] = {}
        self.unreachable: dict[str, float] = {}
        self.statuses: dict[str, PoolStatus] = {}
        self.unmanaged: tuple[UnmanagedPool, ...] = ()
        self.failed: dict[str, ActionResult] = {}

    def snapshot(self) -> ClusterSnapshot:
        for key, n in self.sizes.items():
            pending = self.pending.get(key, ())
            status = PoolStatus(n, ready=n - len(pending), pending_since=pending)
            if self.statuses.get(key) != status:  # a new object only when it changed, as a watch does
                self.statuses[key] = status
        return ClusterSnapshot(
            pools=dict(self.statuses),
            free_gpus=dict(self.free),
            unmanaged=self.unmanaged,
            failed_writes=dict(self.failed),
            unreachable=dict(self.unreachable),
        )

    def apply(self, plan: Plan, now: float, stuck: bool, lost: int) -> None:
        """`lost`: the index of an action whose write does not land (none when out of range)."""
        self.failed = {}
        for i, a in enumerate(plan.actions):
            if i == lost:
                self.failed[a.pool] = ActionResult(a, Outcome.FAILED, "500")
                continue
            pending = self.pending.get(a.pool, ())
            if a.to_replicas > a.from_replicas and stuck and "a100" in a.pool:
                pending = pending + (now,) * (a.to_replicas - a.from_replicas)
            self.pending[a.pool] = pending[: max(0, a.to_replicas)]
            self.sizes[a.pool] = a.to_replicas


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_incremental_engine_gives_the_full_recompute_s_plans_and_state(data: st.DataObject) -> None:
    draw = data.draw
    workloads = [_workload(draw, i) for i in range(draw(st.integers(1, 5)))]
    limits = _limits(draw)
    cluster = Cluster()
    readings: dict[str, dict[str, Reading]] = {wl.name: {} for wl in workloads}
    full_state = EngineState()
    state, memo = EngineState(), Memo()
    now = 0.0
    skipped = 0
    for step in range(draw(st.integers(2, 14))):
        now += draw(st.sampled_from(DTS))
        for wl in workloads:  # each workload's readings change with some chance, one trigger at a time
            for name in TRIGGERS:
                if step == 0 or draw(st.integers(0, 9)) == 0:
                    value = draw(st.sampled_from(VALUES))
                    # A new mapping, as the controller makes one: the engine takes the same mapping
                    # object for the same readings (`reconcile_incremental`).
                    readings[wl.name] = {
                        **readings[wl.name],
                        name: Reading(value, now, None if value is not None else "down"),
                    }
        change = draw(st.integers(0, 19))
        if change == 0:  # a reload: a new spec object, maybe with other bounds
            i = draw(st.integers(0, len(workloads) - 1))
            workloads[i] = replace(workloads[i], max_replicas=draw(st.integers(2, 20)))
        elif change == 1:
            limits = _limits(draw)
        elif change == 2:
            cluster.free[("c1", "A100")] = draw(st.integers(0, 8) | st.sampled_from((40, 100)))
        elif change == 3:
            cluster.free.clear()
        elif change == 4:
            cluster.unreachable = {"c2": now} if not cluster.unreachable else {}
        elif change == 5:
            cluster.pending.clear()  # the pods got scheduled
        elif change == 6:  # a Deployment no workload manages any more holds GPUs, or is gone
            gone = pool("old-a100", max_replicas=None)
            cluster.unmanaged = () if cluster.unmanaged else (UnmanagedPool(gone, draw(st.integers(1, 6))),)
        snapshot = cluster.snapshot()
        plan, full_state = reconcile(workloads, snapshot, readings, full_state, limits, now)
        incremental, state, memo = reconcile_incremental(
            workloads, snapshot, readings, state, limits, now, memo
        )
        if any(a.kind is ActionKind.REBALANCE for a in plan.actions):
            event("a rebalance step")  # the steps the property covers (--hypothesis-show-statistics)
        got, want = _numbers(incremental), _numbers(plan)
        assert got == want, _differences(got, want)
        settled = settle(state, memo)
        assert settled == full_state, _differences(settled.workloads, full_state.workloads)
        skipped += len(workloads) - memo.recomputed
        cluster.apply(plan, now, stuck=draw(st.booleans()), lost=draw(st.integers(0, 9)))
    # Not part of the property, but a run where nothing is ever skipped would prove nothing.
    data.draw(st.just(skipped), label="workloads skipped")


def _steady_fleet(n: int) -> tuple[list[WorkloadSpec], dict[str, dict[str, Reading]]]:
    policy = QueueSlaPolicy(QueueSlaOptions(maxWaitSeconds=30, rateTrigger="rate", serviceRatePerReplica=1.0))
    workloads = [
        workload(
            f"w{i}", triggers=(trigger("backlog"), trigger("rate")), policy=policy, behavior=BehaviorSpec()
        )
        for i in range(n)
    ]
    readings = {wl.name: {"backlog": Reading(5.0, 0.0), "rate": Reading(2.0, 0.0)} for wl in workloads}
    return workloads, readings


def _run(
    workloads: list[WorkloadSpec],
    readings: dict[str, dict[str, Reading]],
    times: list[float],
    state: EngineState,
    memo: Memo,
    sizes: dict[str, int],
) -> tuple[Plan, EngineState, Memo]:
    plan = Plan((), {})
    for now in times:
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state, memo = reconcile_incremental(workloads, snapshot, readings, state, Limits(), now, memo)
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
    return plan, state, memo


def test_a_steady_fleet_is_not_recomputed_and_one_changed_reading_recomputes_one_workload() -> None:
    workloads, readings = _steady_fleet(20)
    sizes: dict[str, int] = {}
    plan, state, memo = _run(workloads, readings, [0.0, 15.0, 30.0], EngineState(), Memo(), sizes)
    assert memo.recomputed == 0
    assert len(plan.decisions) == 20
    # A new Reading object with the same value is no change (pollers make one at every poll).
    readings["w3"] = {"backlog": Reading(5.0, 40.0), "rate": Reading(2.0, 40.0)}
    readings["w7"] = {"backlog": Reading(500.0, 40.0), "rate": Reading(2.0, 40.0)}
    plan, state, memo = _run(workloads, readings, [45.0], state, memo, sizes)
    assert memo.recomputed == 1
    assert plan.decisions["w7"].at == 45.0
    assert plan.decisions["w3"].at < 45.0  # a skipped workload keeps its decision
    assert plan.decisions["w7"].desired_units > plan.decisions["w3"].desired_units


def test_a_fresh_memo_or_an_adopted_state_recomputes_everything() -> None:
    workloads, readings = _steady_fleet(5)
    sizes: dict[str, int] = {}
    _, state, memo = _run(workloads, readings, [0.0, 15.0, 30.0], EngineState(), Memo(), sizes)
    _, _, fresh = _run(workloads, readings, [45.0], state, Memo(), dict(sizes))
    assert fresh.recomputed == 5
    adopted = EngineState({n: replace(s) for n, s in state.workloads.items()})  # equal, other objects
    _, _, memo = _run(workloads, readings, [45.0], adopted, memo, dict(sizes))
    assert memo.recomputed == 5


def test_a_settled_workload_wakes_when_its_cooldown_runs_out() -> None:
    # Below activation with one replica running: it stays at one until the cooldown ends, then goes
    # to zero at the first reconcile past it, as the full recompute does.
    wl = workload(
        "w", behavior=replace(INSTANT, cooldown_seconds=100.0), triggers=(trigger("q", activation=5.0),)
    )
    readings = {"w": {"q": Reading(1.0, 0.0)}}
    sizes = {wl.pools[0].key: 1}
    plan, state, memo = _run([wl], readings, [0.0, 30.0, 60.0], EngineState(), Memo(), sizes)
    assert memo.recomputed == 0 and not plan.actions
    plan, state, memo = _run([wl], readings, [101.0], state, memo, sizes)
    assert memo.recomputed == 1
    assert [(a.from_replicas, a.to_replicas) for a in plan.actions] == [(1, 0)]


def test_queue_sla_settles_exactly_on_steady_readings() -> None:
    # The averages and the trend reach the reading and zero in finitely many calls (they are
    # snapped within 1e-9), after which the policy says its answer holds until the inputs change.
    workloads, readings = _steady_fleet(1)
    sizes: dict[str, int] = {}
    readings["w0"] = {**readings["w0"], "rate": Reading(3.0, 0.0)}
    _, state, memo = _run(workloads, readings, [0.0], EngineState(), Memo(), sizes)
    # A jump: a trend, and averages far from the reading.
    readings["w0"] = {**readings["w0"], "rate": Reading(9.0, 1.0)}
    # About 500 calls: the rate noise the trend's significance test tracks falls 5 % per call.
    times = [15.0 * k for k in range(1, 800)]
    _, state, memo = _run(workloads, readings, times, state, memo, sizes)
    memory: Any = state.workloads["w0"].policy_memory
    assert (memory.rate, memory.slow, memory.trend) == (9.0, 9.0, 0.0)
    assert memo.recomputed == 0
    assert memo.entries["w0"].staged.rec.wake_at is not None and math.isfinite(
        memo.entries["w0"].staged.rec.wake_at
    )


def test_a_skipped_workload_s_decision_says_when_its_write_did_not_land() -> None:
    workloads, readings = _steady_fleet(3)
    sizes: dict[str, int] = {}
    plan, state, memo = _run(workloads, readings, [0.0, 15.0], EngineState(), Memo(), sizes)
    key = workloads[1].pools[0].key
    lost = ActionResult(ScaleAction(key, "w1", 1, 2, "more"), Outcome.CONFLICT, "409")
    snapshot = ClusterSnapshot(
        pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()}, failed_writes={key: lost}
    )
    plan, state, memo = reconcile_incremental(workloads, snapshot, readings, state, Limits(), 30.0, memo)
    assert memo.recomputed == 0
    assert any("did not land" in step for step in plan.decisions["w1"].steps)
    snapshot = replace(snapshot, failed_writes={})
    plan, state, memo = reconcile_incremental(workloads, snapshot, readings, state, Limits(), 45.0, memo)
    assert not any("did not land" in step for step in plan.decisions["w1"].steps)


class _RoomReadingTarget(TargetPolicy):
    """The target policy, saying it may read `PolicyContext.pool_room` (as a policy that says
    nothing does)."""

    reads_pool_room = True


def _free_gpus_run(policy: Any) -> Any:
    """One workload with 2 replicas of a regular pool of maxReplicas 4, one of them Pending,
    wanting 4; each call gives the free A100 count and returns (incremental plan, full plan,
    workloads the incremental call recomputed)."""
    wl = workload(
        "w",
        pools=(pool("w-a100", max_replicas=4), pool("w-salad", virtual=True)),
        triggers=(trigger("q"),),
        behavior=INSTANT,
        policy=policy,
    )
    readings = {"w": {"q": Reading(40.0, 0.0)}}  # four replicas' worth
    pools = {"ns/w-a100": PoolStatus(2, ready=1, pending_since=(0.0,)), "ns/w-salad": PoolStatus(0)}
    state, full_state, memo = EngineState(), EngineState(), Memo()

    def at(now: float, free: int) -> tuple[Plan, Plan, int]:
        nonlocal state, full_state, memo
        snapshot = ClusterSnapshot(pools=pools, free_gpus={("c1", "A100"): free})
        plan, state, memo = reconcile_incremental([wl], snapshot, readings, state, Limits(), now, memo)
        full, full_state = reconcile([wl], snapshot, readings, full_state, Limits(), now)
        return plan, full, memo.recomputed

    return at


def test_free_gpus_count_as_far_as_a_policy_that_reads_rooms_sees_them() -> None:
    """Every pod scheduled anywhere moves the free GPU count of its type. A workload whose policy
    may read its pools' rooms is recomputed for it only once the count bounds a room more than
    maxReplicas does (`placement.free_fit`; its own pending pod takes a free GPU first)."""
    at = _free_gpus_run(_RoomReadingTarget(TargetOptions()))
    at(0.0, 100)
    at(10.0, 100)
    assert at(20.0, 50)[2] == 0
    plan, full, recomputed = at(30.0, 3)  # the pending pod takes one, two more still fit
    assert recomputed == 0
    assert plan.decisions["w"].targets == full.decisions["w"].targets == {"ns/w-a100": 4, "ns/w-salad": 0}
    plan, full, recomputed = at(40.0, 2)
    assert recomputed == 1
    assert plan.decisions["w"].targets == full.decisions["w"].targets == {"ns/w-a100": 3, "ns/w-salad": 1}


def test_free_gpus_count_for_other_policies_only_when_a_room_opens_or_closes() -> None:
    """A policy that never reads rooms (target, queue-sla) sees free GPUs only through the first
    pool with room; the limits stage's own free-GPU cap still spills what does not fit."""
    at = _free_gpus_run(TargetPolicy(TargetOptions()))
    at(0.0, 100)
    at(10.0, 100)
    plan, full, recomputed = at(20.0, 2)
    assert recomputed == 0
    assert plan.decisions["w"].targets == full.decisions["w"].targets == {"ns/w-a100": 3, "ns/w-salad": 1}
    plan, full, recomputed = at(30.0, 1)  # the pending pod takes the last one: no room
    assert recomputed == 1
    assert plan.decisions["w"].targets == full.decisions["w"].targets
