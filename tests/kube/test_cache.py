"""The watch cache: list then watch, resume from the last resourceVersion after a dropped watch,
relist after 410 Gone without losing what happened in the gap, reconnect with backoff through
server errors, wake the loop on changes that matter, and serve reads without API calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.eventually import eventually
from tests.kube.harness import A100_PRODUCT, async_test, cluster


@async_test
async def test_list_then_watch_sees_objects_and_later_changes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4, labels={"nvidia.com/gpu.product": A100_PRODUCT})
        env.fake.add_deployment("inference", "chat", replicas=2)
        cache = await env.cache()
        try:
            dep = cache.deployment("inference/chat")
            assert dep is not None and dep.spec_replicas == 2 and dep.gpus_per_pod == 1
            assert len(list(cache.pods_of("inference/chat"))) == 2
            assert [n.name for n in cache.nodes()] == ["n1"]

            cache.changed.clear()
            env.fake.set_replicas("inference", "chat", 3)  # a `kubectl scale` is noticed
            await asyncio.wait_for(cache.changed.wait(), 2)
            await eventually(lambda: len(list(cache.pods_of("inference/chat"))) == 3)
            await eventually(lambda: cache.deployment("inference/chat").spec_replicas == 3)  # type: ignore[union-attr]
            assert all(r.stats.lists == 1 for r in cache.reflectors)
        finally:
            await cache.stop()


@async_test
async def test_dropped_watch_resumes_from_last_resource_version_without_relisting(tmp_path: Path) -> None:
    async with cluster(tmp_path, bookmark_interval=0.05) as env:
        env.fake.add_node("n1", 4)
        env.fake.add_deployment("inference", "chat", replicas=1)
        cache = await env.cache()
        try:
            await eventually(lambda: len(env.fake.watchers) == 3, what="three watches open")
            # Quiet first (the pod is ready, the status written), so no event is in flight.
            await eventually(lambda: cache.deployment("inference/chat").ready_replicas == 1)  # type: ignore[union-attr]
            await eventually(lambda: cache.pod_reflector.resource_version == str(env.fake.rv))
            last_rv = cache.pod_reflector.resource_version
            env.fake.drop_watches()
            env.fake.set_replicas("inference", "chat", 2)  # happens while no watch is open
            await eventually(lambda: len(list(cache.pods_of("inference/chat"))) == 2)
            assert cache.pod_reflector.stats.lists == 1
            assert cache.pod_reflector.stats.watches >= 2
            resumed = [
                path
                for verb, path, _ in env.fake.requests
                if "/api/v1/pods?" in path and "watch=true" in path
            ]
            assert f"resourceVersion={last_rv}" in resumed[-1]
        finally:
            await cache.stop()


@async_test
async def test_410_gone_relists_and_reports_what_changed_in_the_gap(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4)
        env.fake.add_node("n2", 4)
        cache = await env.cache()
        removed: list[str] = []
        cache.node_reflector._on_change = lambda old, new: removed.append(old.name) if new is None else None
        try:
            await eventually(lambda: len(env.fake.watchers) == 3)
            env.fake.drop_watches()
            env.fake.remove_node("n2")
            env.fake.add_node("n3", 8)
            env.fake.compact()  # the history covering the gap is gone
            await eventually(lambda: sorted(n.name for n in cache.nodes()) == ["n1", "n3"])
            assert cache.node_reflector.stats.relists_after_gone >= 1
            assert cache.node_reflector.stats.lists >= 2
            assert removed == ["n2"]
        finally:
            await cache.stop()


@async_test
async def test_watch_errors_are_retried_with_backoff_until_the_server_answers(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4)
        cache = await env.cache()
        try:
            await eventually(lambda: len(env.fake.watchers) == 3)
            env.fake.faults.add(500, count=3, verb="GET", path="/api/v1/nodes")
            env.fake.drop_watches()
            env.fake.add_node("n2", 4)
            await eventually(lambda: len(list(cache.nodes())) == 2)
            assert cache.node_reflector.stats.reconnects_after_error >= 3
        finally:
            await cache.stop()


@async_test
async def test_cache_that_starts_while_the_server_fails_lists_again_until_synced(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4)
        env.fake.faults.add(503, count=2, verb="GET", path="/api/v1/nodes")
        cache = await env.cache()
        try:
            assert [n.name for n in cache.nodes()] == ["n1"]
            assert cache.node_reflector.stats.lists == 3
        finally:
            await cache.stop()


@async_test
async def test_bookmarks_move_the_resource_version_of_a_quiet_watch(tmp_path: Path) -> None:
    async with cluster(tmp_path, bookmark_interval=0.05) as env:
        env.fake.add_node("n1", 4)
        cache = await env.cache()
        try:
            env.fake.add_deployment("elsewhere", "batch", replicas=0)  # moves the global counter
            target = str(env.fake.rv)
            await eventually(lambda: cache.node_reflector.resource_version == target)
            assert cache.node_reflector.stats.bookmarks >= 1
        finally:
            await cache.stop()


@async_test
async def test_only_changes_that_matter_wake_the_loop(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("inference", "chat", replicas=0)
        env.fake.add_deployment("inference", "unmanaged", replicas=0)
        cache = await env.cache()
        cache.manage(["inference/chat"])
        try:
            await eventually(lambda: len(env.fake.watchers) == 3)
            cache.changed.clear()
            env.fake.annotate("inference", "unmanaged", "note", "x")
            await eventually(lambda: "note" in cache.deployment("inference/unmanaged").annotations)  # type: ignore[union-attr]
            assert not cache.changed.is_set()
            env.fake.annotate("inference", "chat", "gpu-autoscaler/paused", "true")
            await asyncio.wait_for(cache.changed.wait(), 2)
        finally:
            await cache.stop()


@async_test
async def test_reads_make_no_api_calls(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4)
        env.fake.add_deployment("inference", "chat", replicas=2)
        cache = await env.cache()
        try:
            await eventually(lambda: len(env.fake.watchers) == 3)
            before = len(env.fake.requests)
            for _ in range(100):
                cache.deployment("inference/chat")
                list(cache.pods_of("inference/chat"))
                list(cache.nodes())
            await asyncio.sleep(0.05)
            assert len(env.fake.requests) == before
        finally:
            await cache.stop()


@async_test
async def test_namespaced_cache_with_a_label_selector_keeps_only_those_deployments(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("a", "mine", labels={"gpu-autoscaler/managed": "true"})
        env.fake.add_deployment("a", "theirs")
        env.fake.add_deployment("b", "mine-too", labels={"gpu-autoscaler/managed": "true"})
        cache = await env.cache(namespaces=["a"], deployment_selector="gpu-autoscaler/managed=true")
        try:
            assert [d.key for d in cache.deployments()] == ["a/mine"]
        finally:
            await cache.stop()


@async_test
async def test_a_cluster_that_cannot_be_reached_is_down_until_watched_again(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_node("n1", 4)
        env.fake.add_deployment("inference", "chat", replicas=2)
        clock = [1000.0]
        cache = await env.cache(clock=lambda: clock[0])
        told: list[bool] = []
        cache.add_health_listener(told.append)
        try:
            assert cache.down_since is None
            assert cache.last_heard == 1000.0
            await eventually(lambda: len(env.fake.watchers) == 3)
            clock[0] = 1010.0
            cache.changed.clear()
            env.fake.partition()
            await eventually(lambda: cache.down_since is not None, what="down")
            assert cache.down_since == 1010.0
            assert told == [False]
            assert cache.changed.is_set()  # the loop is woken to hold the cluster's pools
            # What was last seen stays: its pods keep counting.
            assert len(list(cache.pods_of("inference/chat"))) == 2
            env.fake.set_replicas("inference", "chat", 3)  # happens while nobody can see it
            clock[0] = 1020.0
            env.fake.heal()
            await eventually(lambda: cache.down_since is None, what="up again")
            assert told == [False, True]
            await eventually(lambda: len(list(cache.pods_of("inference/chat"))) == 3)
            assert cache.last_heard is not None and cache.last_heard >= 1020.0
        finally:
            await cache.stop()
