"""Leader election on a Lease in the fake API server: one leader among two candidates, handover
within the lease duration when the leader dies, at once when it stops gracefully, a leader cut off
from the API server stops writing before anyone else may start, and only the leader's actuator
writes (checked against the Lease holder at every write the fake server records)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kubernetes.aio import client

from autoscaler.engine.types import Plan, ScaleAction
from autoscaler.kube.actuator import KubeActuator
from autoscaler.kube.leader import LeaderElector
from tests.kube.harness import Env, async_test, close, cluster, eventually

LEASE = "kube-system/gpu-autoscaler"
# Short timers keep the tests fast; the ratios are the defaults' (15 s / 10 s / 2 s).
DURATION, DEADLINE, RETRY = 1.0, 0.6, 0.1


def elector(api: client.ApiClient, identity: str, changes: list[bool] | None = None) -> LeaderElector:
    return LeaderElector(
        api,
        namespace="kube-system",
        identity=identity,
        lease_duration=DURATION,
        renew_deadline=DEADLINE,
        retry_period=RETRY,
        on_change=changes.append if changes is not None else None,
    )


async def two_candidates(env: Env) -> tuple[list[client.ApiClient], list[LeaderElector]]:
    apis = [await env.client_for("a"), await env.client_for("b")]
    electors = [elector(apis[0], "a"), elector(apis[1], "b")]
    for e in electors:
        e.start()
    await eventually(lambda: sum(e.is_leader for e in electors) == 1, what="one leader")
    return apis, electors


@async_test
async def test_a_lone_candidate_creates_the_lease_and_leads(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        changes: list[bool] = []
        e = elector(env.api, "solo", changes)
        e.start()
        try:
            await eventually(lambda: e.is_leader)
            assert env.fake.lease_holders() == {LEASE: "solo"}
            assert changes == [True]
            renewals = len(env.fake.writes)
            await asyncio.sleep(5 * RETRY)
            assert len(env.fake.writes) > renewals  # it keeps renewing
        finally:
            await e.stop()
        assert changes == [True, False]
        assert env.fake.lease_holders() == {LEASE: ""}  # released on a graceful stop


@async_test
async def test_killed_leader_is_replaced_within_the_lease_duration(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        apis, electors = await two_candidates(env)
        leader, follower = sorted(electors, key=lambda e: not e.is_leader)
        await asyncio.sleep(3 * RETRY)
        assert not follower.is_leader

        killed_at = time.monotonic()
        await leader.stop(release=False)  # a crash: the lease is not given back
        await eventually(lambda: follower.is_leader, timeout=3 * DURATION)
        took = time.monotonic() - killed_at
        # The follower saw the last renewal at most one retry after it was made, and checks every
        # retry period: the lease duration plus two periods, and some slack for a busy machine.
        assert took <= DURATION + 2 * RETRY + 0.3, took
        assert env.fake.lease_holders() == {LEASE: follower.identity}
        await follower.stop()
        for api in apis:
            await close(api)


@async_test
async def test_graceful_stop_hands_over_at_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        apis, electors = await two_candidates(env)
        leader, follower = sorted(electors, key=lambda e: not e.is_leader)
        stopped_at = time.monotonic()
        await leader.stop()
        await eventually(lambda: follower.is_leader, timeout=DURATION)
        assert time.monotonic() - stopped_at < DURATION / 2
        await follower.stop()
        for api in apis:
            await close(api)


@async_test
async def test_a_leader_cut_off_from_the_api_steps_down_before_anyone_takes_over(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        apis, electors = await two_candidates(env)
        leader, follower = sorted(electors, key=lambda e: not e.is_leader)
        # The leader's requests fail from now on (its token), the follower's go through.
        leader_token = "a" if leader.identity == "a" else "b"
        env.fake.tokens = {"a", "b", "test-token"} - {leader_token}
        cut_at = time.monotonic()
        await eventually(lambda: not leader.is_leader, timeout=2 * DURATION)
        stepped_down = time.monotonic() - cut_at
        await eventually(lambda: follower.is_leader, timeout=3 * DURATION)
        took_over = time.monotonic() - cut_at
        assert stepped_down <= DEADLINE + 0.05
        assert took_over > stepped_down
        for e in electors:
            await e.stop()
        for api in apis:
            await close(api)


@async_test
async def test_only_the_leader_writes_through_a_handover(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        env.fake.add_deployment("inference", "chat", replicas=0)
        identity = {"a": "a", "b": "b"}
        apis, electors = await two_candidates(env)
        actuators = []
        caches = []
        for api, e in zip(apis, electors, strict=True):
            cache = await env.cache(api)
            caches.append(cache)
            actuators.append(KubeActuator(api, cache, leader=e))

        async def replica(actuator: KubeActuator) -> None:
            # Each replica's own loop: read its cache, decide the same thing, apply.
            step = 0
            while True:
                dep = actuator.cache.deployment("inference/chat")
                if dep is not None:
                    target = step % 3 + 1
                    action = ScaleAction("inference/chat", "chat", dep.spec_replicas, target, f"step {step}")
                    await actuator.apply(Plan((action,), {}))
                step += 1
                await asyncio.sleep(0.03)

        loops = [asyncio.create_task(replica(a)) for a in actuators]
        leader = next(e for e in electors if e.is_leader)
        await asyncio.sleep(0.5)
        await leader.stop(release=False)  # crash
        others = [e for e in electors if e is not leader]
        await eventually(lambda: others[0].is_leader, timeout=3 * DURATION)
        await asyncio.sleep(0.5)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

        scale_writes = env.fake.scale_writes()
        writers = {w.who for w in scale_writes}
        assert writers == {"a", "b"}, writers  # both led at some point
        for w in scale_writes:
            assert w.lease_holders[LEASE] == identity[w.who], w
        # A killed leader leaves a gap with no writes at all, at least until its lease expired.
        switch = next(i for i, w in enumerate(scale_writes) if w.who != scale_writes[0].who)
        gap = scale_writes[switch].at - scale_writes[switch - 1].at
        assert gap >= DURATION - 2 * RETRY - 0.2, gap

        for cache in caches:
            await cache.stop()
        await others[0].stop()
        for api in apis:
            await close(api)


def test_timers_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(
            client.ApiClient(),
            namespace="x",
            identity="i",
            lease_duration=5,
            renew_deadline=5,
            retry_period=1,
        )
