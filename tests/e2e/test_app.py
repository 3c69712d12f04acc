"""`autoscaler run` as the composition root wires it (`app._run`), against the fake API server: the
telemetry it starts serves the cluster's reachability beside the fleet gauges, and a stop request
ends the run cleanly (issue 12's per-cluster health, reported by whichever replica is asked)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from autoscaler.app import _run
from autoscaler.live import LiveAutoscaler
from autoscaler.telemetry import Telemetry
from tests.e2e.harness import CLUSTER, Queue, World, chat_policy, e2e_test
from tests.eventually import eventually


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        body: bytes = answer.read()
    return body.decode()


@e2e_test
async def test_the_run_command_reports_each_clusters_reachability(
    world: World, chat_queue: Queue, tmp_path: Path
) -> None:
    policy = tmp_path / "chat.yaml"
    policy.write_text(chat_policy(chat_queue.name))
    live = LiveAutoscaler(world.settings("a"), [policy], environ={"RABBITMQ_URL": world.rabbitmq.amqp_url})
    telemetry = Telemetry(port=0, host="127.0.0.1")
    live.observer = telemetry
    task = asyncio.create_task(_run(live, once=False, stop_signals=False, telemetry=telemetry))
    try:
        await eventually(lambda: live.controller is not None and live.controller.ready, 10, "ready")
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, _metrics, telemetry.port)
        assert f'autoscaler_cluster_up{{cluster="{CLUSTER}"}} 1' in body, body
        assert f'autoscaler_cluster_last_sync_age_seconds{{cluster="{CLUSTER}"}}' in body
    finally:
        live.stop()
        await asyncio.wait_for(task, 10)
