"""Sharing GPUs between workloads: caps, minimums, priority, fair share, and headroom from what exists."""

from __future__ import annotations

import pytest

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    BehaviorSpec,
    ClusterSnapshot,
    EngineState,
    Limits,
    Plan,
    PoolStatus,
    WorkloadSpec,
)
from tests.factories import pool, read, workload


def run(
    workloads: list[WorkloadSpec],
    demand: dict[str, float],
    limits: Limits,
    pools: dict[str, PoolStatus] | None = None,
    free: dict[tuple[str, str], int] | None = None,
) -> Plan:
    readings = {name: {"q": read(v * 10)} for name, v in demand.items()}  # target 10 per replica
    snapshot = ClusterSnapshot(pools=pools or {}, free_gpus=free or {})
    plan, _ = reconcile(workloads, snapshot, readings, EngineState(), limits, 0.0)
    return plan


def targets(plan: Plan) -> dict[str, int]:
    return {k: v for d in plan.decisions.values() for k, v in d.targets.items()}


def two_pools(name: str, **kw: object) -> WorkloadSpec:
    return workload(name, (pool(f"{name}-reg"), pool(f"{name}-virt", virtual=True, gpu="RTX4090")), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "workloads", "demand", "limits", "expected"),
    [
        # Nothing contended: everyone gets their wish in their first pool.
        (
            "uncontended",
            [workload("a"), workload("b")],
            {"a": 3, "b": 4},
            Limits(company_max_gpus=10),
            {"ns/a-a100": 3, "ns/b-a100": 4},
        ),
        # Equal weights, equal priority, cap 6: max-min fair, the small wish is met in full.
        (
            "fair share",
            [workload("a"), workload("b"), workload("c")],
            {"a": 1, "b": 8, "c": 8},
            Limits(company_max_gpus=7),
            {"ns/a-a100": 1, "ns/b-a100": 3, "ns/c-a100": 3},
        ),
        # Weight 2 gets twice the GPUs of weight 1 when both want more than the cap.
        (
            "weighted",
            [workload("a", weight=2.0), workload("b")],
            {"a": 20, "b": 20},
            Limits(company_max_gpus=9),
            {"ns/a-a100": 6, "ns/b-a100": 3},
        ),
        # Higher priority is served in full before the lower tier gets anything.
        (
            "priority",
            [workload("hi", priority=10), workload("lo")],
            {"hi": 5, "lo": 5},
            Limits(company_max_gpus=6),
            {"ns/hi-a100": 5, "ns/lo-a100": 1},
        ),
        # Guaranteed minimums come before priority.
        (
            "minimum first",
            [workload("hi", priority=10), workload("lo", min_replicas=2)],
            {"hi": 6, "lo": 0},
            Limits(company_max_gpus=6),
            {"ns/hi-a100": 4, "ns/lo-a100": 2},
        ),
        # A full GPU type spills to the workload's next pool, which has its own quota.
        (
            "type cap spills",
            [two_pools("a")],
            {"a": 6},
            Limits(
                company_max_gpus=20, cluster_gpu_types={("c1", "A100"): 2}, provider_max_gpus={"salad": 3}
            ),
            {"ns/a-reg": 2, "ns/a-virt": 3},
        ),
        # Per-type caps bind across workloads, not per workload.
        (
            "type cap shared",
            [workload("a"), workload("b")],
            {"a": 4, "b": 4},
            Limits(cluster_gpu_types={("c1", "A100"): 4}),
            {"ns/a-a100": 2, "ns/b-a100": 2},
        ),
        # Multi-GPU replicas: 3 GPUs each, cap 7 holds two of them.
        (
            "gpus per replica",
            [workload("a", (pool("a-big", gpus=3),))],
            {"a": 5},
            Limits(company_max_gpus=7),
            {"ns/a-big": 2},
        ),
    ],
)
def test_allocation(
    case: str,
    workloads: list[WorkloadSpec],
    demand: dict[str, float],
    limits: Limits,
    expected: dict[str, int],
) -> None:
    assert targets(run(workloads, demand, limits)) == expected, case


def test_pool_max_replicas_spills_to_next_pool() -> None:
    a = workload("a", (pool("a-reg", max_replicas=2), pool("a-virt", virtual=True, gpu="T4")))
    assert targets(run([a], {"a": 5}, Limits())) == {"ns/a-reg": 2, "ns/a-virt": 3}


def test_slower_pool_needs_more_replicas_for_the_same_capacity() -> None:
    a = workload("a", (pool("a-reg", max_replicas=1), pool("a-virt", virtual=True, gpu="T4", thr=0.5)))
    assert targets(run([a], {"a": 4}, Limits())) == {"ns/a-reg": 1, "ns/a-virt": 6}


def test_new_regular_replicas_only_use_free_gpus() -> None:
    a = two_pools("a")
    plan = run([a], {"a": 5}, Limits(), free={("c1", "A100"): 2})
    assert targets(plan) == {"ns/a-reg": 2, "ns/a-virt": 3}


def test_scale_up_waits_for_scale_down_to_free_the_gpus() -> None:
    # A holds the whole cap; B (same priority) is entitled to half, but A's GPUs are not free yet.
    a, b = workload("a"), workload("b")
    now = {"ns/a-a100": PoolStatus(8, ready=8), "ns/b-a100": PoolStatus(0)}
    plan = run([a, b], {"a": 8, "b": 8}, Limits(company_max_gpus=8), pools=now)
    assert targets(plan) == {"ns/a-a100": 4, "ns/b-a100": 0}
    assert plan.actions[0].is_scale_down
    assert "wait for GPUs under the company cap" in " ".join(plan.decisions["b"].steps)
    # Once A's scale-down has happened, B gets its share.
    later = {"ns/a-a100": PoolStatus(4, ready=4), "ns/b-a100": PoolStatus(0)}
    assert targets(run([a, b], {"a": 8, "b": 8}, Limits(company_max_gpus=8), pools=later)) == {
        "ns/a-a100": 4,
        "ns/b-a100": 4,
    }


def test_over_cap_after_the_cap_was_lowered_scales_down_and_never_up() -> None:
    a, b = workload("a"), workload("b")
    now = {"ns/a-a100": PoolStatus(6), "ns/b-a100": PoolStatus(1)}
    plan = run([a, b], {"a": 6, "b": 6}, Limits(company_max_gpus=4), pools=now)
    assert targets(plan) == {"ns/a-a100": 2, "ns/b-a100": 1}


def test_paused_pool_is_left_alone_and_counts_against_the_cap() -> None:
    a, b = workload("a"), workload("b")
    now = {"ns/a-a100": PoolStatus(5, paused=True), "ns/b-a100": PoolStatus(0)}
    plan = run([a, b], {"a": 0, "b": 9}, Limits(company_max_gpus=8), pools=now)
    assert targets(plan) == {"ns/a-a100": 5, "ns/b-a100": 3}


def test_scale_in_takes_the_last_pool_first() -> None:
    a = two_pools("a")
    now = {"ns/a-reg": PoolStatus(3, ready=3), "ns/a-virt": PoolStatus(3, ready=3)}
    assert targets(run([a], {"a": 4}, Limits(), pools=now)) == {"ns/a-reg": 3, "ns/a-virt": 1}


def test_running_virtual_replicas_are_not_pulled_back_to_regular() -> None:
    a = two_pools("a")
    now = {"ns/a-reg": PoolStatus(1, ready=1), "ns/a-virt": PoolStatus(3, ready=3)}
    # Regular nodes have room again, the demand is unchanged: nothing moves.
    assert run([a], {"a": 4}, Limits(), pools=now, free={("c1", "A100"): 8}).actions == ()


def test_terminating_pods_hold_their_gpus_until_they_exit() -> None:
    a, b = workload("a"), workload("b")
    draining = {"ns/a-a100": PoolStatus(4, ready=4, terminating=4), "ns/b-a100": PoolStatus(0)}
    assert (
        targets(run([a, b], {"a": 4, "b": 4}, Limits(company_max_gpus=8), pools=draining))["ns/b-a100"] == 0
    )
    gone = {"ns/a-a100": PoolStatus(4, ready=4), "ns/b-a100": PoolStatus(0)}
    assert targets(run([a, b], {"a": 4, "b": 4}, Limits(company_max_gpus=8), pools=gone))["ns/b-a100"] == 4


def test_a_capped_wish_does_not_swing_with_the_rate_policy_and_preempt_in_turn() -> None:
    # Both want far more than the cap; `hi` grows under the HPA's default rate policies. Its capped
    # wish must stay a wish: if the grant it did not get counted as a scale-up, its desired size
    # would swing every rate period, and `lo` would be given and taken the slack in turn.
    def two(name: str, priority: int) -> WorkloadSpec:
        pools = (pool(f"{name}-a100"), pool(f"{name}-virt", virtual=True, gpu="RTX4090", thr=0.5))
        return workload(
            name, pools, priority=priority, min_replicas=1, max_replicas=24, behavior=BehaviorSpec()
        )

    hi, lo = two("hi", 200), two("lo", 100)
    sizes = {"ns/hi-a100": 5, "ns/hi-virt": 4, "ns/lo-a100": 1, "ns/lo-virt": 0}
    state = EngineState()
    lo_sizes = []
    for t in range(0, 900, 5):
        free = 8 - sizes["ns/hi-a100"] - sizes["ns/lo-a100"]  # 8 regular A100s shared
        snapshot = ClusterSnapshot(
            pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()}, free_gpus={("c1", "A100"): free}
        )
        readings = {"hi": {"q": read(50_000)}, "lo": {"q": read(20_000)}}
        plan, state = reconcile([hi, lo], snapshot, readings, state, Limits(company_max_gpus=16), float(t))
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
        lo_sizes.append((sizes["ns/lo-a100"], sizes["ns/lo-virt"]))
    assert sizes["ns/hi-a100"] + sizes["ns/hi-virt"] == 15
    assert lo_sizes[-60:] == [(1, 0)] * 60  # settled at its minimum, not flapping


def test_a_capped_wish_stays_a_wish_under_the_rate_policies() -> None:
    # Constant, huge demand and a binding cap: what the workload wants may only grow. Counting the
    # grant it did not get as a scale-up made its wish drop back to the grant every other tick.
    hi = workload("hi", max_replicas=40, behavior=BehaviorSpec())
    sizes = {"ns/hi-a100": 1}
    state = EngineState()
    wishes = []
    for t in range(0, 300, 5):
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state = reconcile(
            [hi], snapshot, {"hi": {"q": read(10_000)}}, state, Limits(company_max_gpus=9), t
        )
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
        wishes.append(plan.decisions["hi"].desired_units)
    assert wishes == sorted(wishes)
    assert wishes[-1] == 40 and sizes["ns/hi-a100"] == 9
