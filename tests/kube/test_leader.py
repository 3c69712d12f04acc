"""Leader election on a Lease in the fake API server: one leader among two candidates, handover
within the lease duration when the leader dies, at once when it stops gracefully, a leader cut off
from the API server stops writing before anyone else may start, and only the leader's actuator
writes (checked against the Lease holder at every write the fake server records). The Lease also
carries the leader's engine state in an annotation, written with the writes the election makes
anyway and handed to every replica that is not leading."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from autoscaler.engine.types import Plan, ScaleAction
from autoscaler.kube.actuator import KubeActuator
from autoscaler.kube.leader import ANNOTATIONS_MAX_BYTES, STATE_ANNOTATION, LeaderElector
from tests.eventually import eventually
from tests.kube.harness import Env, async_test, close, cluster

LEASE = "kube-system/gpu-autoscaler"
# Short timers keep the tests fast; the ratios are the defaults' (15 s / 10 s / 2 s).
DURATION, DEADLINE, RETRY = 1.0, 0.6, 0.1


def elector(
    api: client.ApiClient, identity: str, changes: list[bool] | None = None, **kwargs: Any
) -> LeaderElector:
    return LeaderElector(
        api,
        namespace="kube-system",
        identity=identity,
        lease_duration=DURATION,
        renew_deadline=DEADLINE,
        retry_period=RETRY,
        on_change=changes.append if changes is not None else None,
        **kwargs,
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


# ----------------------------------------------------------------------------------------------
# The engine state in the Lease


class Replica:
    """One replica's side of the state exchange: the state it would export (numbered, so each
    renewal writes a new one) and what it was handed, in order with its leadership changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counter = itertools.count()
        self.exported: list[str] = []
        self.events: list[tuple[str, object]] = []

    def state(self) -> str:
        text = f"{self.name}-{next(self.counter)}"
        self.exported.append(text)
        return text

    def elector(self, api: client.ApiClient) -> LeaderElector:
        return elector(
            api,
            self.name,
            state_provider=self.state,
            on_state=lambda text: self.events.append(("state", text)),
        )

    def attach(self, e: LeaderElector) -> LeaderElector:
        e.on_change = lambda leading: self.events.append(("leading", leading))
        return e

    def handed(self) -> list[object]:
        return [text for kind, text in self.events if kind == "state"]


def stored_state(env: Env) -> str | None:
    lease = env.fake.store["leases"][("kube-system", "gpu-autoscaler")]
    annotations: dict[str, str] = lease["metadata"].get("annotations") or {}
    return annotations.get(STATE_ANNOTATION)


def lease_writes(env: Env, who: str) -> list[Any]:
    return [w for w in env.fake.writes if "/leases" in w.path and w.who == who and w.status < 300]


@async_test
async def test_the_leader_writes_its_state_with_each_renewal_and_followers_get_it(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        a, b = Replica("a"), Replica("b")
        api_a, api_b = await env.client_for("a"), await env.client_for("b")
        leader = a.attach(a.elector(api_a))
        leader.start()
        await eventually(lambda: leader.is_leader)
        follower = b.attach(b.elector(api_b))
        follower.start()
        await asyncio.sleep(6 * RETRY)
        await leader.stop(release=False)
        await follower.stop(release=False)

        # One export per Lease write, in the write itself: no request of its own.
        writes = lease_writes(env, "a")
        assert len(writes) == len(a.exported) >= 5
        for write, text in zip(writes, a.exported, strict=True):
            assert write.body["metadata"]["annotations"][STATE_ANNOTATION] == text
        assert stored_state(env) == a.exported[-1]
        # The follower was handed the leader's state at (nearly) every read; the leader never its own.
        handed = b.handed()
        assert len(handed) >= 4 and set(handed) <= set(a.exported)
        assert handed == sorted(handed, key=a.exported.index)
        assert a.handed() == [] and b.exported == []
        for api in (api_a, api_b):
            await close(api)


@async_test
async def test_a_new_leader_gets_the_last_state_before_it_leads(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        a, b = Replica("a"), Replica("b")
        api_a, api_b = await env.client_for("a"), await env.client_for("b")
        first = a.attach(a.elector(api_a))
        first.start()
        await eventually(lambda: first.is_leader)
        second = b.attach(b.elector(api_b))
        second.start()
        await asyncio.sleep(3 * RETRY)
        await first.stop(release=False)  # a crash
        last = a.exported[-1]
        await eventually(lambda: second.is_leader, timeout=3 * DURATION)
        took_over = b.events.index(("leading", True))
        assert b.events[took_over - 1] == ("state", last)  # handed over, then leading
        # From then on the new leader writes its own state.
        await eventually(lambda: stored_state(env) == b.exported[-1] if b.exported else False)
        await second.stop()
        for api in (api_a, api_b):
            await close(api)


@async_test
async def test_a_graceful_stop_writes_the_last_state_with_the_release(tmp_path: Path) -> None:
    async with cluster(tmp_path) as env:
        a = Replica("a")
        api = await env.client_for("a")
        e = a.elector(api)
        e.start()
        await eventually(lambda: e.is_leader)
        await e.stop()
        assert env.fake.lease_holders() == {LEASE: ""}
        assert stored_state(env) == a.exported[-1]
        await close(api)


@pytest.mark.parametrize(
    ("case", "provider", "logged"),
    [
        # Larger than the API server takes for all annotations together: left out, said once.
        ("too large", lambda: "x" * ANNOTATIONS_MAX_BYTES, "past 262144 bytes"),
        ("provider fails", lambda: 1 / 0, "ZeroDivisionError"),
        # Nothing to say: no annotation, nothing logged.
        ("nothing", lambda: None, None),
    ],
)
def test_the_state_never_costs_a_renewal(
    case: str, provider: Any, logged: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @async_test
    async def scenario(tmp_path: Path) -> None:
        async with cluster(tmp_path) as env:
            e = elector(env.api, "solo", state_provider=provider)
            e.start()
            await eventually(lambda: e.is_leader)
            renewals = len(lease_writes(env, "test-token"))
            await eventually(lambda: len(lease_writes(env, "test-token")) >= renewals + 3)
            assert e.is_leader, case
            assert stored_state(env) is None, case
            await e.stop()

    with caplog.at_level(logging.WARNING, logger="autoscaler.kube.leader"):
        scenario(tmp_path)
    problems = [r.getMessage() for r in caplog.records if r.name == "autoscaler.kube.leader"]
    if logged is None:
        assert problems == [], case
    else:
        assert len(problems) == 1 and logged in problems[0], (case, problems)


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
