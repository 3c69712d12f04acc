"""The fake API server keeps the semantics the cache and the actuator rely on: optimistic
concurrency (409 on a stale resourceVersion), 410 Gone on a watch older than the history, the
ReplicaSet scale-in order, the scheduler, terminating pods, and fault injection. Driven through the
real `kubernetes.aio` client, as the code under test drives it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.eventually import eventually
from tests.kube.fakeapi import DELETION_COST, GPU
from tests.kube.harness import A100_PRODUCT, SALAD_TAINT, async_test, cluster


def scale_body(name: str, replicas: int, rv: str | None) -> client.V1Scale:
    return client.V1Scale(
        metadata=client.V1ObjectMeta(name=name, namespace="ns", resource_version=rv),
        spec=client.V1ScaleSpec(replicas=replicas),
    )


@async_test
async def test_scale_with_stale_resource_version_gets_409_with_a_status_body(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 8, labels={"nvidia.com/gpu.product": A100_PRODUCT})
        env.fake.add_deployment("ns", "web", replicas=1)
        apps = client.AppsV1Api(env.api)
        seen = await apps.read_namespaced_deployment_scale("web", "ns")
        assert seen.spec is not None and seen.spec.replicas == 1
        stale = seen.metadata.resource_version if seen.metadata else None
        env.fake.annotate("ns", "web", "touched", "yes")  # bumps the resourceVersion

        with pytest.raises(ApiException) as caught:
            await apps.replace_namespaced_deployment_scale("web", "ns", scale_body("web", 3, stale))
        assert caught.value.status == 409
        status = json.loads(caught.value.body or "{}")
        assert status["kind"] == "Status" and status["reason"] == "Conflict" and status["code"] == 409
        assert env.fake.deployment("ns", "web")["spec"]["replicas"] == 1

        fresh = await apps.read_namespaced_deployment_scale("web", "ns")
        rv = fresh.metadata.resource_version if fresh.metadata else None
        done = await apps.replace_namespaced_deployment_scale("web", "ns", scale_body("web", 3, rv))
        assert done.spec is not None and done.spec.replicas == 3
        # The ReplicaSet controller acts a little after the write, as the real one does.
        assert len(env.fake.pods_of("ns", "web")) == 1
        await eventually(lambda: len(env.fake.pods_of("ns", "web")) == 3)


@async_test
async def test_patch_of_scale_without_resource_version_always_applies(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("ns", "web", replicas=1)
        apps = client.AppsV1Api(env.api)
        await apps.patch_namespaced_deployment_scale("web", "ns", {"spec": {"replicas": 2}})
        assert env.fake.deployment("ns", "web")["spec"]["replicas"] == 2


@async_test
async def test_watch_from_a_compacted_resource_version_gets_410_gone(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 1)
        core = client.CoreV1Api(env.api)
        listed = await core.list_node()
        old = listed.metadata.resource_version if listed.metadata else None
        env.fake.add_node("n2", 1)
        env.fake.compact()

        resp = await core.list_node_without_preload_content(
            watch=True, resource_version=old, timeout_seconds=5
        )
        event = json.loads(await resp.content.readline())
        resp.release()
        assert event["type"] == "ERROR"
        assert event["object"]["code"] == 410


@async_test
async def test_watch_resumes_from_history_and_sends_bookmarks(tmp_path: Path) -> None:
    async with cluster(tmp_path, bookmark_interval=0.05) as env:
        core = client.CoreV1Api(env.api)
        listed = await core.list_node()
        rv = listed.metadata.resource_version if listed.metadata else None
        env.fake.add_node("n1", 2)
        resp = await core.list_node_without_preload_content(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5
        )
        first = json.loads(await resp.content.readline())
        second = json.loads(await resp.content.readline())
        resp.release()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "n1")
        assert second["type"] == "BOOKMARK"
        assert int(second["object"]["metadata"]["resourceVersion"]) >= int(
            first["object"]["metadata"]["resourceVersion"]
        )


@async_test
async def test_lease_replace_with_stale_resource_version_gets_409(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        coord = client.CoordinationV1Api(env.api)
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(holder_identity="a")
        )
        await coord.create_namespaced_lease("ns", body)
        lease = await coord.read_namespaced_lease("l", "ns")
        assert lease.spec is not None
        lease.spec.holder_identity = "b"
        await coord.replace_namespaced_lease("l", "ns", lease)
        lease.spec.holder_identity = "c"  # same, now stale, resourceVersion
        with pytest.raises(ApiException) as caught:
            await coord.replace_namespaced_lease("l", "ns", lease)
        assert caught.value.status == 409
        assert env.fake.lease_holders() == {"ns/l": "b"}


@async_test
async def test_pods_that_fit_nowhere_stay_pending_unschedulable(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("a100", 2, labels={"pool": "a100"})
        env.fake.add_node("salad", 100, labels={"type": "virtual-kubelet"}, taints=[SALAD_TAINT])
        env.fake.add_deployment("ns", "web", replicas=3, node_selector={"pool": "a100"})
        pods = env.fake.pods_of("ns", "web")
        bound = [p for p in pods if p["spec"].get("nodeName")]
        pending = [p for p in pods if not p["spec"].get("nodeName")]
        assert [p["spec"]["nodeName"] for p in bound] == ["a100", "a100"]
        assert len(pending) == 1
        assert pending[0]["status"]["conditions"][0]["reason"] == "Unschedulable"


@async_test
async def test_virtual_nodes_take_only_pods_that_tolerate_their_taint(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("salad", 100, labels={"type": "virtual-kubelet"}, taints=[SALAD_TAINT])
        env.fake.add_deployment("ns", "plain", replicas=1)
        tolerate = [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]
        env.fake.add_deployment("ns", "spill", replicas=1, tolerations=tolerate)
        assert not env.fake.pods_of("ns", "plain")[0]["spec"].get("nodeName")
        assert env.fake.pods_of("ns", "spill")[0]["spec"]["nodeName"] == "salad"


@async_test
async def test_scale_in_deletes_unscheduled_then_not_ready_then_newest(tmp_path: Path) -> None:
    async with cluster(tmp_path, ready_delay={"regular": 0.05, "virtual": 60.0}) as env:
        env.fake.add_node("fast", 2)
        env.fake.add_deployment("ns", "web", replicas=2)
        await eventually(lambda: env.fake.deployment("ns", "web")["status"]["readyReplicas"] == 2)
        env.fake.add_node("slow", 1, labels={"type": "virtual-kubelet"})  # bound, never ready in time
        env.fake.set_replicas("ns", "web", 4)  # 2 ready, 1 starting on "slow", 1 unschedulable
        names = {p["metadata"]["name"]: p for p in env.fake.pods_of("ns", "web")}
        unscheduled = next(n for n, p in names.items() if not p["spec"].get("nodeName"))
        starting = next(n for n, p in names.items() if p["spec"].get("nodeName") == "slow")

        env.fake.set_replicas("ns", "web", 3)
        assert unscheduled not in {p["metadata"]["name"] for p in env.fake.pods_of("ns", "web")}
        env.fake.set_replicas("ns", "web", 2)
        left = {p["metadata"]["name"] for p in env.fake.pods_of("ns", "web")}
        assert starting not in left and len(left) == 2


@async_test
async def test_scale_in_honours_pod_deletion_cost_after_readiness(tmp_path: Path) -> None:
    async with cluster(tmp_path, ready_delay={"regular": 0.05, "virtual": 60.0}) as env:
        env.fake.add_node("fast", 4)
        env.fake.add_deployment("ns", "web", replicas=4)
        await eventually(lambda: env.fake.deployment("ns", "web")["status"]["readyReplicas"] == 4)
        ready = sorted(p["metadata"]["name"] for p in env.fake.pods_of("ns", "web"))
        core = client.CoreV1Api(env.api)
        # Lower cost goes first; an unparsable cost reads as 0, as the controller reads it.
        costs = dict(zip(ready, ["10", "7", "-5", "not-a-number"], strict=True))
        for name, cost in costs.items():
            await core.patch_namespaced_pod(
                name,
                "ns",
                {"metadata": {"annotations": {DELETION_COST: cost}}},
                _content_type="application/merge-patch+json",
            )
        env.fake.add_node("slow", 1, labels={"type": "virtual-kubelet"})
        env.fake.set_replicas("ns", "web", 5)  # the fifth starts on "slow", never ready in time
        [starting] = [p for p in env.fake.pods_of("ns", "web") if p["spec"].get("nodeName") == "slow"]
        starting["metadata"]["annotations"][DELETION_COST] = "1000"  # not ready beats any cost

        env.fake.set_replicas("ns", "web", 2)
        left = sorted(p["metadata"]["name"] for p in env.fake.pods_of("ns", "web"))
        assert left == [ready[0], ready[1]]


@async_test
async def test_deleted_bound_pods_linger_as_terminating_and_keep_their_gpus(tmp_path: Path) -> None:
    async with cluster(tmp_path, terminating_seconds=0.3) as env:
        env.fake.add_node("n1", 2)
        env.fake.add_deployment("ns", "web", replicas=2)
        env.fake.add_deployment("ns", "other", replicas=0)
        env.fake.set_replicas("ns", "web", 0)
        pods = env.fake.pods_of("ns", "web")
        assert len(pods) == 2 and all(p["metadata"].get("deletionTimestamp") for p in pods)
        env.fake.set_replicas("ns", "other", 1)
        assert not env.fake.pods_of("ns", "other")[0]["spec"].get("nodeName")  # GPUs still held
        await eventually(lambda: not env.fake.pods_of("ns", "web"))
        await eventually(lambda: bool(env.fake.pods_of("ns", "other")[0]["spec"].get("nodeName")))


@async_test
async def test_injected_faults_hit_the_next_matching_requests_only(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("ns", "web", replicas=1)
        apps = client.AppsV1Api(env.api)
        env.fake.faults.add(503, count=2, verb="GET", path="/scale")
        env.fake.faults.add(429, verb="GET", path="/scale", retry_after=1)
        for expected in (503, 503, 429):
            with pytest.raises(ApiException) as caught:
                await apps.read_namespaced_deployment_scale("web", "ns")
            assert caught.value.status == expected
        assert caught.value.headers is not None and caught.value.headers.get("Retry-After") == "1"
        await apps.read_namespaced_deployment_scale("web", "ns")

        env.fake.faults.add(None, delay=0.2, path="/scale")
        started = asyncio.get_running_loop().time()
        await apps.read_namespaced_deployment_scale("web", "ns")
        assert asyncio.get_running_loop().time() - started >= 0.2


@async_test
async def test_writes_are_recorded_with_caller_and_invariants_checked_at_each(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("ns", "web", replicas=1, gpus_per_replica=2)

        def at_most_4_gpus(fake: object) -> str | None:
            replicas = env.fake.deployment("ns", "web")["spec"]["replicas"]
            return f"{2 * replicas} GPUs requested" if 2 * replicas > 4 else None

        env.fake.add_invariant(at_most_4_gpus)
        apps = client.AppsV1Api(env.api)
        for n in (2, 3, 1):
            await apps.patch_namespaced_deployment_scale("web", "ns", {"spec": {"replicas": n}})
        assert [w.body["spec"]["replicas"] for w in env.fake.scale_writes()] == [2, 3, 1]
        assert {w.who for w in env.fake.writes} == {"test-token"}
        assert env.fake.violations == ["6 GPUs requested"]
        assert GPU in env.fake.pods_of("ns", "web")[0]["spec"]["containers"][0]["resources"]["requests"]
