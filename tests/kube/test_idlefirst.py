"""Idle-first scale-in against the fake API server (whose ReplicaSet honours pod-deletion-cost):
the idlest pods go, a missing load falls back to the default order and says so, the scale-in is
never held up, and only the pods of the pool being scaled in are ever patched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from autoscaler.engine.types import Outcome, Plan, ScaleAction
from autoscaler.kube.actuator import KubeActuator
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.idlefirst import deletion_costs
from autoscaler.kube.objects import DELETION_COST_ANNOTATION
from tests.eventually import eventually
from tests.kube.fakeapi import FakeKube
from tests.kube.harness import Env, async_test, cluster

NS = "inference"
CHAT = f"{NS}/chat"
EMBED = f"{NS}/embed"


class Loads:
    """A pod-load reader fed by the test: `loads` by pod name, or an exception to raise."""

    def __init__(self, budget_seconds: float = 2.0, delay: float = 0.0) -> None:
        self.loads: Mapping[str, float] | Exception = {}
        self.budget_seconds = budget_seconds
        self.delay = delay
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    async def read(self, namespace: str, pods: Sequence[str]) -> Mapping[str, float]:
        self.asked.append((namespace, tuple(sorted(pods))))
        await asyncio.sleep(self.delay)
        if isinstance(self.loads, Exception):
            raise self.loads
        return {pod: load for pod, load in self.loads.items() if pod in pods}


@asynccontextmanager
async def pools(
    tmp_path: Path, chat_loads: Loads, *, replicas: int = 5
) -> AsyncIterator[tuple[Env, KubeCache, KubeActuator]]:
    """`chat` (idle-first, `chat_loads`) and `embed` (managed, idle-first off) with `replicas`
    ready pods each, and `batch`, a Deployment the autoscaler does not manage."""
    async with cluster(tmp_path) as env:
        env.fake.add_node("gpu-1", 32)
        for name in ("chat", "embed", "batch"):
            env.fake.add_deployment(NS, name, replicas=replicas)
        cache = await env.cache()
        cache.manage([CHAT, EMBED])
        actuator = KubeActuator(env.api, cache, pod_loads={CHAT: chat_loads}.get)
        await eventually(
            lambda: all(
                sum(p.ready for p in cache.pods_of(f"{NS}/{name}")) == replicas
                for name in ("chat", "embed", "batch")
            )
        )
        try:
            yield env, cache, actuator
        finally:
            await cache.stop()


def names(fake: FakeKube, deployment: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in fake.pods_of(NS, deployment))


def pod_patches(fake: FakeKube) -> list[tuple[str, str | None]]:
    """(pod, cost written) of every pod patch, in order."""
    return [
        (w.path.rsplit("/", 1)[1], w.body["metadata"]["annotations"][DELETION_COST_ANNOTATION])
        for w in fake.writes
        if w.verb == "PATCH" and "/pods/" in w.path
    ]


def costs(fake: FakeKube, deployment: str) -> dict[str, str | None]:
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION)
        for p in fake.pods_of(NS, deployment)
    }


async def scaled_to(fake: FakeKube, deployment: str, replicas: int, cache: KubeCache | None = None) -> None:
    """Until the fake has `replicas` pods of `deployment` (and `cache` has seen it, if given)."""
    await eventually(lambda: len(fake.pods_of(NS, deployment)) == replicas)
    if cache is not None:
        await eventually(lambda: len(list(cache.pods_of(f"{NS}/{deployment}"))) == replicas)


async def scaled_in(actuator: KubeActuator, pool: str, a: int, b: int) -> str:
    """Scale `pool` from `a` to `b`, which must be written; the result's detail."""
    [result] = await actuator.apply(Plan((ScaleAction(pool, pool.split("/")[1], a, b, "test"),), {}))
    assert result.outcome is Outcome.SCALED
    return result.detail


def test_costs_are_the_dense_rank_of_the_load() -> None:
    assert deletion_costs({"a": 3.0, "b": 0.0, "c": 3.0, "d": 1.5}) == {"a": 2, "b": 0, "c": 2, "d": 1}


@async_test
async def test_a_scale_in_removes_exactly_the_idlest_pods(tmp_path: Path) -> None:
    loads = Loads()
    async with pools(tmp_path, loads) as (env, cache, actuator):
        pods = names(env.fake, "chat")
        # The busiest are the oldest two by name order, which the default order (newest first
        # among equals) would not single out.
        loads.loads = dict(zip(pods, [9.0, 7.0, 0.0, 1.0, 2.0], strict=True))
        detail = await scaled_in(actuator, CHAT, 5, 2)
        assert detail.startswith("idle-first: the idlest go first:")
        assert pods[2] in detail and pods[0] not in detail
        await scaled_to(env.fake, "chat", 2, cache)
        assert names(env.fake, "chat") == pods[:2]
        assert loads.asked == [(NS, tuple(pods))]

        # The next scale-in ranks again, from the loads of then.
        patched = len(pod_patches(env.fake))
        loads.loads = {pods[0]: 1.0, pods[1]: 4.0}
        await scaled_in(actuator, CHAT, 2, 1)
        assert sorted(pod_patches(env.fake)[patched:]) == [(pods[0], "0"), (pods[1], "1")]
        await scaled_to(env.fake, "chat", 1)
        assert names(env.fake, "chat") == [pods[1]]


@async_test
async def test_a_missing_load_falls_back_to_the_default_order_and_says_so(tmp_path: Path) -> None:
    loads = Loads()
    async with pools(tmp_path, loads) as (env, cache, actuator):
        pods = names(env.fake, "chat")
        loads.loads = dict(zip(pods, [5.0, 4.0, 3.0, 2.0, 1.0], strict=True))
        await scaled_in(actuator, CHAT, 5, 4)
        await scaled_to(env.fake, "chat", 4, cache)
        await eventually(lambda: sum(p.deletion_cost is not None for p in cache.pods_of(CHAT)) == 4)

        # One ready pod has no series: no ranking from the others, and the older costs go.
        loads.loads = {pod: 0.0 for pod in pods[1:4]}
        assert await scaled_in(actuator, CHAT, 4, 3) == (
            "idle-first fell back to the ReplicaSet's default order: no load for 1 of 4 ready pod(s): "
            f"{pods[0]}; older costs taken off 4 pod(s)"
        )
        await scaled_to(env.fake, "chat", 3, cache)
        assert set(costs(env.fake, "chat").values()) == {None}

        # Prometheus down: the same, and the scale-in is written all the same.
        loads.loads = RuntimeError("pod load of 'inference/chat' (...): no answer within 2s")
        assert (await scaled_in(actuator, CHAT, 3, 2)).endswith("no answer within 2s")
        await scaled_to(env.fake, "chat", 2)


@async_test
async def test_a_slow_reading_never_holds_the_scale_in_past_its_budget(tmp_path: Path) -> None:
    loads = Loads(budget_seconds=0.2, delay=30.0)
    async with pools(tmp_path, loads, replicas=3) as (env, _, actuator):
        started = asyncio.get_running_loop().time()
        detail = await scaled_in(actuator, CHAT, 3, 2)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert detail.startswith("idle-first: not done within 0.2s (0 of 0 pod(s) annotated)")
        await scaled_to(env.fake, "chat", 2)


@async_test
async def test_only_the_pods_of_the_pool_scaled_in_are_patched(tmp_path: Path) -> None:
    loads = Loads()
    async with pools(tmp_path, loads, replicas=3) as (env, _, actuator):
        chat = names(env.fake, "chat")
        # A reader that knows every pod of the namespace (an unscoped query) changes nothing.
        loads.loads = {pod: 1.0 + i for i, pod in enumerate(chat + names(env.fake, "batch"))}
        plan = Plan(
            (
                ScaleAction(CHAT, "chat", 3, 2, "test"),
                ScaleAction(EMBED, "embed", 3, 2, "test"),  # managed, idle-first off
                ScaleAction(f"{NS}/batch", "batch", 3, 4, "test"),
            ),
            {},
        )
        await actuator.apply(plan)
        assert sorted(pod for pod, _ in pod_patches(env.fake)) == chat
        await scaled_to(env.fake, "chat", 2)
        assert names(env.fake, "chat") == chat[1:]
        # Scaling in a pool without idle-first reads nothing and patches nothing.
        assert set(costs(env.fake, "embed").values()) == {None}
        assert set(costs(env.fake, "batch").values()) == {None}
        assert len(loads.asked) == 1


@async_test
async def test_pods_not_ready_cover_the_scale_in_without_a_reading(tmp_path: Path) -> None:
    loads = Loads()
    async with pools(tmp_path, loads, replicas=2) as (env, cache, actuator):
        env.fake.ready_delay["regular"] = 60.0
        env.fake.set_replicas(NS, "chat", 4)  # two more, starting
        await eventually(lambda: len(list(cache.pods_of(CHAT))) == 4)
        assert await scaled_in(actuator, CHAT, 4, 2) == ""
        assert loads.asked == [] and pod_patches(env.fake) == []
