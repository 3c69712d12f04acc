"""A backlog on a real RabbitMQ queue scales a real Deployment through the fake API server: regular
pool first; when the regular nodes run out of GPUs the new pods stay Pending, and after the
regular pool's `pendingTimeoutSeconds` the virtual (SaladCloud) pool takes the rest; when the
backlog drains, the virtual replicas go first.

The regular nodes here carry no GPU product label, so the view cannot count their free GPUs
(GPU feature discovery not installed, say): the engine learns that regular capacity ran out the
way the pending timeout exists for, from pods the scheduler cannot place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.harness import CLUSTER, NAMESPACE, World, e2e_test, fast_behavior
from tests.eventually import eventually

PENDING_TIMEOUT = 2.0

POLICY = f"""
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  maxReplicas: 20
  pools:
    - {{deployment: chat-a100, nodeClass: regular, gpuType: A100, startupSeconds: 1,
       pendingTimeoutSeconds: {PENDING_TIMEOUT}}}
    - {{deployment: chat-salad, nodeClass: virtual, provider: salad, gpuType: RTX4090, startupSeconds: 1}}
  triggers:
    - {{name: backlog, type: rabbitmq, queue: QUEUE, targetPerReplica: 10, activation: 0,
       pollSeconds: 0.2}}
{fast_behavior(cooldown=1.0)}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {{name: company}}
spec:
  companyMaxGpus: 64
  clusters: [{{name: {CLUSTER}, gpuTypes: {{A100: 32, RTX4090: 32}}}}]
  providers: {{salad: {{maxGpus: 24}}}}
"""


@e2e_test
async def test_regular_first_then_pending_spills_to_virtual_and_virtual_drains_first(
    world: World, tmp_path: Path
) -> None:
    world.fake.add_node("gpu-1", 2)
    world.fake.add_node("gpu-2", 2)
    world.add_salad_node()
    world.fake.add_deployment(NAMESPACE, "chat-a100")
    world.add_salad_deployment("chat-salad")
    queue = await world.queue()
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY.replace("QUEUE", queue.name))
    instance = await world.start("a", policies)
    await eventually(lambda: instance.controller.ready, 10, "ready")

    # 35 messages / 10 per replica: 4 replicas, all on the regular nodes' 4 GPUs.
    await queue.set_length(35)
    await eventually(lambda: world.replicas("chat-a100") == 4, 5, "regular pool at 4")
    await eventually(
        lambda: (
            len([p for p in world.fake.pods_of(NAMESPACE, "chat-a100") if p["spec"].get("nodeName")]) == 4
        ),
        5,
        "4 regular pods bound",
    )
    assert world.replicas("chat-salad") == 0 and not world.scale_writes("chat-salad")

    # 95: 10 replicas. The regular pool is asked first; 6 of its pods fit nowhere.
    await queue.set_length(95)

    # Seen in the writes, not in the Deployment: the ask lasts only the pending timeout, which a
    # loaded machine can let pass between two looks.
    def asked_for_10() -> list[float]:
        return [w.at for w in world.scale_writes("chat-a100") if w.body["spec"]["replicas"] == 10]

    await eventually(lambda: bool(asked_for_10()), 10, "regular pool asked for 10")
    asked = asked_for_10()[0]

    def unbound() -> list[dict[str, Any]]:
        return [p for p in world.fake.pods_of(NAMESPACE, "chat-a100") if not p["spec"].get("nodeName")]

    # The ReplicaSet controller creates them a moment after the write; they stay unschedulable until
    # the autoscaler gives them up (the same transient as the ask: the spill may come first).
    await eventually(lambda: len(unbound()) == 6 or world.replicas("chat-salad") > 0, 10, "6 pods created")
    assert all(p["status"]["conditions"][0]["reason"] == "Unschedulable" for p in unbound())

    # After the pending timeout the 6 are given up and the virtual pool takes them.
    await eventually(
        lambda: (world.replicas("chat-a100"), world.replicas("chat-salad")) == (4, 6),
        PENDING_TIMEOUT + 5,
        "spill-over to the virtual pool",
    )
    first_salad = world.scale_writes("chat-salad")[0]
    # Pod creation stamps have whole seconds, so the timeout can fire up to 1 s early.
    assert first_salad.at - asked >= PENDING_TIMEOUT - 1.0
    await eventually(
        lambda: world.fake.deployment(NAMESPACE, "chat-salad")["status"].get("readyReplicas") == 6,
        5,
        "virtual replicas ready",
    )

    # 55: 6 replicas. Scale-in takes from the virtual pool; the regular one keeps its 4.
    downs_before = len(world.scale_writes())
    await queue.set_length(55)
    await eventually(lambda: world.replicas("chat-salad") == 2, 5, "virtual pool scaled in first")
    assert world.replicas("chat-a100") == 4
    assert all("chat-salad" in x.path for x in world.scale_writes()[downs_before:])

    # Drained: after the cooldown everything goes, the virtual pool no later than the regular.
    await queue.set_length(0)
    await eventually(
        lambda: (world.replicas("chat-a100"), world.replicas("chat-salad")) == (0, 0), 6, "scaled to zero"
    )
    last_regular = world.scale_writes("chat-a100")[-1]
    assert world.scale_writes("chat-salad")[-1].at <= last_regular.at
    events = world.fake.events_for(NAMESPACE, "chat-salad")
    assert events and all(e["reason"] == "GPUAutoscalerScaled" for e in events)
    assert instance.controller.stats.apply_errors == 0
