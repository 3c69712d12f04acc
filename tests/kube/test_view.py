"""The snapshot the engine gets: replicas, pending (unbound) vs starting pods, terminating pods,
the pause annotation, and free GPUs on regular nodes only (Salad and ACS virtual nodes excluded).
Also the node classification and GPU type normalisation on their own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from autoscaler.engine.types import NodeClass, PoolStatus
from autoscaler.kube.nodes import NodeClassifier, normalise_gpu_type
from autoscaler.kube.objects import NodeInfo, Taint
from autoscaler.kube.view import KubeClusterView
from tests.eventually import eventually
from tests.kube.harness import (
    A100_PRODUCT,
    SALAD_TAINT,
    async_test,
    cluster,
    regular_pool,
    salad_pool,
)

A100 = {"nvidia.com/gpu.product": A100_PRODUCT}
SALAD_TOLERATION = [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]


@async_test
async def test_unbound_pods_are_pending_and_bound_ones_are_starting(tmp_path: Path) -> None:
    async with cluster(tmp_path, ready_delay={"regular": 0.3, "virtual": 60.0}) as env:
        env.fake.add_node("gpu-1", 4, labels=A100)
        env.fake.add_deployment("inference", "chat-a100", replicas=6)
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool()], cluster="c1")
        try:
            status = view.snapshot().pools["inference/chat-a100"]
            # 4 bound (starting, not ready yet) + 2 that fit nowhere.
            assert (status.spec_replicas, status.ready, len(status.pending_since)) == (6, 0, 2)
            # On the loop's clock (the wall clock by default, as the API server stamps pods).
            assert all(abs(t - time.time()) < 2 for t in status.pending_since)
            await eventually(lambda: view.snapshot().pools["inference/chat-a100"].ready == 4)
            assert view.snapshot().free_gpus == {("c1", "A100"): 0}
        finally:
            await cache.stop()


@async_test
async def test_terminating_pods_are_counted_and_keep_their_gpus(tmp_path: Path) -> None:
    # Pods linger 5 s: a loaded machine must still see them terminating before they go.
    async with cluster(tmp_path, terminating_seconds=5.0) as env:
        env.fake.add_node("gpu-1", 4, labels=A100)
        env.fake.add_deployment("inference", "chat-a100", replicas=4)
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool()], cluster="c1")
        try:
            env.fake.set_replicas("inference", "chat-a100", 1)
            # The Deployment and its pods come through two watches: either may show first.
            await eventually(
                lambda: (
                    (s := view.snapshot().pools["inference/chat-a100"]).terminating == 3
                    and s.spec_replicas == 1
                )
            )
            snap = view.snapshot()
            assert snap.free_gpus == {("c1", "A100"): 0}
            await eventually(lambda: view.snapshot().free_gpus == {("c1", "A100"): 3}, 15)
            assert view.snapshot().pools["inference/chat-a100"].terminating == 0
        finally:
            await cache.stop()


@async_test
async def test_pause_annotation_and_missing_deployment(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment(
            "inference", "chat-a100", replicas=1, annotations={"gpu-autoscaler/paused": "true"}
        )
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool(), salad_pool("not-there")], cluster="c1")
        try:
            snap = view.snapshot()
            assert snap.pools["inference/chat-a100"].paused
            assert snap.pools["inference/not-there"] == PoolStatus(spec_replicas=0, paused=True)
            env.fake.annotate("inference", "chat-a100", "gpu-autoscaler/paused", "false")
            await eventually(lambda: not view.snapshot().pools["inference/chat-a100"].paused)
        finally:
            await cache.stop()


@async_test
async def test_free_gpus_count_regular_nodes_only(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        fake = env.fake
        fake.add_node("a100-1", 8, labels=A100)
        fake.add_node("a100-cordoned", 8, labels=A100, unschedulable=True)
        fake.add_node("a100-notready", 8, labels=A100, ready=False)
        fake.add_node("h100-1", 4, labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        fake.add_node("cpu-1", 0)
        # Virtual nodes, each recognised by a different mark.
        salad_labels = {"type": "virtual-kubelet", **A100}
        fake.add_node("salad-node", 1000, labels=salad_labels, taints=[SALAD_TAINT])
        acs_taint = {"key": "virtual-kubelet.io/provider", "value": "alibabacloud", "effect": "NoSchedule"}
        fake.add_node("virtual-kubelet-cn-hangzhou-i", 1000, labels=A100, taints=[acs_taint])
        fake.add_node("acs-labelled", 1000, labels={"alibabacloud.com/acs": "true", **A100})
        # Another team's GPU job on a regular node, and our pods on the Salad node.
        fake.add_pod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "train", "namespace": "research"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "x"},
                    "nodeName": "a100-1",
                    "containers": [{"name": "t", "resources": {"limits": {"nvidia.com/gpu": "3"}}}],
                },
                "status": {"phase": "Running"},
            }
        )
        fake.add_deployment(
            "inference",
            "chat-salad",
            replicas=5,
            node_selector={"type": "virtual-kubelet"},
            tolerations=SALAD_TOLERATION,
        )
        cache = await env.cache()
        view = KubeClusterView(cache, [salad_pool()], cluster="c1")
        try:
            snap = view.snapshot()
            assert snap.free_gpus == {("c1", "A100"): 5, ("c1", "H100"): 4}
            status = snap.pools["inference/chat-salad"]
            assert status.spec_replicas == 5 and status.pending_since == ()
        finally:
            await cache.stop()


@async_test
async def test_snapshot_follows_scale_without_api_calls(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("a100-1", 2, labels=A100)
        env.fake.add_deployment("inference", "chat-a100", replicas=1)
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool()], cluster="c1")
        try:
            await eventually(lambda: len(env.fake.watchers) == 3)
            before = len(env.fake.requests)
            env.fake.set_replicas("inference", "chat-a100", 3)
            await eventually(lambda: len(view.snapshot().pools["inference/chat-a100"].pending_since) == 1)
            assert view.snapshot().free_gpus == {("c1", "A100"): 0}
            await asyncio.sleep(0.05)
            assert len(env.fake.requests) == before
        finally:
            await cache.stop()


# ---- nodes.py on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("NVIDIA-A100-SXM4-80GB", "A100"),  # GPU feature discovery's spelling
        ("NVIDIA-A100-PCIE-40GB", "A100"),
        ("NVIDIA-H100-80GB-HBM3", "H100"),
        ("Tesla-T4", "T4"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("NVIDIA-GeForce-RTX-4090", "RTX4090"),  # consumer cards (Salad) keep the RTX
        ("NVIDIA-RTX-A6000", "RTXA6000"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-A10G", "A10G"),
    ],
)
def test_gpu_product_labels_normalise_to_policy_names(product: str, expected: str) -> None:
    assert normalise_gpu_type(product) == expected


def test_explicit_mapping_wins_over_the_rule() -> None:
    assert normalise_gpu_type("NVIDIA-RTX-A6000", {"NVIDIA-RTX-A6000": "A6000"}) == "A6000"


def node(name: str, labels: dict[str, str] | None = None, taints: tuple[Taint, ...] = ()) -> NodeInfo:
    return NodeInfo(name, MappingProxyType(labels or {}), taints, 8, False, True, "1")


@pytest.mark.parametrize(
    ("info", "virtual", "provider"),
    [
        (node("gpu-1", {"nvidia.com/gpu.product": A100_PRODUCT}), False, None),
        # Regular ACK ECS nodes carry alibabacloud.com labels too; they are not virtual.
        (node("cn-hangzhou.10.0.0.1", {"alibabacloud.com/nodepool-id": "np1"}), False, None),
        (node("salad-1", {"type": "virtual-kubelet"}), True, None),
        (node("vk", {"virtual-kubelet.io/provider": "saladcloud"}), True, "saladcloud"),
        (
            node("vk", taints=(Taint("virtual-kubelet.io/provider", "alibabacloud", "NoSchedule"),)),
            True,
            "alibabacloud",
        ),
        (node("virtual-kubelet-cn-hangzhou-i"), True, "alibabacloud"),
        (node("acs", {"alibabacloud.com/acs": "true"}), True, "alibabacloud"),
        (node("virtual-kubelet"), False, None),  # no region/zone: just a name
    ],
)
def test_virtual_nodes_are_recognised(info: NodeInfo, virtual: bool, provider: str | None) -> None:
    classifier = NodeClassifier()
    assert classifier.is_virtual(info) is virtual
    assert classifier.node_class(info) is (NodeClass.VIRTUAL if virtual else NodeClass.REGULAR)
    assert classifier.provider(info) == provider


def test_gpu_type_label_is_configurable() -> None:
    classifier = NodeClassifier(gpu_type_label="example.com/gpu")
    assert classifier.gpu_type(node("n", {"example.com/gpu": "NVIDIA-H100-80GB-HBM3"})) == "H100"
    assert classifier.gpu_type(node("n", {"nvidia.com/gpu.product": A100_PRODUCT})) is None


@async_test
async def test_a_pool_s_status_is_the_same_object_until_its_deployment_or_pods_change(tmp_path: Path) -> None:
    """The view hands back the status it made while nothing it was made from changed (no pending
    pod, the same Deployment object, replicas and pods): the incremental engine then knows the pool
    unchanged by identity. Any change of either shows at once."""
    async with cluster(tmp_path, ready_delay={"regular": 60.0}, terminating_seconds=5.0) as env:
        env.fake.add_node("gpu-1", 1, labels=A100)
        env.fake.add_deployment("inference", "chat-a100", replicas=2)
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool()], cluster="c1")

        def pool() -> PoolStatus:
            return view.snapshot().pools["inference/chat-a100"]

        try:
            await eventually(lambda: len(pool().pending_since) == 1)
            env.fake.add_node("gpu-2", 1, labels=A100)  # the pending pod is bound: a pod change only
            await eventually(lambda: not pool().pending_since)
            first = pool()
            assert (first.spec_replicas, first.ready, first.terminating) == (2, 0, 0)
            assert pool() is first
            env.fake.set_replicas("inference", "chat-a100", 1)  # one pod terminates, and lingers
            await eventually(lambda: (s := pool()).spec_replicas == 1 and s.terminating == 1)
            assert pool() is pool()
            await eventually(lambda: pool().terminating == 0, 15)
        finally:
            await cache.stop()


@async_test
async def test_pending_pods_keep_their_times_from_one_snapshot_to_the_next(tmp_path: Path) -> None:
    """With one clock for the loop and the API server's stamps (the default), pending pods' times
    are the same at every snapshot, and so is the status: a workload with a pod that cannot be
    scheduled is not recomputed at every reconcile for it."""
    async with cluster(tmp_path, ready_delay={"regular": 60.0}) as env:
        env.fake.add_node("gpu-1", 1, labels=A100)
        env.fake.add_deployment("inference", "chat-a100", replicas=2)
        cache = await env.cache()
        view = KubeClusterView(cache, [regular_pool()], cluster="c1")
        try:
            await eventually(lambda: len(view.snapshot().pools["inference/chat-a100"].pending_since) == 1)
            first = view.snapshot().pools["inference/chat-a100"]
            assert view.snapshot().pools["inference/chat-a100"] is first
        finally:
            await cache.stop()
