"""The whole loop against a real broker: a burst scales a workload within a poll or two, while a
workload whose trigger is broken (missing queue, no Prometheus address) holds and fails alone."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aio_pika
import pytest

from autoscaler.cli import main
from autoscaler.config import load_config
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.settings import Settings
from autoscaler.sources import Source, SourceContext, build_source
from tests.eventually import eventually
from tests.integration.servers import RabbitMQServer

POLICIES = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: inference}}
spec:
  maxReplicas: 40
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: {queue}, targetPerReplica: 10, activation: 0,
       pollSeconds: 0.2}}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: batch, namespace: inference}}
spec:
  minReplicas: 2
  pools: [{{deployment: batch-a100, nodeClass: regular, gpuType: A100}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: does-not-exist-{queue}, pollSeconds: 0.2}}
    - {{name: latency, type: prometheus, query: 'sum(up)', target: 1}}
  fallback: {{failureThreshold: 1, behavior: hold}}
"""


async def _publish(server: RabbitMQServer, queue: str, n: int) -> None:
    connection = await aio_pika.connect(server.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for i in range(n):
            await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=queue)


def _policies(tmp_path: Path, queue: str) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES.format(queue=queue))
    return path


def test_a_burst_scales_up_while_a_broken_workload_holds(rabbitmq: RabbitMQServer, tmp_path: Path) -> None:
    queue = f"chat-{uuid.uuid4().hex[:8]}"
    config = load_config([_policies(tmp_path, queue)])
    assert config.ok, config.errors

    async def scenario() -> None:
        await _publish(rabbitmq, queue, 0)
        context = SourceContext({"RABBITMQ_URL": rabbitmq.amqp_url})
        sources: dict[TriggerKey, Source] = {
            TriggerKey(w.name, t.name): build_source(w, t, Settings(), context=context)
            for w in config.workloads
            for t in w.triggers
        }
        cluster = DryRunCluster(config.workloads)
        controller = Controller(config.workloads, config.limits, sources, cluster, cluster, resync_seconds=30)
        task = asyncio.create_task(controller.run())
        try:
            await eventually(lambda: controller.stats.reconciles > 0, 15.0, "the first reconcile")
            published = time.monotonic()

            def left() -> float:  # of the 5 s from the burst's first message
                return 5.0 - (time.monotonic() - published)

            await _publish(rabbitmq, queue, 45)
            await eventually(
                lambda: any(a.workload == "chat" and a.scaled_up for a in cluster.history),
                left(),
                "a scale-up",
            )
            # 45 messages / 10 per replica wants 5; HPA's default rate allows +4 pods per 15 s from 0.
            # (The first poll may catch the burst half-published: the second completes it.)
            await eventually(lambda: cluster.sizes["inference/chat-a100"] == 4, left(), "chat-a100 at 4")
            batch = controller.decisions["batch"]
            assert set(batch.failed_triggers) == {"backlog", "latency"}
            assert cluster.sizes["inference/batch-a100"] == 2  # held at its size, not dropped
            error = controller.readings["batch"]["backlog"].error
            assert error is not None and "not found" in error and "guest" not in error
        finally:
            controller.stop()
            await task
            for source in sources.values():
                await source.close()
            await context.aclose()

    asyncio.run(scenario())


def test_run_dry_run_once_reads_the_live_queue(
    rabbitmq: RabbitMQServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = f"chat-{uuid.uuid4().hex[:8]}"
    asyncio.run(_publish(rabbitmq, queue, 25))
    monkeypatch.setenv("RABBITMQ_URL", rabbitmq.amqp_url)
    monkeypatch.setenv("AUTOSCALER_LOG_FORMAT", "json")
    assert main(["run", "--dry-run", "--once", "--policies", str(_policies(tmp_path, queue))]) == 0
    captured = capsys.readouterr()
    assert "inference/chat-a100=3" in captured.out  # 25 / 10 per replica
    assert '"msg": "scale (dry run)"' in captured.err and '"workload": "chat"' in captured.err
    assert "guest:guest" not in captured.err + captured.out
