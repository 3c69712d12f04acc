"""Helpers for the `autoscaler.kube` tests: a fake API server plus a real `kubernetes.aio` client
talking to it over HTTP, and async tests without a plugin.

Tests are plain functions decorated with `@async_test`, which runs the coroutine in a fresh event
loop with a hard timeout, so a hung watch fails one test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

from kubernetes.aio import client

from autoscaler.backoff import Backoff, Retry
from autoscaler.engine.types import NodeClass, PoolSpec
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.client import make_api_client
from tests.kube.fakeapi import FakeKube

P = ParamSpec("P")
TEST_TIMEOUT = 30.0
A100_PRODUCT = "NVIDIA-A100-SXM4-80GB"
SALAD_TAINT = {"key": "virtual-kubelet.io/provider", "value": "saladcloud", "effect": "NoSchedule"}


def async_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return run


def fast_backoff() -> Retry:
    return Retry(Backoff(base_seconds=0.02, cap_seconds=0.2, jitter=0.2))


@dataclass
class Env:
    fake: FakeKube
    api: client.ApiClient
    tmp: Path

    async def client_for(self, token: str) -> client.ApiClient:
        path = self.fake.write_kubeconfig(self.tmp / f"kubeconfig-{token}", token=token)
        return await make_api_client(path)

    async def cache(self, api: client.ApiClient | None = None, **kwargs: Any) -> KubeCache:
        kwargs.setdefault("backoff", fast_backoff)
        cache = KubeCache(api or self.api, **kwargs)
        await cache.start()
        await cache.wait_synced(5)
        return cache


@asynccontextmanager
async def cluster(tmp_path: Path, **fake_kwargs: Any) -> AsyncIterator[Env]:
    fake = FakeKube(**fake_kwargs)
    await fake.start()
    api = await make_api_client(fake.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield Env(fake, api, tmp_path)
    finally:
        await close(api)
        await fake.stop()


async def close(api: client.ApiClient) -> None:
    await api.close()  # type: ignore[no-untyped-call]


def regular_pool(name: str = "chat-a100", namespace: str = "inference", gpus: int = 1) -> PoolSpec:
    return PoolSpec(name, namespace, NodeClass.REGULAR, "A100", "c1", gpus_per_replica=gpus)


def salad_pool(name: str = "chat-salad", namespace: str = "inference") -> PoolSpec:
    return PoolSpec(name, namespace, NodeClass.VIRTUAL, "RTX4090", "c1", provider="salad")
