"""`autoscaler run --dry-run` without a cluster runs the same composition as the live controller
(issue 11): /metrics and /healthz are served, and policy files are hot-reloaded."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

from autoscaler.engine.types import TriggerSpec, WorkloadSpec
from autoscaler.live import LiveAutoscaler
from autoscaler.settings import Settings
from autoscaler.sources import SourceContext
from autoscaler.sources.base import Source
from autoscaler.telemetry import Telemetry
from tests.eventually import eventually
from tests.live.fakes import FakeSource

POLICY = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: {name}, namespace: ml}}
spec:
  maxReplicas: 20
  pools: [{{deployment: {name}-a100, nodeClass: regular, gpuType: A100}}]
  triggers: [{{name: backlog, type: rabbitmq, queue: jobs, targetPerReplica: 10}}]
"""


def _fixed(
    workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
) -> Source:
    return FakeSource(45.0, clock=time.time)  # 45 waiting / 10 per replica: 5 replicas wanted


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return str(response.read().decode())


def test_an_in_memory_dry_run_serves_metrics_and_reloads_its_policy_files(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(name="chat"))

    async def scenario() -> None:
        telemetry = Telemetry(port=0, host="127.0.0.1")
        await telemetry.start()
        settings = Settings(dry_run=True, policy_reload_seconds=0.1, leader_election=False)
        live = LiveAutoscaler(settings, [path], observer=telemetry, build_source=_fixed, in_memory=True)
        await live.start()
        task = asyncio.create_task(live.run())
        try:
            await eventually(
                lambda: 'deployment="chat-a100"' in _metrics(telemetry.port), 10, "chat's gauges"
            )
            body = _metrics(telemetry.port)
            assert "autoscaler_pool_desired_replicas{" in body and 'deployment="chat-a100"' in body
            with urllib.request.urlopen(f"http://127.0.0.1:{telemetry.port}/healthz", timeout=2) as ok:
                assert ok.status == 200
            # The in-memory cluster obeyed the plan (the HPA's default rate: 4 pods in the first 15 s).
            assert live.memory is not None and live.memory.sizes["ml/chat-a100"] == 4

            path.write_text(POLICY.format(name="chat") + "---" + POLICY.format(name="batch"))
            memory = live.memory
            await eventually(
                lambda: memory.sizes.get("ml/batch-a100", 0) == 4,
                10,
                "the reload reaching the in-memory cluster",
            )
            assert live.memory.sizes["ml/chat-a100"] == 4  # kept across the reload
            assert 'deployment="batch-a100"' in _metrics(telemetry.port)
        finally:
            live.stop()
            await task
            await live.close()
            await telemetry.stop()

    asyncio.run(scenario())
