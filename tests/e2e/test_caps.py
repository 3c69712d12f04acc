"""A company cap shared by two workloads is never exceeded, checked by the fake API server after
every write it accepts (not only at the end): the GPUs the managed Deployments hold, spec replicas
times GPUs per replica plus pods still terminating, stay within `companyMaxGpus` while the higher
priority workload takes GPUs from the other and gives them back. Once with a healthy API server,
once with 10 % of all requests failing (watches, lists, scale writes, events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    A100,
    CLUSTER,
    NAMESPACE,
    World,
    e2e_test,
    fast_behavior,
    gpus_held,
)
from tests.eventually import eventually
from tests.kube.fakeapi import FakeKube

CAP = 6
GPUS = {"chat-a100": 1, "batch-a100": 2}

POLICIES = f"""
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  priority: 100
  maxReplicas: 20
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100, startupSeconds: 1}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: CHAT, targetPerReplica: 10, activation: 0, pollSeconds: 0.2}}
{fast_behavior(cooldown=0.5)}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: batch, namespace: {NAMESPACE}}}
spec:
  priority: 10
  maxReplicas: 20
  pools: [{{deployment: batch-a100, nodeClass: regular, gpuType: A100, gpusPerReplica: 2, startupSeconds: 1}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: BATCH, targetPerReplica: 10, activation: 0, pollSeconds: 0.2}}
{fast_behavior(cooldown=0.5)}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {{name: company}}
spec:
  companyMaxGpus: {CAP}
  clusters: [{{name: {CLUSTER}, gpuTypes: {{A100: 32}}}}]
"""


def _within_cap(fake: FakeKube) -> str | None:
    held = gpus_held(fake, GPUS)
    if held > CAP:
        replicas = {name: fake.deployment(NAMESPACE, name)["spec"]["replicas"] for name in GPUS}
        return f"{held} GPUs held > cap {CAP} after write #{len(fake.writes)}: {replicas}"
    return None


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    # Removed pods hold their GPUs for a while, as real ones do while they shut down.
    return {"terminating_seconds": 0.5}


@pytest.mark.parametrize("failing", [0.0, 0.1], ids=["healthy", "10pct-failing"])
@e2e_test
async def test_a_shared_company_cap_holds_at_every_write(
    world: World, tmp_path: Path, failing: float
) -> None:
    for i in range(4):
        world.fake.add_node(f"gpu-{i}", 8, labels=A100)
    for name, gpus in GPUS.items():
        world.fake.add_deployment(NAMESPACE, name, gpus_per_replica=gpus)
    world.fake.add_invariant(_within_cap)
    chat, batch = await world.queue(), await world.queue()
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES.replace("CHAT", chat.name).replace("BATCH", batch.name))
    timeout = 15 if failing else 6
    instance = await world.start("a", policies)
    await eventually(lambda: instance.controller.ready, 10, "ready")
    if failing:
        world.fake.faults.random_failures(failing, seed=7)

    def sizes() -> tuple[int, int]:
        return world.replicas("chat-a100"), world.replicas("batch-a100")

    # batch alone wants 10 replicas (20 GPUs): capped at 3 (6 GPUs).
    await batch.set_length(100)
    await eventually(lambda: sizes() == (0, 3), timeout, "batch at the cap")
    # chat (higher priority) wants 4: batch gives up 2 replicas, then chat gets 4.
    await chat.set_length(40)
    await eventually(lambda: sizes() == (4, 1), timeout, "chat takes its share")
    # chat drains: batch gets the GPUs back.
    await chat.set_length(0)
    await eventually(lambda: sizes() == (0, 3), timeout, "batch back at the cap")
    # chat wants 6: everything.
    await chat.set_length(60)
    await eventually(lambda: sizes() == (6, 0), timeout, "chat takes everything")
    await eventually(lambda: gpus_held(world.fake, GPUS) == CAP, timeout, "terminating pods gone")

    assert world.fake.violations == []
    assert len(world.scale_writes()) >= 5
    if failing:
        failed = [x for x in world.fake.writes if x.status >= 500]
        assert failed, "the fault injection did hit some writes"
