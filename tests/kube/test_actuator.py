"""The actuator against the fake API server: writes only what changes, retries 409 from a fresh
read, backs off on 429/5xx, never sends scale-ups whose GPUs a failed scale-down was to free,
leaves paused Deployments alone, posts Events, and notices a manual `kubectl scale`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from autoscaler.backoff import Backoff, Retry
from autoscaler.engine.types import Plan, ScaleAction
from autoscaler.kube.actuator import KubeActuator, Outcome
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.events import SCALED_REASON, truncate_message
from tests.eventually import eventually
from tests.kube.fakeapi import FakeKube
from tests.kube.harness import Env, async_test, cluster

CHAT = "inference/chat-a100"
SALAD = "inference/chat-salad"


def plan(*moves: tuple[str, int, int], reason: str = "backlog 120 > 10/replica") -> Plan:
    return Plan(tuple(ScaleAction(pool, "chat", a, b, reason) for pool, a, b in moves), {})


class Sleeps:
    """Records the backoff delays instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Leader:
    def __init__(self, leading: bool) -> None:
        self.is_leader = leading


@asynccontextmanager
async def actuated(
    tmp_path: Path, **kwargs: Any
) -> AsyncIterator[tuple[Env, KubeCache, KubeActuator, Sleeps]]:
    async with cluster(tmp_path) as env:
        env.fake.add_node("gpu-1", 8, labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
        env.fake.add_deployment("inference", "chat-a100", replicas=2)
        env.fake.add_deployment("inference", "chat-salad", replicas=4)
        cache = await env.cache()
        cache.manage([CHAT, SALAD])
        sleeps = Sleeps()
        kwargs.setdefault("backoff", lambda: Retry(Backoff(base_seconds=0.1, cap_seconds=1.0, jitter=0.0)))
        actuator = KubeActuator(env.api, cache, sleep=sleeps, **kwargs)
        try:
            yield env, cache, actuator, sleeps
        finally:
            await cache.stop()


def scale_writes(fake: FakeKube) -> list[tuple[str, int]]:
    return [
        (w.path.split("/")[-2], w.body["spec"]["replicas"]) for w in fake.writes if w.path.endswith("/scale")
    ]


async def settled(env: Env, cache: KubeCache) -> None:
    """Until the cache shows every Deployment's current spec."""
    await eventually(
        lambda: all(
            cache.deployment(f"{ns}/{name}") is not None
            and cache.deployment(f"{ns}/{name}").spec_replicas == obj["spec"]["replicas"]  # type: ignore[union-attr]
            for (ns, name), obj in env.fake.store["deployments"].items()
        )
    )


@async_test
async def test_resize_writes_once_posts_an_event_and_then_writes_nothing(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, cache, actuator, _):
        done = await actuator.apply(plan((CHAT, 2, 5)))
        assert done == actuator.last_results
        assert [(r.action.to_replicas, r.outcome) for r in done] == [(5, Outcome.SCALED)]
        assert env.fake.deployment("inference", "chat-a100")["spec"]["replicas"] == 5
        [event] = env.fake.events_for("inference", "chat-a100")
        assert event["reason"] == SCALED_REASON and event["type"] == "Normal"
        assert event["message"] == "Scaled from 2 to 5 replicas: backlog 120 > 10/replica"
        assert event["involvedObject"]["kind"] == "Deployment"

        await settled(env, cache)
        writes_before = len(env.fake.writes)
        await actuator.apply(plan((CHAT, 5, 5)))
        [old] = await actuator.apply(plan((CHAT, 2, 5)))  # an old plan: its target is there
        assert old.outcome is Outcome.UNCHANGED
        assert len(env.fake.writes) == writes_before
        assert {r.outcome for r in actuator.last_results} == {Outcome.UNCHANGED}


@async_test
async def test_apply_answers_every_action_and_a_refused_write_with_the_status(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, _):
        env.fake.faults.add(403, verb="PUT", path="/chat-a100/scale")  # RBAC, say: not worth a retry
        results = await actuator.apply(plan((CHAT, 2, 5), (SALAD, 4, 4)))
        assert [(r.action.pool, r.outcome, r.writes) for r in results] == [
            (CHAT, Outcome.FAILED, 1),
            (SALAD, Outcome.UNCHANGED, 0),
        ]
        assert "403" in results[0].detail
        assert env.fake.deployment("inference", "chat-a100")["spec"]["replicas"] == 2


@async_test
async def test_conflict_is_retried_with_the_resource_version_of_a_fresh_read(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, _):
        # Changed on the server, not yet seen by the cache: the write carries a stale version.
        env.fake.annotate("inference", "chat-a100", "team", "ml")
        await actuator.apply(plan((CHAT, 2, 3)))
        [result] = actuator.last_results
        assert (result.outcome, result.writes) == (Outcome.SCALED, 2)
        statuses = [w.status for w in env.fake.writes if w.path.endswith("/scale")]
        assert statuses == [409, 200]
        rereads = [p for v, p, _ in env.fake.requests if v == "GET" and p.endswith("/deployments/chat-a100")]
        assert len(rereads) == 1


@async_test
async def test_conflict_with_a_real_resize_in_between_is_left_for_the_next_reconcile(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, _):
        env.fake.set_replicas("inference", "chat-a100", 7)  # someone else, just now
        await actuator.apply(plan((CHAT, 2, 3)))
        [result] = actuator.last_results
        assert result.outcome is Outcome.STALE
        assert env.fake.deployment("inference", "chat-a100")["spec"]["replicas"] == 7


@async_test
async def test_conflicts_are_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    async with actuated(tmp_path, conflict_retries=2) as (env, _cache, actuator, _):
        env.fake.faults.add(409, count=10, verb="PUT", path="/scale")
        await actuator.apply(plan((CHAT, 2, 3)))
        [result] = actuator.last_results
        # A conflict that outlasts its retries is told apart from an API error.
        assert (result.outcome, result.writes) == (Outcome.CONFLICT, 3)
        assert "409" in result.detail


@async_test
async def test_server_errors_and_throttling_back_off_then_succeed(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, sleeps):
        env.fake.faults.add(500, count=2, verb="PUT", path="/scale")
        env.fake.faults.add(429, verb="PUT", path="/scale", retry_after=3)
        await actuator.apply(plan((CHAT, 2, 4)))
        [result] = actuator.last_results
        # The injected faults, then the write that lands. A 409 may come between them when the
        # Deployment's status moved meanwhile (its controller bumps the resourceVersion, as a real
        # one does): the actuator re-reads and writes again, one write more.
        statuses = [w.status for w in env.fake.writes if w.path.endswith("/scale")]
        assert [c for c in statuses if c != 409] == [500, 500, 429, 200], statuses
        assert (result.outcome, result.writes) == (Outcome.SCALED, len(statuses))
        # Exponential backoff, then the server's Retry-After when it asks for longer.
        assert sleeps.delays == [0.1, 0.2, 3.0]
        assert env.fake.deployment("inference", "chat-a100")["spec"]["replicas"] == 4


@async_test
async def test_failed_scale_down_holds_back_the_scale_ups_of_the_same_plan(tmp_path: Path) -> None:
    async with actuated(tmp_path, error_retries=1) as (env, _cache, actuator, _):
        gpus_per = {"chat-a100": 1, "chat-salad": 1}
        cap = 6  # 2 + 4 now

        def within_cap(fake: FakeKube) -> str | None:
            total = sum(fake.deployment("inference", n)["spec"]["replicas"] * g for n, g in gpus_per.items())
            return f"{total} GPUs > cap {cap}" if total > cap else None

        env.fake.add_invariant(within_cap)
        env.fake.faults.add(503, count=2, verb="PUT", path="/chat-salad/scale")  # both attempts
        # The engine moved 3 GPUs from the Salad pool to the A100 pool.
        await actuator.apply(plan((CHAT, 2, 5), (SALAD, 4, 1)))  # unordered on purpose
        outcomes = {r.action.pool: r.outcome for r in actuator.last_results}
        assert outcomes == {SALAD: Outcome.FAILED, CHAT: Outcome.SKIPPED}
        assert [r.action.pool for r in actuator.last_results] == [SALAD, CHAT]  # downs first
        assert all(w.status >= 500 for w in env.fake.writes if w.path.endswith("/scale"))
        assert env.fake.violations == []

        await actuator.apply(plan((CHAT, 2, 5), (SALAD, 4, 1)))  # the server is back
        assert [r.outcome for r in actuator.last_results] == [Outcome.SCALED, Outcome.SCALED]
        assert env.fake.violations == []


@async_test
async def test_random_failures_never_break_the_cap_at_any_write(tmp_path: Path) -> None:
    async with actuated(tmp_path, error_retries=0, conflict_retries=0) as (env, cache, actuator, _):
        cap = 6

        def within_cap(fake: FakeKube) -> str | None:
            total = sum(
                fake.deployment("inference", n)["spec"]["replicas"] for n in ("chat-a100", "chat-salad")
            )
            return f"{total} GPUs > cap {cap}" if total > cap else None

        env.fake.add_invariant(within_cap)
        env.fake.faults.random_failures(0.3, verbs=["PUT"], seed=7)
        # Swing 6 GPUs back and forth between the pools; each plan fits the cap if applied in order.
        for step in range(12):
            await settled(env, cache)
            a = cache.deployment(CHAT).spec_replicas  # type: ignore[union-attr]
            s = cache.deployment(SALAD).spec_replicas  # type: ignore[union-attr]
            want_a = 5 if step % 2 == 0 else 1
            await actuator.apply(plan((CHAT, a, want_a), (SALAD, s, 6 - want_a)))
        assert env.fake.violations == []
        assert any(w.status >= 500 for w in env.fake.writes)


@async_test
async def test_paused_deployment_is_never_written(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, cache, actuator, _):
        env.fake.annotate("inference", "chat-a100", "gpu-autoscaler/paused", "true")
        await eventually(lambda: cache.deployment(CHAT).paused)  # type: ignore[union-attr]
        await actuator.apply(plan((CHAT, 2, 0)))
        assert [r.outcome for r in actuator.last_results] == [Outcome.PAUSED]
        assert scale_writes(env.fake) == []


@async_test
async def test_pause_set_just_before_the_write_is_seen_on_the_conflict_reread(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, _):
        env.fake.annotate("inference", "chat-a100", "gpu-autoscaler/paused", "true")  # cache lags
        await actuator.apply(plan((CHAT, 2, 0)))
        assert [r.outcome for r in actuator.last_results] == [Outcome.PAUSED]
        assert env.fake.deployment("inference", "chat-a100")["spec"]["replicas"] == 2


@async_test
async def test_manual_scale_is_noticed_once_and_our_own_writes_are_not(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, cache, actuator, _):
        await actuator.apply(plan((CHAT, 2, 3)))
        await actuator.apply(plan((CHAT, 3, 4)))
        await settled(env, cache)
        assert not actuator.manual_changes

        env.fake.set_replicas("inference", "chat-a100", 9)  # kubectl scale --replicas=9
        await eventually(lambda: len(actuator.manual_changes) == 1)
        env.fake.annotate("inference", "chat-a100", "unrelated", "x")  # no replica change
        await settled(env, cache)
        [change] = actuator.manual_changes
        assert (change.pool, change.from_replicas, change.to_replicas) == (CHAT, 4, 9)


@async_test
async def test_a_follower_writes_nothing(tmp_path: Path) -> None:
    async with actuated(tmp_path, leader=Leader(False)) as (env, _cache, actuator, _):
        await actuator.apply(plan((CHAT, 2, 5)))
        assert [r.outcome for r in actuator.last_results] == [Outcome.NOT_LEADER]
        assert env.fake.writes == []


@async_test
async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    async with actuated(tmp_path, dry_run=True) as (env, _cache, actuator, _):
        await actuator.apply(plan((CHAT, 2, 5)))
        assert [r.outcome for r in actuator.last_results] == [Outcome.DRY_RUN]
        assert env.fake.writes == []


@async_test
async def test_long_reasons_are_cut_to_the_event_message_limit(tmp_path: Path) -> None:
    async with actuated(tmp_path) as (env, _cache, actuator, _):
        await actuator.apply(plan((CHAT, 2, 3), reason="é" * 2000))
        [event] = env.fake.events_for("inference", "chat-a100")
        assert len(event["message"].encode()) <= 1024
        assert event["message"].endswith("...")
        assert actuator.events.failed == 0


def test_truncate_message_keeps_short_messages_and_utf8_boundaries() -> None:
    assert truncate_message("short") == "short"
    cut = truncate_message("€" * 400)  # 3 bytes each
    assert len(cut.encode()) <= 1024 and cut.endswith("...")
    cut.encode().decode()  # still valid UTF-8
