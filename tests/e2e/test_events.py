"""The Events a live autoscaler posts name the pod that made the resize (`AUTOSCALER_POD_NAME`, from
the Downward API), not the OS hostname: with two replicas, `kubectl describe` must tell which one
acted, and in a pod whose hostname was set otherwise the two would differ."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.e2e.harness import NAMESPACE, chat_policy, run, world
from tests.eventually import eventually
from tests.integration.servers import RabbitMQServer

POD_NAME = "gpu-autoscaler-6c9f7d5b8-q2x4z"


def test_resize_events_carry_the_configured_pod_name(rabbitmq: RabbitMQServer, tmp_path: Path) -> None:
    assert socket.gethostname() != POD_NAME  # else the test could not tell the two apart

    async def scenario() -> None:
        async with world(tmp_path, rabbitmq) as w:
            queue = await w.one_chat_pool()
            policy = tmp_path / "chat.yaml"
            policy.write_text(chat_policy(queue.name))
            try:
                await w.start("a", policy, pod_name=POD_NAME)
                await queue.set_length(30)
                await eventually(lambda: bool(w.fake.events_for(NAMESPACE, "chat-a100")), 5, "an Event")
                (event,) = w.fake.events_for(NAMESPACE, "chat-a100")
                assert event["source"]["host"] == POD_NAME
                assert event["reportingInstance"] == POD_NAME
            finally:
                await queue.close()

    run(scenario)
