"""Invariants of the whole engine over random workloads, pools, caps and demand sequences.

Each test drives `reconcile` for several steps against a trivial cluster that applies every action
(or, where said, drops some writes as a flaky API server would) and checks after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine.limits import _caps
from autoscaler.engine.placement import cap_dims
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    BehaviorSpec,
    ClusterSnapshot,
    EngineState,
    FallbackBehavior,
    FallbackSpec,
    Limits,
    PoolStatus,
    Reading,
    WorkloadSpec,
)
from tests.factories import pool, workload

GPU_TYPES = ("A100", "H100", "RTX4090")
PROVIDERS = ("salad", "acs")


@st.composite
def fleets(draw: st.DrawFn, max_workloads: int = 6) -> tuple[list[WorkloadSpec], Limits]:
    n = draw(st.integers(1, max_workloads))
    workloads = []
    for i in range(n):
        pools = []
        for j in range(draw(st.integers(1, 3))):
            virtual = draw(st.booleans())
            pools.append(
                pool(
                    f"w{i}-p{j}",
                    virtual=virtual,
                    gpu=draw(st.sampled_from(GPU_TYPES)),
                    gpus=draw(st.sampled_from((1, 1, 2, 4))),
                    thr=draw(st.sampled_from((0.5, 1.0, 1.5))),
                    max_replicas=draw(st.none() | st.integers(0, 12)),
                    provider=draw(st.sampled_from(PROVIDERS)) if virtual else None,
                )
            )
        workloads.append(
            workload(
                f"w{i}",
                tuple(pools),
                min_replicas=draw(st.integers(0, 3)),
                max_replicas=draw(st.integers(3, 40)),
                priority=draw(st.sampled_from((0, 0, 10))),
                weight=draw(st.sampled_from((0.5, 1.0, 2.0))),
            )
        )
    caps = st.none() | st.integers(0, 40)
    limits = Limits(
        company_max_gpus=draw(caps),
        cluster_gpu_types={("c1", t): c for t in GPU_TYPES if (c := draw(caps)) is not None},
        provider_max_gpus={p: c for p in PROVIDERS if (c := draw(caps)) is not None},
    )
    return workloads, limits


def usage_by_cap(
    workloads: list[WorkloadSpec], sizes: dict[str, int], limits: Limits
) -> dict[tuple[str, ...], int]:
    used: dict[tuple[str, ...], int] = {}
    for wl in workloads:
        for p in wl.pools:
            for d in cap_dims(p, limits.cluster_gpu_types, limits.provider_max_gpus):
                used[d] = used.get(d, 0) + sizes.get(p.key, 0) * p.gpus_per_replica
    return used


def cap_table(limits: Limits) -> dict[tuple[str, ...], int]:
    return _caps(limits, ClusterSnapshot(pools={}), [])


@dataclass
class Cluster:
    """Applies plans: the Deployment's replicas become the target (unless the write is dropped)."""

    sizes: dict[str, int]

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in self.sizes.items()})


def readings_for(
    workloads: list[WorkloadSpec], demand: list[float | None], at: float
) -> dict[str, dict[str, Reading]]:
    return {
        wl.name: {"q": Reading(value=d, at=at, error=None if d is not None else "down")}
        for wl, d in zip(workloads, demand, strict=False)
    }


demand_steps = st.lists(
    st.lists(st.none() | st.floats(0, 400), min_size=6, max_size=6), min_size=1, max_size=8
)


@settings(max_examples=150, deadline=None)
@given(fleets(), demand_steps, st.lists(st.booleans(), min_size=64, max_size=64))
def test_existing_plus_requested_gpus_never_exceed_any_cap(fleet, steps, drops) -> None:  # type: ignore[no-untyped-def]
    workloads, limits = fleet
    caps = cap_table(limits)
    cluster = Cluster({})
    state = EngineState()
    for t, demand in enumerate(steps):
        plan, state = reconcile(
            workloads, cluster.snapshot(), readings_for(workloads, demand, t * 15.0), state, limits, t * 15.0
        )
        # What may exist at once while the plan is carried out: the larger of before and after.
        peak = {
            k: max(v, cluster.sizes.get(k, 0)) for d in plan.decisions.values() for k, v in d.targets.items()
        }
        for dim, used in usage_by_cap(workloads, peak, limits).items():
            if dim in caps:
                assert used <= caps[dim], (dim, used, caps[dim], plan)
        for i, action in enumerate(plan.actions):
            if not drops[(t * 7 + i) % 64]:  # some writes fail; the next reconcile sees the truth
                cluster.sizes[action.pool] = action.to_replicas


@settings(max_examples=150, deadline=None)
@given(fleets(), demand_steps)
def test_no_workload_drops_below_its_minimum_while_the_caps_allow_it(fleet, steps) -> None:  # type: ignore[no-untyped-def]
    workloads, limits = fleet
    # Give every cap room for all minimums on any pool, so "the cap allows it" holds.
    room = sum(wl.min_replicas * 4 * 2 for wl in workloads)
    limits = Limits(
        company_max_gpus=None if limits.company_max_gpus is None else limits.company_max_gpus + room,
        cluster_gpu_types={k: v + room for k, v in limits.cluster_gpu_types.items()},
        provider_max_gpus={k: v + room for k, v in limits.provider_max_gpus.items()},
    )
    workloads = [w for w in workloads if any(p.max_replicas is None for p in w.pools)]
    cluster = Cluster({})
    state = EngineState()
    for t, demand in enumerate(steps):
        before = {
            wl.name: sum(cluster.sizes.get(p.key, 0) * p.relative_throughput for p in wl.pools)
            for wl in workloads
        }
        plan, state = reconcile(
            workloads, cluster.snapshot(), readings_for(workloads, demand, t * 15.0), state, limits, t * 15.0
        )
        for wl in workloads:
            granted = plan.decisions[wl.name].granted_units
            if before[wl.name] >= wl.min_replicas:
                assert granted >= wl.min_replicas - 1e-9, (
                    wl.name,
                    granted,
                    plan.decisions[wl.name].explain(),
                )
        for action in plan.actions:
            cluster.sizes[action.pool] = action.to_replicas
    if len(steps) >= 2:  # from nothing, every minimum is reached within two steps
        for wl in workloads:
            units = sum(cluster.sizes.get(p.key, 0) * p.relative_throughput for p in wl.pools)
            assert units >= wl.min_replicas - 1e-9


@settings(max_examples=150, deadline=None)
@given(
    fleets(max_workloads=3),
    demand_steps,
    st.sampled_from((FallbackBehavior.HOLD, FallbackBehavior.CURRENT_IF_HIGHER)),
)
def test_a_failed_trigger_never_lowers_replicas(fleet, steps, fallback) -> None:  # type: ignore[no-untyped-def]
    workloads, _ = fleet
    workloads = [
        workload(
            w.name,
            w.pools,
            min_replicas=w.min_replicas,
            max_replicas=w.max_replicas,
            fallback=FallbackSpec(failure_threshold=2, behavior=fallback, replicas=2),
        )
        for w in workloads
    ]
    cluster = Cluster({})
    state = EngineState()
    for t, demand in enumerate(steps):
        plan, state = reconcile(
            workloads,
            cluster.snapshot(),
            readings_for(workloads, demand, t * 15.0),
            state,
            Limits(),
            t * 15.0,
        )
        for wl, d in zip(workloads, demand, strict=False):
            units = sum(cluster.sizes.get(p.key, 0) * p.relative_throughput for p in wl.pools)
            # maxReplicas still applies while holding (whole replicas of slow pools can overshoot it).
            if d is None and units <= wl.max_replicas:
                for p in wl.pools:
                    assert plan.decisions[wl.name].targets[p.key] >= cluster.sizes.get(p.key, 0)
        for action in plan.actions:
            cluster.sizes[action.pool] = action.to_replicas


@settings(max_examples=100, deadline=None)
@given(fleets(), demand_steps)
def test_identical_inputs_give_identical_plans(fleet, steps) -> None:  # type: ignore[no-untyped-def]
    workloads, limits = fleet

    def run() -> list[object]:
        cluster, state, out = Cluster({}), EngineState(), []
        for t, demand in enumerate(steps):
            plan, state = reconcile(
                workloads,
                cluster.snapshot(),
                readings_for(workloads, demand, t * 15.0),
                state,
                limits,
                t * 15.0,
            )
            out.append(plan)
            for action in plan.actions:
                cluster.sizes[action.pool] = action.to_replicas
        return out

    assert run() == run()


@settings(max_examples=60, deadline=None)
@given(fleets(), st.lists(st.floats(0, 400), min_size=6, max_size=6))
def test_constant_demand_settles_without_flapping_even_when_caps_bind(fleet, demand) -> None:  # type: ignore[no-untyped-def]
    workloads, limits = fleet
    # The HPA's default rate policies and stabilization windows, not the instant test rules.
    workloads = [replace(w, behavior=BehaviorSpec()) for w in workloads]
    cluster = Cluster({})
    state = EngineState()
    late_actions = []
    for t in range(80):  # 20 minutes at 15 s
        plan, state = reconcile(
            workloads, cluster.snapshot(), readings_for(workloads, demand, t * 15.0), state, limits, t * 15.0
        )
        if t >= 60:
            late_actions += plan.actions
        for action in plan.actions:
            cluster.sizes[action.pool] = action.to_replicas
    assert late_actions == []
