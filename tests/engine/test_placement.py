"""Spill-over: Pending too long moves capacity to the next pool, and it does not bounce back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine.placement import free_fit, pool_room
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, Limits, PoolStatus
from tests.factories import pool, read, workload

A = workload("a", (pool("a-reg", timeout=120), pool("a-virt", virtual=True, gpu="RTX4090", startup=300)))


def step(pools: dict[str, PoolStatus], state: EngineState, now: float, demand: float = 5):
    snapshot = ClusterSnapshot(pools=pools)
    return reconcile([A], snapshot, {"a": {"q": read(demand * 10)}}, state, Limits(), now)


def test_pending_past_timeout_spills_to_next_pool_and_blocks_the_pool() -> None:
    # 5 regular replicas asked for at t=0, two never scheduled.
    pools = {"ns/a-reg": PoolStatus(5, ready=3, pending_since=(0.0, 0.0)), "ns/a-virt": PoolStatus(0)}
    plan, state = step(pools, EngineState(), now=60)
    assert plan.actions == ()  # not yet past the 120 s timeout
    plan, state = step(pools, state, now=121)
    sizes = {a.pool: a.to_replicas for a in plan.actions}
    assert sizes == {"ns/a-reg": 3, "ns/a-virt": 2}
    assert [a.pool for a in plan.actions] == ["ns/a-reg", "ns/a-virt"]  # scale-down first
    assert "given up" in plan.decisions["a"].explain()
    # The next reconcile sees the shrunk pool: regular must not take the replicas back while blocked.
    pools = {"ns/a-reg": PoolStatus(3, ready=3), "ns/a-virt": PoolStatus(2)}
    plan, state = step(pools, state, now=130, demand=6)
    assert {a.pool: a.to_replicas for a in plan.actions} == {"ns/a-virt": 3}
    # After the block expires, new replicas go to the preferred pool again.
    plan, state = step(
        {"ns/a-reg": PoolStatus(3, ready=3), "ns/a-virt": PoolStatus(3)}, state, now=300, demand=7
    )
    assert {a.pool: a.to_replicas for a in plan.actions} == {"ns/a-reg": 4}


def test_policy_looks_ahead_by_the_startup_of_the_pool_it_will_use() -> None:
    seen: list[float] = []

    class Spy:
        name = "spy"
        Options = None

        def recommend(self, ctx):  # type: ignore[no-untyped-def]
            from autoscaler.engine.policy import Recommendation

            seen.append(ctx.startup_seconds)
            return Recommendation(1.0, "spy")

    spied = workload("a", A.pools, policy=Spy())
    full = {"ns/a-reg": PoolStatus(2), "ns/a-virt": PoolStatus(0)}
    limited = (pool("a-reg", max_replicas=2, timeout=120), A.pools[1])
    reconcile([spied], ClusterSnapshot(pools=full), {"a": {"q": read(1)}}, EngineState(), Limits(), 0)
    reconcile(
        [workload("a", limited, policy=Spy())],
        ClusterSnapshot(pools=full),
        {"a": {"q": read(1)}},
        EngineState(),
        Limits(),
        0,
    )
    # Issue 10: the regular pool has room by its own max, but its nodes have no free GPU left (or
    # only what its Pending pod already waits for): new replicas land on the virtual pool.
    for free, pending in ((0, ()), (1, (0.0,)), (1, ())):
        status = {"ns/a-reg": PoolStatus(2, pending_since=pending), "ns/a-virt": PoolStatus(0)}
        snapshot = ClusterSnapshot(pools=status, free_gpus={("c1", "A100"): free})
        reconcile([spied], snapshot, {"a": {"q": read(1)}}, EngineState(), Limits(), 0)
    assert seen == [60.0, 300.0, 300.0, 300.0, 60.0]


def test_stuck_pods_with_no_pool_to_spill_to_are_kept_not_recreated() -> None:
    # Issue 9.4: a virtual pool (the last one) with room for 16 pods only. Giving up the other 8
    # after the timeout freed nothing they could go to, and one timeout later the pool grew again:
    # 24 -> 16 -> 24 every 240 s, creating pods that could never schedule.
    only = workload("v", (pool("v-salad", virtual=True, gpu="RTX4090", timeout=120),))
    schedulable = 16
    spec, pending_since = 24, [0.0] * 8
    writes: list[tuple[int, int]] = []
    state = EngineState()
    for now in range(0, 1200, 10):
        status = PoolStatus(spec, ready=min(spec, schedulable), pending_since=tuple(pending_since))
        plan, state = reconcile(
            [only],
            ClusterSnapshot(pools={"ns/v-salad": status}),
            {"v": {"q": read(240)}},
            state,
            Limits(),
            now,
        )
        for action in plan.actions:
            writes.append((action.from_replicas, action.to_replicas))
            spec = action.to_replicas
            unschedulable = max(0, spec - schedulable)
            # The ReplicaSet removes pending pods first and creates new ones pending.
            pending_since = sorted(pending_since)[:unschedulable]
            pending_since += [float(now)] * (unschedulable - len(pending_since))
    assert writes == []
    assert "no later pool can take them" in plan.decisions["v"].explain()


def test_stuck_pods_still_spill_when_a_later_pool_is_blocked_only_for_a_while() -> None:
    # The rule only keeps pods that have nowhere to go: with an open later pool they spill as before.
    pools = {"ns/a-reg": PoolStatus(5, ready=3, pending_since=(0.0, 0.0)), "ns/a-virt": PoolStatus(0)}
    plan, _ = step(pools, EngineState(), now=121)
    assert {a.pool: a.to_replicas for a in plan.actions} == {"ns/a-reg": 3, "ns/a-virt": 2}


@settings(max_examples=500, deadline=None)
@given(
    max_replicas=st.none() | st.integers(0, 6),
    spec=st.integers(0, 6),
    pending=st.integers(0, 3),
    gpus=st.sampled_from((1, 2, 4)),
    free=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_two_free_counts_that_read_alike_give_a_pool_the_same_room(
    max_replicas: int | None, spec: int, pending: int, gpus: int, free: tuple[int, int]
) -> None:
    """What the incremental engine compares instead of the free count (`free_fit`, or only whether
    it leaves room: `reconcile.free_gpus_read`) tells every room `pool_room` gives apart."""
    p = pool("p", gpus=gpus, max_replicas=max_replicas)
    status = PoolStatus(spec, pending_since=(0.0,) * pending)
    counts = [{("c1", "A100"): n} for n in free]
    rooms = [pool_room(p, status, {}, 0.0, c) for c in counts]
    # Its maxReplicas less what runs, and what the free GPUs fit after its own pending pods.
    fit_free = [max(0, n // gpus - pending) for n in free]
    assert rooms == [n if max_replicas is None else min(max(0, max_replicas - spec), n) for n in fit_free]
    fits = [free_fit(p, status, c) for c in counts]
    if fits[0] == fits[1]:
        assert rooms[0] == rooms[1]
    opens = [fit is not None and fit > pending for fit in fits]
    if opens[0] == opens[1]:
        assert (rooms[0] != 0) == (rooms[1] != 0)
