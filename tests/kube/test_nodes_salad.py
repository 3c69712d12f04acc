"""SaladCloud's virtual node as its provider really registers it (REFERENCE.md, "Virtual nodes"): named
`saladcloud-edge-provider-<random>`, tainted `virtual-kubelet.io/provider=saladCloud:NoSchedule`,
no `virtual-kubelet.io/provider` label (only the virtual-kubelet library's `type`, `kubernetes.io/role`
and `kubernetes.io/hostname`), cpu/memory/pods allocatable and no `nvidia.com/gpu`.

The classifier calls it virtual with provider `saladCloud`, whichever of its marks is left (the taint
can be switched off with a flag); the fake API server adds one the same way and binds to it only the
pods that request no GPU and tolerate the taint; and the cluster view counts none of it as regular
GPU capacity.

Its pods are Ready on the provider's word as soon as it creates their container group, minutes
before an instance runs; only its tracker's later reports are true. The fake does the same, and the
view does not count a pod Ready on that first word (no container running) as ready."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from autoscaler.engine.types import NodeClass
from autoscaler.kube.nodes import NodeClassifier
from autoscaler.kube.objects import NodeInfo, Taint
from autoscaler.kube.view import KubeClusterView
from tests.eventually import eventually
from tests.kube.fakeapi import GPU, SALAD_NODE_TAINT, Obj
from tests.kube.harness import A100_PRODUCT, async_test, cluster, regular_pool, salad_pool

SALAD_NAME = "saladcloud-edge-provider-x7k2q"
LIBRARY_LABELS = {
    "type": "virtual-kubelet",
    "kubernetes.io/role": "agent",
    "kubernetes.io/hostname": SALAD_NAME,
}
TAINT = Taint("virtual-kubelet.io/provider", "saladCloud", "NoSchedule")
# What the overlay's Salad pods carry: the provider's default taint value, in both spellings its
# releases used, and no GPU request.
TOLERATIONS = [
    {"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": v, "effect": "NoSchedule"}
    for v in ("saladCloud", "saladcloud")
]


def info(name: str, labels: dict[str, str], taints: tuple[Taint, ...]) -> NodeInfo:
    return NodeInfo(name, MappingProxyType(labels), taints, 0, False, True, "1")


@pytest.mark.parametrize(
    "node",
    [
        info(SALAD_NAME, LIBRARY_LABELS, (TAINT,)),  # as registered by default
        info(SALAD_NAME, {}, (TAINT,)),  # the taint alone
        info(SALAD_NAME, {}, ()),  # --disable-taint and no labels: the name alone
        info("saladcloud-node-4kq", {}, ()),  # the name later releases give by default
    ],
)
def test_a_salad_node_is_virtual_with_provider_saladcloud(node: NodeInfo) -> None:
    classifier = NodeClassifier()
    assert classifier.node_class(node) is NodeClass.VIRTUAL
    assert classifier.provider(node) == "saladCloud"


def test_an_ordinary_node_named_like_salad_is_not_enough_without_the_prefix() -> None:
    classifier = NodeClassifier()
    assert classifier.node_class(info("saladcloud", {}, ())) is NodeClass.REGULAR
    assert classifier.node_class(info("my-saladcloud-edge-provider-x", {}, ())) is NodeClass.REGULAR


@async_test
async def test_the_fake_registers_a_salad_node_like_the_provider(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        node = env.fake.add_salad_node(SALAD_NAME)
        assert node["metadata"]["labels"] == LIBRARY_LABELS
        assert node["spec"]["taints"] == [SALAD_NODE_TAINT]
        assert {"key": TAINT.key, "value": TAINT.value, "effect": TAINT.effect} == SALAD_NODE_TAINT
        assert set(node["status"]["allocatable"]) == {"cpu", "memory", "ephemeral-storage", "pods"}
        assert GPU not in node["status"]["capacity"]


@async_test
async def test_the_fake_binds_only_gpu_free_tolerating_pods_to_the_salad_node(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        fake = env.fake
        fake.add_salad_node(SALAD_NAME)
        salad = {"salad.com/gpu-classes": "RTX 4090 (24 GB)"}
        fake.add_deployment("ns", "salad", replicas=3, gpus_per_replica=0, tolerations=TOLERATIONS,
                            pod_annotations=salad)  # fmt: skip
        # The same pods asking for a GPU: the node has none to give, as on the real provider.
        fake.add_deployment("ns", "salad-gpu", replicas=1, tolerations=TOLERATIONS)
        # No toleration: the taint keeps it off.
        fake.add_deployment("ns", "plain", replicas=1, gpus_per_replica=0)
        pods = fake.pods_of("ns", "salad")
        assert [p["spec"].get("nodeName") for p in pods] == [SALAD_NAME] * 3
        assert all(p["metadata"]["annotations"] == salad for p in pods)
        assert all(
            GPU not in c["resources"].get("requests", {}) for p in pods for c in p["spec"]["containers"]
        )
        for name in ("salad-gpu", "plain"):
            (pod,) = fake.pods_of("ns", name)
            assert not pod["spec"].get("nodeName"), name
            assert pod["status"]["conditions"][0]["reason"] == "Unschedulable"


@async_test
async def test_the_salad_node_is_no_regular_gpu_capacity(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("a100-1", 8, labels={"nvidia.com/gpu.product": A100_PRODUCT})
        env.fake.add_salad_node(SALAD_NAME)
        env.fake.add_deployment(
            "inference", "chat-salad", replicas=4, gpus_per_replica=0, tolerations=TOLERATIONS
        )
        cache = await env.cache()
        try:
            view = KubeClusterView(cache, [salad_pool()], cluster="c1")
            snap = view.snapshot()
            assert snap.free_gpus == {("c1", "A100"): 8}
            status = snap.pools["inference/chat-salad"]
            assert status.spec_replicas == 4 and status.pending_since == ()
        finally:
            await cache.stop()


def _ready_condition(pod: Obj) -> str:
    return str(next(c["status"] for c in pod["status"]["conditions"] if c["type"] == "Ready"))


@async_test
async def test_the_fake_s_salad_pods_are_ready_at_creation_then_as_its_tracker_says(tmp_path: Path) -> None:
    # The provider's first word, then its tracker's: not Ready until an instance runs.
    async with cluster(tmp_path, ready_delay={"virtual": 1.5}, salad_tracker_seconds=0.5) as env:
        fake = env.fake
        fake.add_salad_node(SALAD_NAME)
        fake.add_deployment("ns", "salad", replicas=2, gpus_per_replica=0, tolerations=TOLERATIONS)
        pods = fake.pods_of("ns", "salad")
        assert [(p["status"]["phase"], _ready_condition(p)) for p in pods] == [("Running", "True")] * 2
        assert all("state" not in c for p in pods for c in p["status"]["containerStatuses"])
        assert fake.deployment("ns", "salad")["status"]["readyReplicas"] == 2
        await eventually(lambda: fake.deployment("ns", "salad")["status"]["readyReplicas"] == 0, 5)
        assert [p["status"]["phase"] for p in fake.pods_of("ns", "salad")] == ["Pending"] * 2
        await eventually(lambda: fake.deployment("ns", "salad")["status"]["readyReplicas"] == 2, 5)
        assert all(
            "running" in c["state"]
            for p in fake.pods_of("ns", "salad")
            for c in p["status"]["containerStatuses"]
        )


@async_test
async def test_the_view_does_not_count_a_pod_ready_on_the_provider_s_first_word(tmp_path: Path) -> None:
    # The tracker has not reported yet (the real one polls every 5 s; a cold start takes minutes):
    # the Deployment counts 3 ready replicas, none of which serves.
    delays = {"regular": 0.05, "virtual": 60.0}
    async with cluster(tmp_path, ready_delay=delays, salad_tracker_seconds=60.0) as env:
        fake = env.fake
        fake.add_node("a100-1", 1, labels={"nvidia.com/gpu.product": A100_PRODUCT})
        fake.add_salad_node(SALAD_NAME)
        fake.add_deployment(
            "inference",
            "chat-salad",
            replicas=3,
            gpus_per_replica=0,
            tolerations=TOLERATIONS,
            node_selector={"type": "virtual-kubelet"},
        )
        fake.add_deployment("inference", "chat-a100", replicas=1)
        cache = await env.cache()
        try:
            view = KubeClusterView(cache, [salad_pool(), regular_pool()], cluster="c1")
            await eventually(lambda: view.snapshot().pools["inference/chat-a100"].ready == 1)
            assert cache.deployment("inference/chat-salad").ready_replicas == 3  # type: ignore[union-attr]
            status = view.snapshot().pools["inference/chat-salad"]
            assert (status.spec_replicas, status.ready, status.pending_since) == (3, 0, ())
            # Their instances run: the tracker says so, and the view counts them.
            fake.run_now("inference", "chat-salad")
            await eventually(lambda: view.snapshot().pools["inference/chat-salad"].ready == 3)
        finally:
            await cache.stop()
