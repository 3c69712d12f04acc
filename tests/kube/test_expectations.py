"""Reason from what was written, not only from what the watch has shown (issue 9, items 1, 2, 6, 7).

Each test runs the real engine, the cluster view and the actuator against the fake API server, whose
watch shows a write a little later and whose ReplicaSet controller acts later still, as a real
control plane does. The situations are the ones seen on a real cluster: free GPUs counted twice
right after a scale-up, Pending pods given up twice by a scale-down, and GPUs the caps forgot (pods
of a Deployment no longer managed, a rollout's surge pods).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import EngineState, Limits, PoolSpec, WorkloadSpec
from autoscaler.kube.actuator import KubeActuator
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.events import EventRecorder
from autoscaler.kube.expectations import Expectations
from autoscaler.kube.view import KubeClusterView
from tests.eventually import eventually
from tests.factories import read, workload
from tests.kube.fakeapi import DEPLOYMENTS, GPU, FakeKube, _template_hash
from tests.kube.harness import A100_PRODUCT, Env, async_test, cluster, regular_pool, salad_pool

A100 = {"nvidia.com/gpu.product": A100_PRODUCT}
NS = "inference"


class _Loop:
    """One decision and its writes, as the live controller does them, on the view's clock."""

    def __init__(self, env: Env, cache: KubeCache, pools: list[PoolSpec]) -> None:
        expectations = Expectations()
        self.view = KubeClusterView(cache, pools, cluster="c1", expectations=expectations)
        self.actuator = KubeActuator(env.api, cache, expectations=expectations, events=EventRecorder(env.api))
        self.state = EngineState()

    async def step(self, workloads: list[WorkloadSpec], demand: dict[str, float], limits: Limits) -> None:
        now = time.time()
        readings = {name: {"q": read(value, now)} for name, value in demand.items()}
        plan, self.state = reconcile(workloads, self.view.snapshot(), readings, self.state, limits, now)
        await self.actuator.apply(plan)


def _scale_writes(fake: FakeKube, name: str) -> list[int]:
    return [
        w.body["spec"]["replicas"] for w in fake.scale_writes() if f"/{name}/" in w.path and w.status == 200
    ]


def _bound(fake: FakeKube, name: str) -> int:
    return sum(1 for p in fake.pods_of(NS, name) if p["spec"].get("nodeName"))


async def _five_running_on_eight_gpus(env: Env) -> tuple[KubeCache, PoolSpec, _Loop]:
    """The scene before `a100 5->8`: one A100 node of 8 GPUs, `chat-a100` at 5 bound replicas, the
    cache synced and a loop over that pool."""
    env.fake.add_node("gpu-1", 8, labels=A100)
    env.fake.add_deployment(NS, "chat-a100", replicas=5)
    await eventually(lambda: _bound(env.fake, "chat-a100") == 5)
    cache = await env.cache()
    # The cache has listed; its watch may reach the server a moment later. A watch that starts after
    # the scale write replays it at once (as a real API server replays from an older
    # resourceVersion), so the tests' premise that the watch lags needs the watch in place first.
    await eventually(
        lambda: any(w.collection == DEPLOYMENTS for w in env.fake.watchers), what="the Deployment watch"
    )
    pool = regular_pool()
    return cache, pool, _Loop(env, cache, [pool])


@async_test
async def test_replicas_written_but_not_created_yet_take_their_free_gpus(tmp_path: Path) -> None:
    # Item 2: `a100 5->8` with 8 GPUs in the cluster, then 65 ms later `8->10`: the 3 new replicas
    # did not exist yet, so their GPUs still looked free.
    async with cluster(tmp_path, watch_delay=0.02, controller_delay=1.0) as env:
        cache, pool, loop = await _five_running_on_eight_gpus(env)
        chat = workload("chat", (pool,))
        try:
            await loop.step([chat], {"chat": 100}, Limits())
            assert _scale_writes(env.fake, "chat-a100") == [8]
            # The watch shows spec.replicas 8 while the ReplicaSet has not created the 3 pods yet.
            await eventually(
                lambda: (d := cache.deployment(f"{NS}/chat-a100")) is not None and d.spec_replicas == 8
            )
            assert len(env.fake.pods_of(NS, "chat-a100")) == 5
            await loop.step([chat], {"chat": 100}, Limits())
            assert _scale_writes(env.fake, "chat-a100") == [8]
            await eventually(lambda: _bound(env.fake, "chat-a100") == 8)
        finally:
            await cache.stop()


@async_test
async def test_the_view_reports_a_written_scale_while_the_watch_has_not_shown_it(tmp_path: Path) -> None:
    # A watch 3 s behind and a ReplicaSet 1 s behind: right after `a100 5->8` the cache still says
    # 5 and no pod is new, yet the snapshot says 8, with 3 replicas about to claim free GPUs.
    async with cluster(tmp_path, watch_delay=3.0, controller_delay=1.0) as env:
        cache, pool, loop = await _five_running_on_eight_gpus(env)
        try:
            await loop.step([workload("chat", (pool,))], {"chat": 100}, Limits())
            assert _scale_writes(env.fake, "chat-a100") == [8]
            seen = cache.deployment(pool.key)
            assert seen is not None and seen.spec_replicas == 5  # the watch has not shown the write
            status = loop.view.snapshot().pools[pool.key]
            assert status.spec_replicas == 8
            assert len(status.pending_since) == 3
        finally:
            await cache.stop()


@async_test
async def test_pending_pods_a_scale_down_gave_up_are_not_given_up_again(tmp_path: Path) -> None:
    # Item 1: Salad `24->16` (8 pods Pending past the timeout given up), then 56 ms later `16->14`
    # "2 pods Pending over 120 s: given up": pods the first write removed were counted again, and
    # the ReplicaSet removed running replicas for them.
    async with cluster(tmp_path, watch_delay=0.02, controller_delay=1.0) as env:
        env.fake.add_node("gpu-1", 4, labels=A100)
        env.fake.add_deployment(NS, "chat-a100", replicas=6)
        env.fake.add_deployment(NS, "chat-salad", replicas=0)
        await eventually(lambda: _bound(env.fake, "chat-a100") == 4)
        cache = await env.cache()
        a100 = PoolSpec("chat-a100", NS, regular_pool().node_class, "A100", "c1", pending_timeout_seconds=0.5)
        chat = workload("chat", (a100, salad_pool()))
        loop = _Loop(env, cache, [a100, salad_pool()])
        try:
            # Creation stamps have whole seconds: past 0.5 s for sure after 1.6 s.
            await eventually(
                lambda: (
                    (s := loop.view.snapshot().pools[a100.key]).pending_since
                    and time.time() - s.pending_since[0] > 0.6
                ),
                5,
            )
            await loop.step([chat], {"chat": 60}, Limits())
            assert _scale_writes(env.fake, "chat-a100") == [4]
            await eventually(lambda: (d := cache.deployment(a100.key)) is not None and d.spec_replicas == 4)
            # The 2 Pending pods are still there: the ReplicaSet has not acted on the write yet.
            assert len(env.fake.pods_of(NS, "chat-a100")) == 6
            await loop.step([chat], {"chat": 60}, Limits())
            assert _scale_writes(env.fake, "chat-a100") == [4]
            await eventually(lambda: len(env.fake.pods_of(NS, "chat-a100")) == 4)
            assert _bound(env.fake, "chat-a100") == 4
        finally:
            await cache.stop()


@async_test
async def test_a_deployment_no_longer_managed_counts_against_the_cap_until_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 6: a hot reload drops the batch workload while its Deployment still runs 4 GPUs; chat
    # must not take the company's 6 as if they were free (24 GPUs were held under a cap of 16).
    async with cluster(tmp_path) as env:
        env.fake.add_node("gpu-1", 16, labels=A100)
        env.fake.add_deployment(NS, "chat-a100", replicas=0)
        env.fake.add_deployment(NS, "batch-a100", replicas=4)
        await eventually(lambda: _bound(env.fake, "batch-a100") == 4)
        cache = await env.cache()
        chat_pool, batch_pool = regular_pool(), regular_pool("batch-a100")
        limits = Limits(company_max_gpus=6)
        loop = _Loop(env, cache, [chat_pool, batch_pool])
        try:
            loop.view.set_pools([chat_pool])  # the reload
            with caplog.at_level(logging.WARNING):
                await loop.step([workload("chat", (chat_pool,))], {"chat": 100}, limits)
            assert _scale_writes(env.fake, "chat-a100") == [2]
            assert "batch-a100 is no longer managed" in caplog.text
            env.fake.set_replicas(NS, "batch-a100", 0)
            await eventually(lambda: not env.fake.pods_of(NS, "batch-a100"))
            await eventually(lambda: loop.view.snapshot().unmanaged == ())
            await loop.step([workload("chat", (chat_pool,))], {"chat": 100}, limits)
            assert _scale_writes(env.fake, "chat-a100") == [2, 6]
        finally:
            await cache.stop()


def _surge_pod(deployment: str) -> dict[str, object]:
    pod_hash = _template_hash(deployment)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{deployment}-{pod_hash}-surge",
            "namespace": NS,
            "labels": {"pod-template-hash": pod_hash},
            "ownerReferences": [
                {"kind": "ReplicaSet", "name": f"{deployment}-{pod_hash}", "uid": "rs", "controller": True}
            ],
        },
        "spec": {
            "containers": [{"name": "main", "resources": {"requests": {GPU: "1"}, "limits": {GPU: "1"}}}]
        },
        "status": {"phase": "Pending"},
    }


@async_test
async def test_surge_pods_of_a_rollout_count_against_the_cap(tmp_path: Path) -> None:
    # Item 7: spec 4 but 5 pods (a rollout's surge pod): the caps count pods, not the spec.
    async with cluster(tmp_path) as env:
        env.fake.add_node("gpu-1", 16, labels=A100)
        env.fake.add_deployment(NS, "chat-a100", replicas=4)
        env.fake.add_deployment(NS, "batch-a100", replicas=0)
        env.fake.add_pod(_surge_pod("chat-a100"))
        await eventually(lambda: _bound(env.fake, "chat-a100") == 5)
        cache = await env.cache()
        chat_pool, batch_pool = regular_pool(), regular_pool("batch-a100")
        loop = _Loop(env, cache, [chat_pool, batch_pool])
        try:
            status = loop.view.snapshot().pools[chat_pool.key]
            assert (status.spec_replicas, status.surplus) == (4, 1)
            await loop.step(
                [
                    workload("chat", (chat_pool,), min_replicas=4, max_replicas=4),
                    workload("batch", (batch_pool,)),
                ],
                {"chat": 40, "batch": 100},
                Limits(company_max_gpus=6),
            )
            assert _scale_writes(env.fake, "batch-a100") == [1]
        finally:
            await cache.stop()
