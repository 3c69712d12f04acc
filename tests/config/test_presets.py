"""GPU-inference trigger presets (issue 13): each preset expands to the query over the metric and
label names its server exports, label values cannot break out of their PromQL strings, and a preset
compiles into an ordinary prometheus trigger (so the source and the engine are unchanged)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from autoscaler.config import load_config
from autoscaler.config.access import SecretAccess
from autoscaler.config.compile import compile_trigger
from autoscaler.config.models import PrometheusOptions, Trigger
from autoscaler.config.presets import PRESETS, Scope, deployment_pod_regex, preset_query, promql_string
from autoscaler.engine.types import MetricType

ROOT = Path(__file__).resolve().parents[2]
POD = 'pod=~"chat-[a-z0-9]+-[a-z0-9]+"'
ML = f'namespace="ml",{POD}'


def _trigger(**fields: Any) -> Any:
    return TypeAdapter(Trigger).validate_python({"name": "t", "deployment": "chat", **fields})


# (fields, query): one case per metric of every server, with the exact series names they export.
EXPANSIONS = [
    # vLLM: counts are summed over the Deployment's pods
    ({"type": "vllm", "metric": "waiting"}, f"sum(vllm:num_requests_waiting{{{ML}}})"),
    (
        {"type": "vllm", "metric": "running", "targetPerReplica": 32},
        f"sum(vllm:num_requests_running{{{ML}}})",
    ),
    # the KV-cache gauge under its V1 name (vLLM 0.9+), else its old name (before 0.9)
    (
        {"type": "vllm", "metric": "kvCacheUsage"},
        f"avg(vllm:kv_cache_usage_perc{{{ML}}} or vllm:gpu_cache_usage_perc{{{ML}}})",
    ),
    # the hottest pod instead of the mean
    (
        {"type": "vllm", "metric": "kvCacheUsage", "aggregation": "max"},
        f"max(vllm:kv_cache_usage_perc{{{ML}}} or vllm:gpu_cache_usage_perc{{{ML}}})",
    ),
    # Triton: pending requests, and queued milliseconds per successful request over the window
    ({"type": "triton", "metric": "pending"}, f"sum(nv_inference_pending_request_count{{{ML}}})"),
    (
        {"type": "triton", "metric": "queueDuration", "target": 20, "rateWindow": "2m"},
        f"sum(rate(nv_inference_queue_duration_us{{{ML}}}[2m])) / "
        f"clamp_min(sum(rate(nv_inference_request_success{{{ML}}}[2m])), 1e-9) / 1000",
    ),
    # DCGM exporter: per-pod GPU series (pod attribution), averaged
    ({"type": "dcgm", "metric": "gpuUtil"}, f"avg(DCGM_FI_DEV_GPU_UTIL{{{ML}}})"),
    ({"type": "dcgm", "metric": "fbUsed", "target": 60000}, f"avg(DCGM_FI_DEV_FB_USED{{{ML}}})"),
    # TGI router gauges
    ({"type": "tgi", "metric": "queueSize"}, f"sum(tgi_queue_size{{{ML}}})"),
    ({"type": "tgi", "metric": "batchSize", "targetPerReplica": 16}, f"sum(tgi_batch_current_size{{{ML}}})"),
]


@pytest.mark.parametrize(
    ("fields", "query"), EXPANSIONS, ids=[f"{f['type']}.{f['metric']}" for f, _ in EXPANSIONS]
)
def test_each_preset_expands_to_its_servers_query(fields: dict[str, Any], query: str) -> None:
    assert _trigger(**fields).source_options("ml").query == query


def test_every_metric_of_every_server_has_an_expansion_case() -> None:
    covered = {(f["type"], f["metric"]) for f, _ in EXPANSIONS}
    assert covered == {(server, metric) for server, metrics in PRESETS.items() for metric in metrics}


def test_the_scope_comes_from_the_trigger_then_the_policy() -> None:
    # The policy's namespace unless the trigger names one; several Deployments; a pod regex;
    # extra label equalities sorted; renamed namespace and pod labels (DCGM scraped without
    # honor_labels keeps the GPU pod's labels as exported_*).
    assert _trigger(type="vllm", metric="waiting").source_options("ml").query == (
        f"sum(vllm:num_requests_waiting{{{ML}}})"
    )
    named = _trigger(type="vllm", metric="waiting", namespace="serving", selector={"model_name": "llama"})
    assert named.source_options("ml").query == (
        f'sum(vllm:num_requests_waiting{{namespace="serving",{POD},model_name="llama"}})'
    )
    several = TypeAdapter(Trigger).validate_python(
        {"name": "t", "type": "tgi", "metric": "queueSize", "deployments": ["chat-a100", "chat.l4"]}
    )
    assert several.source_options("ml").query == (
        'sum(tgi_queue_size{namespace="ml",pod=~"(?:chat-a100|chat\\\\.l4)-[a-z0-9]+-[a-z0-9]+"})'
    )
    by_regex = TypeAdapter(Trigger).validate_python(
        {
            "name": "t",
            "type": "dcgm",
            "metric": "gpuUtil",
            "pod": "chat-.*",
            "selector": {"modelName": "NVIDIA H100 80GB HBM3", "container": "vllm"},
            "namespaceLabel": "exported_namespace",
            "podLabel": "exported_pod",
        }
    )
    assert by_regex.source_options("ml").query == (
        'avg(DCGM_FI_DEV_GPU_UTIL{exported_namespace="ml",exported_pod=~"chat-.*",'
        'container="vllm",modelName="NVIDIA H100 80GB HBM3"})'
    )


def test_the_deployment_regex_matches_its_pods_and_not_a_siblings() -> None:
    pattern = re.compile(deployment_pod_regex(["chat", "llm.v2"]))
    assert pattern.fullmatch("chat-7d9f8c6b5-x2x9k")
    assert pattern.fullmatch("llm.v2-5c8d7b9f4-abcde")
    assert not pattern.fullmatch("chat-small-7d9f8c6b5-x2x9k")  # Deployment chat-small
    assert not pattern.fullmatch("llmxv2-5c8d7b9f4-abcde")  # '.' is literal
    assert not pattern.fullmatch("chat-0")  # a StatefulSet's pod


# (label value, PromQL literal): a value that tries to close the string and add a matcher or an
# operator stays inside the string.
ESCAPES = [
    ("llama-3-8b", '"llama-3-8b"'),
    ('x"} or vector(1) or {a="', '"x\\"} or vector(1) or {a=\\""'),
    ("C:\\models\\", '"C:\\\\models\\\\"'),
    ('\\"', '"\\\\\\""'),
]


@pytest.mark.parametrize(("value", "literal"), ESCAPES)
def test_label_values_are_quoted_and_escaped(value: str, literal: str) -> None:
    assert promql_string(value) == literal
    query = preset_query("tgi", "queueSize", Scope(namespace="ml", selector={"model": value}))
    assert query == f'sum(tgi_queue_size{{namespace="ml",model={literal}}})'


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "\x00", "tab\there", "\x7f"])
def test_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        promql_string(value)
    with pytest.raises(ValidationError, match="control character"):
        _trigger(type="vllm", metric="waiting", selector={"model_name": value})


def test_a_preset_compiles_into_a_prometheus_trigger() -> None:
    # Counts: AverageValue per replica, with the metric's default; levels: Value, held for the
    # workload. The options are exactly PrometheusOptions, connection settings carried over.
    waiting = compile_trigger(
        _trigger(type="vllm", metric="waiting", serverAddress="http://prom:9090", pollSeconds=5), "ml"
    )
    assert (waiting.type, waiting.metric_type) == ("prometheus", MetricType.AVERAGE_VALUE)
    assert waiting.target == 5.0
    assert type(waiting.options) is PrometheusOptions
    assert waiting.options.server_address == "http://prom:9090" and waiting.options.poll_seconds == 5
    assert waiting.options.query == f"sum(vllm:num_requests_waiting{{{ML}}})"
    kv = compile_trigger(_trigger(type="vllm", metric="kvCacheUsage", activation=0.1), "ml")
    assert (kv.type, kv.metric_type, kv.target, kv.activation) == ("prometheus", MetricType.VALUE, 0.8, 0.1)
    util = compile_trigger(_trigger(type="dcgm", metric="gpuUtil", target=70), "ml")
    assert (util.metric_type, util.target) == (MetricType.VALUE, 70.0)
    running = compile_trigger(_trigger(type="vllm", metric="running", targetPerReplica=48), "ml")
    assert (running.metric_type, running.target) == (MetricType.AVERAGE_VALUE, 48.0)
    # The options compare by value, as the live source set keys sources by them (`live.SourceSet`).
    assert waiting.options == PrometheusOptions(
        query=waiting.options.query, server_address="http://prom:9090", poll_seconds=5.0
    )


def test_a_preset_with_credentials_is_checked_like_a_prometheus_trigger() -> None:
    with pytest.raises(ValidationError, match="required with authModes: bearer"):
        _trigger(type="vllm", metric="waiting", authModes="bearer")


def test_the_operators_prometheus_rules_apply_to_presets(tmp_path: Path) -> None:
    # Credentials go only to a Prometheus the operator names, whatever the trigger type.
    path = tmp_path / "chat.yaml"
    path.write_text(
        POLICY
        + "  triggers:\n"
        + "    - {name: waiting, type: vllm, metric: waiting, deployment: chat,\n"
        + "       serverAddress: 'http://collector.example:8080', authModes: bearer,\n"
        + "       tokenFromEnv: PROMETHEUS_TOKEN}\n"
    )
    config = load_config([path], secret_access=SecretAccess())
    assert [(e.line, e.field) for e in config.errors] == [(9, "spec.triggers[0].serverAddress")]
    assert config.errors[0].message.startswith("credentials (authModes) go only to a Prometheus")


def test_the_schema_describes_the_presets() -> None:
    from autoscaler.config.models import json_schema

    definitions = json_schema()["$defs"]
    vllm_metrics = definitions["VllmTrigger"]["properties"]["metric"]["enum"]
    assert vllm_metrics == ["waiting", "running", "kvCacheUsage"]
    assert definitions["TritonTrigger"]["properties"]["metric"]["enum"] == ["pending", "queueDuration"]
    assert "metricType" not in definitions["DcgmTrigger"]["properties"]  # follows from the metric


# The README's preset examples are trigger lists a user pastes into a policy: each must validate.
README_HEADING = "## GPU-inference triggers"
POLICY = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: ml}
spec:
  pools:
    - {deployment: chat, nodeClass: regular, gpuType: A100}
"""


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(README_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_readme_shows_each_server_and_every_example_validates(tmp_path: Path) -> None:
    examples = _readme_examples()
    assert {server for server in PRESETS if any(f"type: {server}" in e for e in examples)} == set(PRESETS)
    for i, example in enumerate(examples):
        path = tmp_path / f"example-{i}.yaml"
        path.write_text(POLICY + "".join(f"  {line}\n" for line in example.splitlines()))
        config = load_config([path])
        assert [str(e) for e in config.errors] == [], example
