"""The simulated cluster: startup, scheduling, scale-in order, draining, interruptions and cost.

The engine is not involved: these tests drive `SimCluster` directly or through the runner with the
scripted fake decide function, so they pin the simulator's own behaviour.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.engine.types import Limits, NodeClass
from autoscaler.sim.cluster import PodState, ProviderModel, SimCluster
from autoscaler.sim.runner import Simulation, run
from tests.sim.simfakes import Scripted, model, pool, spec

GROUP = ("sim", "A100")


def states(cluster: SimCluster, key: str) -> list[PodState]:
    return [p.state for p in cluster.pods(key)]


def test_cost_of_one_replica_for_half_an_hour() -> None:
    a = pool("a", gpus=1, cost=2.0)
    cluster = SimCluster([model("w", [a], [])], {GROUP: 4})
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(1800.0)
    cluster.set_replicas(a.key, 0, 1800.0)
    cluster.advance(3600.0)  # nothing is charged after deletion
    assert cluster.cost(a.key, 3600.0) == 1.00
    assert cluster.gpu_seconds(a.key, 3600.0) / 3600 == 0.5


def test_cost_through_the_runner() -> None:
    a = pool("a", gpus=1, cost=2.0, startup=10)
    sim = Simulation(
        workloads=(spec("w", [a]),),
        models=(model("w", [a], [0.0, 1799.0], service=0.5),),
        limits=Limits(),
        node_groups={GROUP: 1},
    )
    result = run(sim, Scripted({0: {a.key: 1}, 1800: {a.key: 0}}))
    (p,) = result.workloads[0].pools
    assert p.cost == 1.00
    assert p.gpu_hours == 0.5


def test_a_pod_is_charged_gpus_times_price_per_hour() -> None:
    a = pool("a", gpus=4, cost=3.0)
    cluster = SimCluster([model("w", [a], [])], {GROUP: 8})
    cluster.set_replicas(a.key, 2, 100.0)
    cluster.advance(1000.0)
    assert cluster.gpu_seconds(a.key, 1000.0) == 2 * 4 * 900.0
    assert cluster.cost(a.key, 1000.0) == pytest.approx(2 * 4 * 3.0 * 900 / 3600)


def test_no_request_is_served_before_the_first_replica_is_ready() -> None:
    a = pool("a", startup=30)
    sim = Simulation(
        workloads=(spec("w", [a]),),
        models=(model("w", [a], [0.0, 1.0, 2.0, 40.0], service=1.0, concurrency=4),),
        limits=Limits(),
        node_groups={GROUP: 1},
    )
    w = run(sim, Scripted({0: {a.key: 1}})).workloads[0]
    assert w.start.tolist() == [30.0, 30.0, 30.0, 40.0]
    assert w.wait.tolist() == [30.0, 29.0, 28.0, 0.0]


def test_virtual_startup_follows_the_lognormal_median_and_tail() -> None:
    v = pool("v", NodeClass.VIRTUAL, startup=300, p95=1200, provider="salad")
    cluster = SimCluster([model("w", [v], [])], {}, seed=5)
    cluster.set_replicas(v.key, 2000, 0.0)
    cluster.advance(300.0)
    ready_at_median = states(cluster, v.key).count(PodState.READY) / 2000
    cluster.advance(1200.0)
    ready_at_p95 = states(cluster, v.key).count(PodState.READY) / 2000
    assert ready_at_median == pytest.approx(0.5, abs=0.04)
    assert ready_at_p95 == pytest.approx(0.95, abs=0.02)


def test_only_unscheduled_pods_read_as_pending_even_on_virtual_nodes() -> None:
    a = pool("a", startup=100)
    v = pool("v", NodeClass.VIRTUAL, startup=100, p95=100, provider="salad")
    cluster = SimCluster([model("w", [a, v], [])], {GROUP: 1})
    cluster.set_replicas(a.key, 2, 0.0)  # one fits, one is unschedulable
    cluster.set_replicas(v.key, 1, 5.0)
    cluster.advance(50.0)
    snap = cluster.snapshot()
    assert snap.pools[a.key].pending_since == (0.0,)
    assert snap.pools[v.key].pending_since == ()  # provisioning is starting, not pending
    assert (snap.pools[v.key].spec_replicas, snap.pools[v.key].ready) == (1, 0)
    assert snap.free_gpus == {GROUP: 0}
    cluster.advance(105.0)
    snap = cluster.snapshot()
    assert snap.pools[v.key].pending_since == ()
    assert snap.pools[v.key].ready == 1
    assert snap.pools[a.key].ready == 1


def test_pods_stay_pending_while_the_node_group_is_full_and_are_scheduled_fifo_as_gpus_free() -> None:
    a = pool("a", startup=10)
    b = pool("b", startup=10)
    c = pool("c", startup=10)
    cluster = SimCluster([model("wa", [a], []), model("wb", [b], []), model("wc", [c], [])], {GROUP: 2})
    cluster.set_replicas(a.key, 2, 0.0)
    cluster.set_replicas(b.key, 1, 1.0)
    cluster.set_replicas(c.key, 1, 2.0)
    cluster.advance(20.0)
    assert states(cluster, a.key) == [PodState.READY, PodState.READY]
    assert states(cluster, b.key) == [PodState.UNSCHEDULED]
    assert states(cluster, c.key) == [PodState.UNSCHEDULED]
    assert cluster.snapshot().pools[b.key].pending_since == (1.0,)

    cluster.set_replicas(a.key, 1, 20.0)  # frees one GPU: the longest-waiting pod gets it
    assert states(cluster, b.key) == [PodState.STARTING]
    assert states(cluster, c.key) == [PodState.UNSCHEDULED]
    cluster.advance(30.0)
    assert states(cluster, b.key) == [PodState.READY]  # its startup began when it was scheduled

    cluster.set_replicas(a.key, 0, 31.0)
    cluster.advance(41.0)
    assert states(cluster, c.key) == [PodState.READY]
    assert cluster.snapshot().free_gpus == {GROUP: 0}


def test_a_pod_too_big_for_the_free_gpus_does_not_block_a_smaller_one() -> None:
    big = pool("big", gpus=2)
    small = pool("small", gpus=1)
    cluster = SimCluster([model("w1", [big], []), model("w2", [small], [])], {GROUP: 1})
    cluster.set_replicas(big.key, 1, 0.0)
    cluster.set_replicas(small.key, 1, 1.0)
    assert states(cluster, big.key) == [PodState.UNSCHEDULED]
    assert states(cluster, small.key) == [PodState.STARTING]


def test_scale_down_removes_unscheduled_then_starting_then_newest_ready() -> None:
    a = pool("a", startup=10)
    cluster = SimCluster([model("w", [a], [])], {GROUP: 3})
    cluster.set_replicas(a.key, 1, 0.0)  # ready at 10
    cluster.set_replicas(a.key, 2, 5.0)  # ready at 15
    cluster.advance(20.0)
    cluster.set_replicas(a.key, 3, 20.0)  # starting until 30
    cluster.set_replicas(a.key, 4, 21.0)  # no GPU left: unscheduled
    assert sorted(s.name for s in states(cluster, a.key)) == ["READY", "READY", "STARTING", "UNSCHEDULED"]

    cluster.set_replicas(a.key, 3, 22.0)
    assert PodState.UNSCHEDULED not in states(cluster, a.key)
    cluster.set_replicas(a.key, 2, 23.0)
    assert states(cluster, a.key) == [PodState.READY, PodState.READY]
    cluster.set_replicas(a.key, 1, 24.0)
    (left,) = cluster.pods(a.key)
    assert left.ready_at == 10.0  # the newest ready pod went first


def test_a_removed_ready_replica_finishes_its_requests_and_is_charged_until_then() -> None:
    a = pool("a", startup=0.0, cost=3600.0)  # $1 per GPU-second keeps the arithmetic readable
    cluster = SimCluster([model("w", [a], [1.0, 2.0, 3.0], service=100.0, concurrency=2)], {GROUP: 1})
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(10.0)
    assert cluster.in_service("w") == 2
    assert cluster.waiting("w") == 1
    cluster.set_replicas(a.key, 0, 10.0)
    assert cluster.snapshot().pools[a.key].spec_replicas == 0
    assert [p.state for p in cluster.pods(a.key)] == [PodState.DRAINING]
    assert cluster.snapshot().free_gpus == {GROUP: 0}  # still holds its GPU
    cluster.advance(101.0)
    assert cluster.in_service("w") == 1
    assert cluster.waiting("w") == 1  # a draining replica takes nothing new
    cluster.advance(500.0)
    assert cluster.pods(a.key) == []
    assert cluster.snapshot().free_gpus == {GROUP: 1}
    assert cluster.cost(a.key, 500.0) == 102.0  # created at 0, last request done at 102
    assert cluster.requests("w")[1].tolist()[:2] == [101.0, 102.0]


def test_an_interrupted_replica_requeues_its_requests_at_the_head_and_is_replaced() -> None:
    v = pool("v", NodeClass.VIRTUAL, startup=1.0, p95=1.0, provider="salad")
    cluster = SimCluster(
        [model("w", [v], [0.0, 0.1, 0.2], service=60.0, concurrency=1)],
        {},
        {"salad": ProviderModel(interruptions_per_hour=120.0)},  # one every 30 s on average
        seed=3,
    )
    cluster.set_replicas(v.key, 1, 0.0)
    t = 0.0
    while cluster.interruptions(v.key) == 0:
        t += 0.25
        assert t < 1000, "no interruption happened"
        cluster.advance(t)
    _, finish, attempts = cluster.requests("w")
    assert attempts[0] == 1 and math.isnan(finish[0]), "the seed must interrupt request 0 in service"
    assert cluster.queued("w") == [0, 1, 2]  # the lost request goes first
    assert cluster.in_service("w") == 0
    assert cluster.snapshot().pools[v.key].spec_replicas == 1  # the Deployment recreated it
    assert cluster.pods_created(v.key) == 2
    # The lost pod was charged until it vanished and its replacement from then on: one GPU throughout.
    assert cluster.gpu_seconds(v.key, t) == pytest.approx(t)


def test_interrupted_requests_are_served_again_and_only_once() -> None:
    v = pool("v", NodeClass.VIRTUAL, startup=5.0, p95=5.0, provider="salad", throughput=0.5)
    a = pool("a", startup=200.0)
    arrivals = [float(i) for i in range(20)]
    sim = Simulation(
        workloads=(spec("w", [a, v]),),
        models=(model("w", [a, v], arrivals, service=10.0, concurrency=2),),
        limits=Limits(),
        node_groups={GROUP: 1},
        providers={"salad": ProviderModel(interruptions_per_hour=180.0)},
        seed=11,
    )
    result = run(sim, Scripted({0: {v.key: 2, a.key: 1}}))
    w = result.workloads[0]
    assert sum(p.interruptions for p in w.pools) > 0
    assert w.attempts.max() >= 2
    assert w.served.all()
    assert np.all(w.finish >= w.start)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(st.floats(0, 300, allow_nan=False), min_size=1, max_size=60),
    steps=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=8
    ),
    rate=st.sampled_from([0.0, 20.0, 200.0]),
    gpus=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_every_request_is_served_exactly_once(
    arrivals: list[float], steps: list[tuple[int, int, int]], rate: float, gpus: int, seed: int
) -> None:
    a = pool("a", startup=20.0, p95=40.0)
    v = pool("v", NodeClass.VIRTUAL, startup=30.0, provider="salad", throughput=0.5)
    script: dict[float, dict[str, int]] = {t: {a.key: na, v.key: nv} for t, na, nv in steps}
    script[400.0] = {a.key: 2, v.key: 0}  # then enough regular capacity to drain whatever is left
    arrivals.sort()
    sim = Simulation(
        workloads=(spec("w", [a, v]),),
        models=(model("w", [a, v], arrivals, service=7.0, concurrency=2),),
        limits=Limits(),
        node_groups={GROUP: max(gpus, 2)},
        providers={"salad": ProviderModel(interruptions_per_hour=rate)},
        seed=seed,
        max_drain_seconds=10_000,
    )
    decide = Scripted(script)
    w = run(sim, decide).workloads[0]
    assert w.served.all()
    assert np.all(w.start >= w.arrival)
    assert np.all(w.finish > w.start)
    assert np.all(w.attempts >= 1)
    # Never more GPUs handed out than the node group has.
    assert all(v >= 0 for call in decide.calls for v in call.snapshot.free_gpus.values())


def test_completions_are_counted_once_per_request() -> None:
    a = pool("a", startup=1.0)
    cluster = SimCluster([model("w", [a], [0.0, 0.0, 0.5], service=2.0, concurrency=2)], {GROUP: 1})
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(100.0)
    assert cluster.completed("w") == 3
    assert cluster.idle()


def test_faster_replicas_take_requests_first() -> None:
    a = pool("a", startup=0.0, throughput=1.0)
    v = pool("v", NodeClass.VIRTUAL, startup=0.0, provider="salad", throughput=0.5)
    cluster = SimCluster([model("w", [v, a], [1.0], service=4.0)], {GROUP: 1})
    cluster.set_replicas(v.key, 1, 0.0)
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(10.0)
    start, finish, _ = cluster.requests("w")
    assert finish[0] - start[0] == 4.0  # served at full speed, on the A100


def test_a_regular_pool_without_a_node_group_is_refused() -> None:
    a = pool("a")
    with pytest.raises(ValueError, match="no node group"):
        SimCluster([model("w", [a], [])], {})


def test_provider_quota_keeps_virtual_pods_pending() -> None:
    v = pool("v", NodeClass.VIRTUAL, startup=10, p95=10, provider="salad")
    cluster = SimCluster([model("w", [v], [])], {}, {"salad": ProviderModel(max_gpus=1)})
    cluster.set_replicas(v.key, 2, 0.0)
    cluster.advance(20.0)
    assert sorted(s.name for s in states(cluster, v.key)) == ["READY", "UNSCHEDULED"]
    assert cluster.snapshot().pools[v.key].pending_since == (0.0,)


def test_an_unschedulable_pod_costs_nothing_until_it_gets_a_gpu() -> None:
    a = pool("a", gpus=1, cost=3600.0)  # $1 per GPU-second, easy to read
    cluster = SimCluster([model("w", [a], [])], {GROUP: 1})
    cluster.set_replicas(a.key, 2, 0.0)  # one binds, one waits for the only GPU
    cluster.advance(100.0)
    assert cluster.gpu_seconds(a.key, 100.0) == 100.0
    assert len(cluster.snapshot().pools[a.key].pending_since) == 1


def test_draining_pods_are_reported_as_terminating_until_they_finish() -> None:
    a = pool("a", startup=0)
    cluster = SimCluster([model("w", [a], [0.0], service=50.0)], {GROUP: 4})
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(1.0)  # the request is in flight
    cluster.set_replicas(a.key, 0, 1.0)
    status = cluster.snapshot().pools[a.key]
    assert (status.spec_replicas, status.terminating) == (0, 1)
    cluster.advance(60.0)
    assert cluster.snapshot().pools[a.key].terminating == 0


def test_initial_replicas_are_ready_at_once_and_serve_from_the_first_second() -> None:
    a = pool("a", startup=300)
    sim = Simulation(
        workloads=(spec("w", [a]),),
        models=(model("w", [a], [0.5, 1.0], service=0.1),),
        limits=Limits(),
        node_groups={GROUP: 2},
        initial_replicas={a.key: 1},
    )
    result = run(sim, Scripted({}))
    assert result.workloads[0].pools[0].ready[0] == 1
    assert np.nanmax(result.workloads[0].wait) == 0.0
