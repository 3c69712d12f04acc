"""The world an end-to-end test runs in: the fake Kubernetes API server (tests/kube/fakeapi.py)
with regular GPU nodes and a SaladCloud virtual-kubelet node, a real RabbitMQ queue per test, and
`autoscaler.live.LiveAutoscaler` instances running in-process with short timings, each talking to
the fake through its own kubeconfig (its bearer token names it in the fake's request log).

Callers: the tests in tests/e2e/, through the fixtures in tests/e2e/conftest.py and `e2e_test`.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import aio_pika
import pytest

from autoscaler.live import LiveAutoscaler
from autoscaler.settings import Settings
from tests.integration.servers import RabbitMQServer
from tests.kube.fakeapi import FakeKube, Write
from tests.kube.harness import A100_PRODUCT

P = ParamSpec("P")
# Each scenario's hard limit, under the 60 s budget of an e2e test.
TEST_TIMEOUT = 55.0
NAMESPACE = "inference"
CLUSTER = "e2e"
A100 = {"nvidia.com/gpu.product": A100_PRODUCT}
# What the Salad overlay's pods carry (deploy/kubernetes/overlays/salad/workloads.yaml): a toleration
# of the provider's taint, the GPU class as an annotation, and no GPU request.
SALAD_TOLERATION = {
    "key": "virtual-kubelet.io/provider",
    "operator": "Equal",
    "value": "saladCloud",
    "effect": "NoSchedule",
}
SALAD_GPU_CLASS = {"salad.com/gpu-classes": "RTX 4090 (24 GB)"}

# HPA-like behavior out of the way: every step of the scenario is one decision, not a ramp.
FAST_BEHAVIOR = """
  behavior:
    scaleUp: {{stabilizationSeconds: 0, policies: [{{type: Pods, value: 100, periodSeconds: 1}}]}}
    scaleDown: {{stabilizationSeconds: 0, policies: [{{type: Pods, value: 100, periodSeconds: 1}}]}}
    cooldownSeconds: {cooldown}
"""


def chat_policy(queue: str, target: str = "10", policy: str = "{type: target}") -> str:
    """One workload, `chat`, on regular A100s, reading `queue` every 0.2 s. `target` and `policy`
    (the flow mapping of `spec.policy`) are pasted as written, so a test can make the file invalid
    ("ten")."""
    return f"""
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  maxReplicas: 20
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100, startupSeconds: 1}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: {queue}, targetPerReplica: {target}, activation: 0,
       pollSeconds: 0.2}}
  policy: {policy}
{fast_behavior()}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {{name: company}}
spec:
  clusters: [{{name: {CLUSTER}, gpuTypes: {{A100: 32}}}}]
"""


def election(lease_seconds: float = 2.0, retry_seconds: float = 0.25) -> dict[str, Any]:
    """Settings for a replica that campaigns for the Lease, with short timers."""
    return {
        "leader_election": True,
        "lease_duration_seconds": lease_seconds,
        "lease_renew_deadline_seconds": 0.75 * lease_seconds,
        "lease_retry_seconds": retry_seconds,
    }


def fast_behavior(cooldown: float = 1.0) -> str:
    return FAST_BEHAVIOR.format(cooldown=cooldown)


class Queue:
    """One test's RabbitMQ queue, whose length is the backlog the autoscaler reads."""

    def __init__(self, server: RabbitMQServer) -> None:
        self.server = server
        self.name = f"e2e-{uuid.uuid4().hex[:10]}"
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self.server.amqp_url)
        self._channel = await self._connection.channel()
        await self._channel.declare_queue(self.name, durable=False, auto_delete=False)

    async def set_length(self, n: int) -> None:
        """Make the queue hold exactly `n` messages (nobody consumes them). The length moves one
        message at a time straight from what it is to `n`: a purge first would let a poll read an
        empty queue in between, and a workload scale towards zero that the test never asked for."""
        assert self._channel is not None
        queue = await self._channel.declare_queue(self.name, passive=True)
        # The declared Queue keeps its first message count: ask the broker again for a fresh one.
        have = (await queue.declare()).message_count or 0
        for i in range(have, n):
            await self._channel.default_exchange.publish(
                aio_pika.Message(str(i).encode()), routing_key=self.name
            )
        for _ in range(n, have):
            await queue.get(no_ack=True)

    async def close(self) -> None:
        if self._channel is not None:
            queue = await self._channel.declare_queue(self.name, passive=True)
            await queue.delete(if_unused=False, if_empty=False)
        if self._connection is not None:
            await self._connection.close()


@dataclass
class Instance:
    """One running autoscaler replica."""

    name: str
    token: str
    live: LiveAutoscaler
    task: asyncio.Task[None]

    @property
    def controller(self) -> Any:
        assert self.live.controller is not None
        return self.live.controller

    async def stop(self, *, release_lease: bool = True) -> None:
        """Graceful stop; `release_lease=False` is a crash as the others see it: no more requests,
        and the Lease stays held until it expires."""
        self.live.stop()
        await self.live.close(release_lease=release_lease)
        await asyncio.wait_for(self.task, 5)


@dataclass
class World:
    fake: FakeKube
    tmp: Path
    rabbitmq: RabbitMQServer
    instances: list[Instance] = field(default_factory=list)
    queues: list[Queue] = field(default_factory=list)
    # Fake API servers of other member clusters a test started (tests/e2e/test_multicluster.py):
    # torn down with the world, stopped after the replicas that talk to them.
    members: list[FakeKube] = field(default_factory=list)

    async def queue(self) -> Queue:
        """A new open queue, deleted when the world ends."""
        queue = Queue(self.rabbitmq)
        self.queues.append(queue)
        await queue.open()
        return queue

    async def one_chat_pool(self) -> Queue:
        """The common setting: one 16-GPU A100 node, the Deployment `chat-a100` at zero, and an
        open queue for its backlog."""
        self.fake.add_node("gpu-1", 16, labels=A100)
        self.fake.add_deployment(NAMESPACE, "chat-a100")
        return await self.queue()

    def settings(self, name: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kubeconfig": str(
                self.fake.write_kubeconfig(self.tmp / f"kubeconfig-{name}", token=f"token-{name}")
            ),
            "namespaces": [NAMESPACE],
            "cluster_name": CLUSTER,
            "resync_seconds": 1.0,
            "leader_election": False,
            "pod_name": name,
            "pod_namespace": "default",
            "lease_duration_seconds": 2.0,
            "lease_renew_deadline_seconds": 1.5,
            "lease_retry_seconds": 0.25,
            "policy_reload_seconds": 0.2,
            "cache_sync_timeout_seconds": 10.0,
            "log_format": "text",
        }
        values.update(overrides)
        return Settings(**values)

    async def start(
        self, name: str, policies: Path, *, environ: dict[str, str] | None = None, **overrides: Any
    ) -> Instance:
        """`environ`: the replica's environment, read at every poll (a test may change it while the
        replica runs); by default one with the test broker's URL."""
        env = environ if environ is not None else {"RABBITMQ_URL": self.rabbitmq.amqp_url}
        live = LiveAutoscaler(self.settings(name, **overrides), [policies], environ=env)
        await live.start()
        task = asyncio.create_task(live.run(), name=f"autoscaler-{name}")
        instance = Instance(name, f"token-{name}", live, task)
        self.instances.append(instance)
        return instance

    def replicas(self, deployment: str) -> int:
        spec: int = self.fake.deployment(NAMESPACE, deployment)["spec"]["replicas"]
        return spec

    def scale_writes(self, deployment: str | None = None) -> list[Write]:
        return [
            w
            for w in self.fake.scale_writes()
            if deployment is None or f"/deployments/{deployment}/" in w.path
        ]

    def add_salad_node(self, name: str = "saladcloud-edge-provider-e2e01") -> None:
        """The real provider's node: tainted, no GPU resource (tests/kube/fakeapi.py)."""
        self.fake.add_salad_node(name)

    def add_salad_deployment(self, name: str) -> None:
        """A Salad pool's Deployment: its GPUs are the pool's `gpusPerReplica`, never a pod request,
        which the Salad node could not satisfy."""
        self.fake.add_deployment(
            NAMESPACE,
            name,
            gpus_per_replica=0,
            node_selector={"type": "virtual-kubelet"},
            tolerations=[SALAD_TOLERATION],
            pod_annotations=SALAD_GPU_CLASS,
        )


def gpus_held(fake: FakeKube, deployments: Mapping[str, int]) -> int:
    """GPUs the managed Deployments hold right now, counted from the pods as a provider bills them:
    every pod that exists (starting, running, surging in a rollout, about to be removed, terminating)
    holds its GPUs, and replicas written but not yet created by the ReplicaSet controller are about to.
    So per Deployment: max(spec.replicas, pods not terminating) plus pods terminating."""
    total = 0
    for name, per_replica in deployments.items():
        pods = [
            p
            for p in fake.pods_of(NAMESPACE, name)
            if p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        terminating = sum(1 for p in pods if p["metadata"].get("deletionTimestamp"))
        live = len(pods) - terminating
        total += (max(fake.deployment(NAMESPACE, name)["spec"]["replicas"], live) + terminating) * per_replica
    return total


TEARDOWN_TIMEOUT = 60.0


@asynccontextmanager
async def open_world(tmp_path: Path, rabbitmq: RabbitMQServer, **fake_kwargs: Any) -> AsyncIterator[World]:
    """The fake API server started; at the end, the faults injected into it off, the queues
    deleted, the replicas still running stopped, and the fake stopped."""
    fake_kwargs.setdefault("ready_delay", {"regular": 0.1, "virtual": 0.3})
    fake = FakeKube(**fake_kwargs)
    await fake.start()
    w = World(fake, tmp_path, rabbitmq)
    try:
        yield w
    finally:
        # Bounded: a teardown step that hangs (a broker call, a replica's close) must fail this
        # test, not stall the suite (a CI run has a deadline).
        await asyncio.wait_for(_teardown(w), TEARDOWN_TIMEOUT)


async def _teardown(w: World) -> None:
    # Faults and partitions off first: a replica closing against a server still failing (or a
    # member still partitioned) would wait on it.
    for fake in (w.fake, *w.members):
        fake.faults.reset()
    for queue in w.queues:
        await queue.close()
    for instance in w.instances:
        if not instance.live.closed:
            await instance.stop()
    for fake in (*w.members, w.fake):
        await fake.stop()


def e2e_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, Coroutine[Any, Any, None]]:
    """An async scenario run by pytest-asyncio in the event loop of its fixtures, cut off after
    `TEST_TIMEOUT` so a hung step fails this test instead of stalling the suite."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        await asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT)

    return pytest.mark.asyncio(run)
