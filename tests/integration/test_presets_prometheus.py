"""The inference presets (issue 13) against a real Prometheus: series backfilled with the metric and
label names vLLM, Triton, the DCGM exporter and TGI export (as Kubernetes discovery labels their
pods), read through a policy file, `load_config` and the Prometheus source. Each preset must read
the value of its own Deployment's pods, never a sibling Deployment's, another namespace's, or
another model's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.config import load_config
from autoscaler.config.compile import trigger_options
from autoscaler.config.models import PrometheusOptions
from autoscaler.engine.types import TriggerSpec
from autoscaler.sources.podload import PodLoadSource
from autoscaler.sources.prometheus import PrometheusSource
from tests.conftest import BACKFILL_AT, QUERY_AT
from tests.integration.servers import PrometheusServer, backfilled_prometheus

T = BACKFILL_AT


def _pod(deployment: str, suffix: str) -> str:
    """A pod name as a Deployment's ReplicaSet gives it."""
    return f"{deployment}-7d9f8c6b5-{suffix}"


def _gauges(name: str, samples: list[tuple[str, float]]) -> str:
    lines = [f"# TYPE {name} gauge"]
    lines += [f"{name}{{{labels}}} {value} {T}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def _counter(name: str, labels: str, per_15s: float) -> str:
    # Declared `unknown`: OpenMetrics would require a `_total` suffix on a counter, and Triton's
    # counters have none. The TSDB keeps no types, so queries see the series as Triton's.
    samples = [f"{name}{{{labels}}} {1000 + k * per_15s} {T - 120 + 15 * k}" for k in range(9)]
    return "\n".join(samples) + "\n"


VLLM_A = f'namespace="ml",pod="{_pod("chat", "aaaaa")}",container="vllm",model_name="llama",engine="0"'
VLLM_B = f'namespace="ml",pod="{_pod("chat", "bbbbb")}",container="vllm",model_name="llama",engine="0"'
# An older server (V0 engine, before vLLM 0.9): no engine label, the KV gauge under its old name only.
VLLM_C = f'namespace="ml",pod="{_pod("chat", "ccccc")}",container="vllm",model_name="llama"'
SIBLING = f'namespace="ml",pod="{_pod("chat-small", "ddddd")}",container="vllm",model_name="llama"'
ELSEWHERE = f'namespace="other",pod="{_pod("chat", "eeeee")}",container="vllm",model_name="llama"'

TRITON = 'namespace="vision",pod="{pod}",container="triton",model="{model}",version="1"'
TRITON_A = TRITON.format(pod=_pod("detect", "aaaaa"), model="yolo")
TRITON_B = TRITON.format(pod=_pod("detect", "bbbbb"), model="yolo")
TRITON_OTHER_MODEL = TRITON.format(pod=_pod("detect", "aaaaa"), model="resnet")
TRITON_SIBLING = TRITON.format(pod=_pod("detect-v2", "ccccc"), model="yolo")

DCGM = (
    'gpu="{gpu}",UUID="GPU-{gpu}c2f76b33-7953-256e-8f33",pci_bus_id="00000000:3{gpu}:00.0",'
    'device="nvidia{gpu}",modelName="NVIDIA L4",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="580.105.08",'
    'namespace="{ns}",pod="{pod}",container="{container}"'
)
DCGM_A = DCGM.format(gpu=0, ns="img", pod=_pod("sdxl", "aaaaa"), container="sdxl")
DCGM_B = DCGM.format(gpu=1, ns="img", pod=_pod("sdxl", "bbbbb"), container="sdxl")
DCGM_IDLE = DCGM.format(gpu=2, ns="", pod="", container="")  # a GPU no pod holds
DCGM_SIBLING = DCGM.format(gpu=3, ns="img", pod=_pod("sdxl-refiner", "ccccc"), container="sdxl")

TGI_A = f'namespace="ml",pod="{_pod("tgi-gemma", "aaaaa")}",container="tgi"'
TGI_B = f'namespace="ml",pod="{_pod("tgi-gemma", "bbbbb")}",container="tgi"'
TGI_ELSEWHERE = f'namespace="other",pod="{_pod("tgi-gemma", "ccccc")}",container="tgi"'

BACKFILL = (
    _gauges(
        "vllm:num_requests_waiting",
        [(VLLM_A, 3), (VLLM_B, 4), (VLLM_C, 0), (SIBLING, 100), (ELSEWHERE, 1000)],
    )
    + _gauges(
        "vllm:num_requests_running",
        [(VLLM_A, 10), (VLLM_B, 20), (VLLM_C, 30), (SIBLING, 100), (ELSEWHERE, 1000)],
    )
    # vLLM 0.9 exports both names with one value (0.10 too, with --show-hidden-metrics-for-version);
    # later releases only the new one; before 0.9, the old one only.
    + _gauges("vllm:kv_cache_usage_perc", [(VLLM_A, 0.5), (VLLM_B, 0.7), (SIBLING, 1.0), (ELSEWHERE, 1.0)])
    + _gauges("vllm:gpu_cache_usage_perc", [(VLLM_A, 0.5), (VLLM_C, 0.9), (SIBLING, 1.0), (ELSEWHERE, 1.0)])
    + _gauges(
        "nv_inference_pending_request_count",
        [(TRITON_A, 2), (TRITON_B, 5), (TRITON_OTHER_MODEL, 11), (TRITON_SIBLING, 50)],
    )
    + "# TYPE nv_inference_queue_duration_us unknown\n"
    + _counter("nv_inference_queue_duration_us", TRITON_A, 30_000)  # 15 ms per request
    + _counter("nv_inference_queue_duration_us", TRITON_B, 10_000)  # 5 ms per request
    + _counter("nv_inference_queue_duration_us", TRITON_OTHER_MODEL, 0)  # idle
    + _counter("nv_inference_queue_duration_us", TRITON_SIBLING, 900_000)
    + "# TYPE nv_inference_request_success unknown\n"
    + _counter("nv_inference_request_success", TRITON_A, 2)
    + _counter("nv_inference_request_success", TRITON_B, 2)
    + _counter("nv_inference_request_success", TRITON_OTHER_MODEL, 0)
    + _counter("nv_inference_request_success", TRITON_SIBLING, 1)
    + _gauges("DCGM_FI_DEV_GPU_UTIL", [(DCGM_A, 60), (DCGM_B, 90), (DCGM_IDLE, 0), (DCGM_SIBLING, 100)])
    + _gauges(
        "DCGM_FI_DEV_FB_USED",
        [(DCGM_A, 20_000), (DCGM_B, 30_000), (DCGM_IDLE, 0), (DCGM_SIBLING, 80_000)],
    )
    + _gauges("tgi_queue_size", [(TGI_A, 2), (TGI_B, 3), (TGI_ELSEWHERE, 40)])
    + _gauges("tgi_batch_current_size", [(TGI_A, 8), (TGI_B, 16), (TGI_ELSEWHERE, 64)])
    + "# EOF\n"
)

POLICY = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  pools:
    - {{deployment: {deployment}, nodeClass: regular, gpuType: L4}}
  triggers:
{triggers}
"""
VLLM_TRIGGERS = """\
    - {name: waiting, type: vllm, metric: waiting, deployment: chat}
    - {name: running, type: vllm, metric: running, deployment: chat, targetPerReplica: 32}
    - {name: kv, type: vllm, metric: kvCacheUsage, deployment: chat, selector: {model_name: llama}}
    - {name: kv-max, type: vllm, metric: kvCacheUsage, deployment: chat, aggregation: max}
    - {name: waiting-other, type: vllm, metric: waiting, deployment: chat, namespace: other}
    - {name: waiting-regex, type: vllm, metric: waiting, pod: "chat-.*"}
"""
TRITON_TRIGGERS = """\
    - {name: pending, type: triton, metric: pending, deployment: detect, selector: {model: yolo}}
    - {name: pending-all-models, type: triton, metric: pending, deployment: detect}
    - {name: queue-ms, type: triton, metric: queueDuration, deployment: detect, target: 20,
       selector: {model: yolo}}
    - {name: queue-idle, type: triton, metric: queueDuration, deployment: detect, target: 20,
       selector: {model: resnet}}
"""
DCGM_TRIGGERS = """\
    - {name: util, type: dcgm, metric: gpuUtil, deployment: sdxl}
    - {name: util-max, type: dcgm, metric: gpuUtil, deployment: sdxl, aggregation: max}
    - {name: memory, type: dcgm, metric: fbUsed, deployment: sdxl, target: 20000,
       selector: {modelName: NVIDIA L4, container: sdxl}}
"""
TGI_TRIGGERS = """\
    - {name: queue, type: tgi, metric: queueSize, deployment: tgi-gemma}
    - {name: batch, type: tgi, metric: batchSize, deployment: tgi-gemma, targetPerReplica: 16}
"""


@pytest.fixture(scope="module")
def prometheus_presets() -> Iterator[PrometheusServer]:
    """A Prometheus of its own, whose blocks hold the inference servers' series."""
    with backfilled_prometheus(BACKFILL, prefix="autoscaler-presets-") as server:
        yield server


def _triggers(tmp_path: Path, name: str, namespace: str, deployment: str, triggers: str) -> list[TriggerSpec]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY.format(name=name, namespace=namespace, deployment=deployment, triggers=triggers))
    config = load_config([path])
    assert config.errors == (), config.errors
    (workload,) = config.workloads
    return list(workload.triggers)


def _read_all(server: PrometheusServer, triggers: list[TriggerSpec]) -> dict[str, float | str | None]:
    async def go() -> dict[str, float | str | None]:
        values: dict[str, float | str | None] = {}
        for trigger in triggers:
            source = PrometheusSource(
                trigger.name,
                trigger_options(trigger, PrometheusOptions),
                server.url,
                environ={},
                clock=time.monotonic,
                query_params={"time": QUERY_AT},
            )
            try:
                reading = await source.read()
            finally:
                await source.close()
            values[trigger.name] = reading.value if reading.error is None else reading.error
        return values

    return asyncio.run(go())


def test_vllm_presets_read_their_deployments_pods_across_versions(
    prometheus_presets: PrometheusServer, tmp_path: Path
) -> None:
    values = _read_all(prometheus_presets, _triggers(tmp_path, "chat", "ml", "chat", VLLM_TRIGGERS))
    assert values == {
        "waiting": 7.0,  # 3 + 4 + 0: not chat-small's 100 nor namespace other's 1000
        "running": 60.0,
        # one value per pod, whichever name it exports: (0.5 + 0.7 + 0.9) / 3; counting pod A's
        # two names twice would read 0.65
        "kv": pytest.approx(0.7),
        "kv-max": 0.9,
        "waiting-other": 1000.0,
        # a regex is the user's to make precise: chat-.* takes chat-small's pods too
        "waiting-regex": 107.0,
    }


def test_triton_presets_read_pending_requests_and_queue_time(
    prometheus_presets: PrometheusServer, tmp_path: Path
) -> None:
    values = _read_all(prometheus_presets, _triggers(tmp_path, "detect", "vision", "detect", TRITON_TRIGGERS))
    assert values == {
        "pending": 7.0,  # 2 + 5 of model yolo; not detect-v2's 50
        "pending-all-models": 18.0,  # resnet's 11 as well
        # (30000 + 10000) us queued per (2 + 2) requests every 15 s: 10 ms per request
        "queue-ms": pytest.approx(10.0),
        # counters that did not move: no queueing, a real 0 (not 0/0)
        "queue-idle": 0.0,
    }


def test_dcgm_presets_read_the_gpus_of_the_deployments_pods(
    prometheus_presets: PrometheusServer, tmp_path: Path
) -> None:
    values = _read_all(prometheus_presets, _triggers(tmp_path, "sdxl", "img", "sdxl", DCGM_TRIGGERS))
    # Not the GPU no pod holds (0), nor sdxl-refiner's (100).
    assert values == {"util": 75.0, "util-max": 90.0, "memory": 25_000.0}


def test_tgi_presets_read_queue_and_batch(prometheus_presets: PrometheusServer, tmp_path: Path) -> None:
    values = _read_all(prometheus_presets, _triggers(tmp_path, "gemma", "ml", "tgi-gemma", TGI_TRIGGERS))
    assert values == {"queue": 5.0, "batch": 24.0}


def test_a_deployment_without_series_is_an_error_not_zero(
    prometheus_presets: PrometheusServer, tmp_path: Path
) -> None:
    # A workload scaled to zero (or a wrong deployment name): no series, so no reading.
    triggers = "    - {name: waiting, type: vllm, metric: waiting, deployment: absent}\n"
    values = _read_all(prometheus_presets, _triggers(tmp_path, "absent", "ml", "absent", triggers))
    assert isinstance(values["waiting"], str) and "empty result" in values["waiting"]


# ---- idle-first scale-in: the per-pod load, through a policy file's spec.scaleIn.podLoad ----

SCALE_IN_POLICY = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: ml}
spec:
  pools:
    - {deployment: chat, nodeClass: regular, gpuType: L4}
  triggers:
    - {name: waiting, type: vllm, metric: waiting, deployment: chat}
  scaleIn:
    podLoad: POD_LOAD
"""
CHAT_PODS = [_pod("chat", s) for s in ("aaaaa", "bbbbb", "ccccc")]


def _pod_loads(server: PrometheusServer, tmp_path: Path, pod_load: str, pods: list[str]) -> dict[str, float]:
    path = tmp_path / "scale-in.yaml"
    path.write_text(SCALE_IN_POLICY.replace("POD_LOAD", pod_load))
    config = load_config([path])
    assert config.errors == (), config.errors
    (workload,) = config.workloads

    async def go() -> dict[str, float]:
        source = PodLoadSource(
            "ml/chat", workload.pod_load, server.url, environ={}, query_params={"time": QUERY_AT}
        )
        try:
            return await source.read("ml", pods)
        finally:
            await source.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "pod_load",
    [
        "{type: vllm, metric: running}",
        "{type: prometheus, query: 'sum by (pod, namespace) (vllm:num_requests_running{pod=~\"$pods\"})'}",
    ],
)
def test_the_pod_load_reads_each_of_the_pools_pods_and_no_other(
    prometheus_presets: PrometheusServer, tmp_path: Path, pod_load: str
) -> None:
    # The chat pods' running requests, by pod: not chat-small's, nor the same name in namespace other.
    loads = _pod_loads(prometheus_presets, tmp_path, pod_load, CHAT_PODS)
    assert loads == dict(zip(CHAT_PODS, (10.0, 20.0, 30.0), strict=True))


def test_a_pod_without_a_series_has_no_load_not_zero(
    prometheus_presets: PrometheusServer, tmp_path: Path
) -> None:
    new_pod = _pod("chat", "fffff")  # just started: its server exports nothing yet
    loads = _pod_loads(prometheus_presets, tmp_path, "{type: vllm, metric: running}", [*CHAT_PODS, new_pod])
    assert new_pod not in loads and set(loads) == set(CHAT_PODS)
