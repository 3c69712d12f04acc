"""The Events a live autoscaler posts name the pod that made the resize (`AUTOSCALER_POD_NAME`, from
the Downward API), not the OS hostname: with two replicas, `kubectl describe` must tell which one
acted, and in a pod whose hostname was set otherwise the two would differ."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.e2e.harness import NAMESPACE, Queue, World, chat_policy, e2e_test
from tests.eventually import eventually

POD_NAME = "gpu-autoscaler-6c9f7d5b8-q2x4z"


@e2e_test
async def test_resize_events_carry_the_configured_pod_name(
    world: World, chat_queue: Queue, tmp_path: Path
) -> None:
    assert socket.gethostname() != POD_NAME  # else the test could not tell the two apart
    policy = tmp_path / "chat.yaml"
    policy.write_text(chat_policy(chat_queue.name))
    await world.start("a", policy, pod_name=POD_NAME)
    await chat_queue.set_length(30)
    await eventually(lambda: bool(world.fake.events_for(NAMESPACE, "chat-a100")), 5, "an Event")
    (event,) = world.fake.events_for(NAMESPACE, "chat-a100")
    assert event["source"]["host"] == POD_NAME
    assert event["reportingInstance"] == POD_NAME
