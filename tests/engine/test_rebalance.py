"""Rebalance (`WorkloadSpec.rebalance`): running capacity moves to an earlier pool a step at a time,
surge first, removal once the surge is Ready; hand-computed cases."""

from __future__ import annotations

from dataclasses import replace

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    COMPANY,
    ActionKind,
    ClusterSnapshot,
    EngineState,
    Limits,
    Plan,
    PoolStatus,
    WorkloadState,
)
from tests.factories import pool, read, workload

# Cost-first: the cheap half-throughput virtual pool first, the dear regular one last. One unit
# costs $0.5/h on the first and $2/h on the second.
CHEAP = pool("w-cheap", virtual=True, gpu="RTX4090", cost=0.25, thr=0.5, startup=180)
DEAR = pool("w-dear", cost=2.0, startup=90)
W = workload("w", (CHEAP, DEAR))
R = replace(W, rebalance=True)
C, D = CHEAP.key, DEAR.key


def step(
    cheap: PoolStatus,
    dear: PoolStatus,
    *,
    wl=R,  # type: ignore[no-untyped-def]
    units: float = 4,
    state: EngineState | None = None,
    now: float = 0.0,
    limits: Limits | None = None,
    **snapshot: object,
) -> Plan:
    """One reconcile; `state` by default: the workload wanted `units` last time too."""
    got = ClusterSnapshot(pools={C: cheap, D: dear}, **snapshot)  # type: ignore[arg-type]
    state = state or wanted(units)
    plan, _ = reconcile([wl], got, {"w": {"q": read(units * 10)}}, state, limits or Limits(), now)
    return plan


def wanted(units: float, **fields: object) -> EngineState:
    return EngineState({"w": WorkloadState(last_desired=int(units), **fields)})  # type: ignore[arg-type]


def resizes(plan: Plan) -> dict[str, tuple[int, int, ActionKind | None]]:
    return {a.pool: (a.from_replicas, a.to_replicas, a.kind) for a in plan.actions}


def test_a_surge_starts_in_the_preferred_pool_and_the_later_pool_keeps_its_replicas() -> None:
    # 4 units on the dear pool, the cheap one empty. A step is 25 % of 4 units = 1 unit: one dear
    # replica, replaced by two cheap ones (0.5 each).
    plan = step(PoolStatus(0), PoolStatus(4, ready=4))
    assert resizes(plan) == {C: (0, 2, ActionKind.REBALANCE)}
    assert "rebalance: a surge of 2 replica(s) in w-cheap to replace 1 of w-dear once they are Ready" in (
        plan.decisions["w"].steps
    )
    # Off, a running replica stays where it is.
    assert step(PoolStatus(0), PoolStatus(4, ready=4), wl=W).actions == ()


def test_the_later_pool_shrinks_only_by_capacity_that_is_ready_in_the_earlier_pool() -> None:
    # The surge is starting: nothing is removed, and no second surge is added.
    for ready in (0, 1):
        plan = step(PoolStatus(2, ready=ready), PoolStatus(4, ready=4))
        assert plan.actions == ()
        assert any("of w-dear kept until" in s for s in plan.decisions["w"].steps)
    # Both Ready (1 unit): one dear replica goes, and the next step starts in the same plan.
    plan = step(PoolStatus(2, ready=2), PoolStatus(4, ready=4))
    assert resizes(plan) == {D: (4, 3, ActionKind.REBALANCE), C: (2, 4, ActionKind.REBALANCE)}
    assert "rebalance: w-dear 4->3: replaced by Ready replicas of earlier pools" in plan.decisions["w"].steps
    assert [a.pool for a in plan.actions] == [D, C]  # the scale-down first, as always


def test_a_bigger_workload_moves_a_quarter_of_its_capacity_at_a_time() -> None:
    # 40 units: 10 dear replicas are replaced by 20 cheap ones per step; with 6 cheap replicas
    # (3 units) already starting, only 7 more units may start.
    assert resizes(step(PoolStatus(0), PoolStatus(40, ready=40), units=40)) == {
        C: (0, 20, ActionKind.REBALANCE)
    }
    plan = step(PoolStatus(6, ready=0), PoolStatus(37, ready=37), units=40)
    assert resizes(plan) == {C: (6, 20, ActionKind.REBALANCE)}
    # As the surge gets Ready it is topped up, as a rolling update does: 4 of 20 Ready (2 units)
    # replace 2 dear replicas; 8 units still start, so 2 more may.
    plan = step(PoolStatus(20, ready=4), PoolStatus(40, ready=40), units=40)
    assert resizes(plan) == {D: (40, 38, ActionKind.REBALANCE), C: (20, 24, ActionKind.REBALANCE)}
    assert (
        "rebalance: 8 replica(s) of w-dear kept until the 8 unit(s) starting in earlier pools are Ready"
        in (plan.decisions["w"].steps)
    )


def test_a_surge_never_exceeds_a_cap_and_waits_while_none_is_left() -> None:
    # 4 dear GPUs held; a company cap of 5 leaves one GPU for the surge's two.
    plan = step(PoolStatus(0), PoolStatus(4, ready=4), limits=Limits(company_max_gpus=5))
    assert resizes(plan) == {C: (0, 1, ActionKind.REBALANCE)}
    assert plan.usage[COMPANY].granted <= 5
    # The provider's quota binds the same way.
    plan = step(PoolStatus(0), PoolStatus(4, ready=4), limits=Limits(provider_max_gpus={"salad": 0}))
    assert plan.actions == ()
    # At the cap, nothing is added, and half a unit Ready replaces no whole dear replica.
    plan = step(PoolStatus(1, ready=1), PoolStatus(4, ready=4), limits=Limits(company_max_gpus=5))
    assert plan.actions == ()


def test_no_surge_into_a_blocked_paused_unreachable_or_pending_pool() -> None:
    dear = PoolStatus(4, ready=4)
    blocked = wanted(4, blocked_until={C: 100.0})
    assert step(PoolStatus(0), dear, state=blocked, now=50).actions == ()
    assert step(PoolStatus(0, paused=True), dear).actions == ()
    # Cheap pods wait for GPUs (not stuck yet): none is added beside them.
    assert step(PoolStatus(2, pending_since=(0.0, 0.0)), dear, units=5, now=10).actions == ()
    far = replace(R, pools=(replace(CHEAP, cluster="c2"), DEAR))
    assert step(PoolStatus(0), dear, wl=far, unreachable={"c2": 0.0}).actions == ()
    # Once the block is over, the step is taken.
    assert resizes(step(PoolStatus(0), dear, state=blocked, now=150)) == {C: (0, 2, ActionKind.REBALANCE)}


def test_a_regular_pool_takes_a_surge_only_within_its_free_gpus() -> None:
    # The usual order (regular first): the virtual replicas move back when regular GPUs free up.
    back = replace(R, pools=(DEAR, CHEAP))
    free = {("c1", "A100"): 0}
    assert (
        step(PoolStatus(6, ready=6), PoolStatus(2, ready=2), wl=back, units=5, free_gpus=free).actions == ()
    )
    # One free GPU: one regular replica, to replace two virtual ones (a step of 25 % of 5 units).
    free = {("c1", "A100"): 1}
    plan = step(PoolStatus(6, ready=6), PoolStatus(2, ready=2), wl=back, units=5, free_gpus=free)
    assert resizes(plan) == {D: (2, 3, ActionKind.REBALANCE)}
    assert "to replace 2 of w-cheap" in "; ".join(plan.decisions["w"].steps)


def test_a_surge_that_never_schedules_is_given_up_and_the_later_pool_is_not_touched() -> None:
    stuck = PoolStatus(2, ready=0, pending_since=(0.0, 0.0))
    assert step(stuck, PoolStatus(4, ready=4), now=100).actions == ()
    plan = step(stuck, PoolStatus(4, ready=4), now=301)  # past the 300 s pending timeout
    assert resizes(plan) == {C: (2, 0, ActionKind.SPILL)}


def test_no_step_while_the_workload_needs_more_new_replicas_go_to_the_preferred_pool() -> None:
    plan = step(PoolStatus(0), PoolStatus(4, ready=4), units=6)
    assert resizes(plan) == {C: (0, 4, ActionKind.SCALE_UP)}
    assert not any("rebalance" in s for s in plan.decisions["w"].steps)


def test_a_migrated_replica_does_not_come_back() -> None:
    # Done: everything on the cheap pool, the dear one has room. Nothing moves back, at any load
    # the cheap pool can take, and a lower load scales in the cheap pool (the only one running).
    done = PoolStatus(8, ready=8)
    assert step(done, PoolStatus(0)).actions == ()
    assert resizes(step(done, PoolStatus(0), units=3)) == {C: (8, 6, ActionKind.SCALE_DOWN)}
    # Both pools run and a lower load comes: the dear pool goes first, as without rebalance (and
    # a step moves the rest, from the same dear pool).
    plan = step(PoolStatus(4, ready=4), PoolStatus(2, ready=2), state=wanted(4), units=3)
    assert resizes(plan) == {D: (2, 1, ActionKind.SCALE_DOWN), C: (4, 6, ActionKind.REBALANCE)}


def test_a_whole_migration_replays_to_the_preferred_pool_and_stays() -> None:
    # Every surge becomes Ready by the next reconcile: the plan alone drives the pools.
    cheap, dear = 0, 4
    kinds: set[ActionKind | None] = set()
    state = EngineState()
    for t in range(12):
        snapshot = ClusterSnapshot(pools={C: PoolStatus(cheap, ready=cheap), D: PoolStatus(dear, ready=dear)})
        plan, state = reconcile([R], snapshot, {"w": {"q": read(40)}}, state, Limits(), float(t))
        for a in plan.actions:
            kinds.add(a.kind)
        sizes = {a.pool: a.to_replicas for a in plan.actions}
        assert sizes.get(C, cheap) * 0.5 + sizes.get(D, dear) >= 4  # never below the need
        cheap, dear = sizes.get(C, cheap), sizes.get(D, dear)
    assert (cheap, dear) == (8, 0)
    assert kinds == {ActionKind.REBALANCE}


def test_a_surge_never_takes_gpus_another_workload_needs() -> None:
    # Under a company cap of 7 GPUs, w (priority 10) holds 4 and x (priority 0) holds 1 and needs 3:
    # the 2 GPUs left go to x, not to w's surge, although w comes first by priority.
    def two(x_pool):  # type: ignore[no-untyped-def]
        x = workload("x", (x_pool,))
        snapshot = ClusterSnapshot(
            pools={C: PoolStatus(0), D: PoolStatus(4, ready=4), x_pool.key: PoolStatus(1, ready=1)}
        )
        readings = {"w": {"q": read(40)}, "x": {"q": read(30)}}
        state = EngineState({"w": WorkloadState(last_desired=4), "x": WorkloadState(last_desired=1)})
        plan, _ = reconcile(
            [replace(R, priority=10), x], snapshot, readings, state, Limits(company_max_gpus=7), 0.0
        )
        return plan

    plan = two(pool("x-a100"))
    assert resizes(plan) == {"ns/x-a100": (1, 3, ActionKind.SCALE_UP)}
    assert "rebalance: surge dropped, another workload gets more GPUs without it" in plan.decisions["w"].steps
    # x is short whatever w does (its pool is full): the surge goes ahead.
    plan = two(pool("x-a100", max_replicas=1))
    assert resizes(plan) == {C: (0, 2, ActionKind.REBALANCE)}
