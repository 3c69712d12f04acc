"""Whatever a policy file contains, load_config answers with errors, never an exception.

Four generators, from blind to well-aimed: any text, any bytes, YAML-shaped nested data with
document-like keys, and a valid shipped file with one part replaced at random.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.config import ConfigError, LoadedConfig, load_config

# A valid pair of documents touching every trigger type, the policy options, behavior and limits.
EXAMPLE: list[Any] = list(
    yaml.safe_load_all(
        """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: llm-chat, namespace: inference}
spec:
  priority: 100
  maxReplicas: 40
  pools:
    - {deployment: chat-a100, nodeClass: regular, gpuType: A100, costPerGpuHour: 2.0}
    - {deployment: chat-salad, nodeClass: virtual, provider: salad, gpuType: RTX4090,
       startupSeconds: 300, startupP95Seconds: 1800, relativeThroughput: 0.5, maxReplicas: 30}
  triggers:
    - {name: backlog, type: rabbitmq, queue: chat, targetPerReplica: 10, activation: 1}
    - {name: arrivals, type: rabbitmq, queues: [chat], mode: MessageRate, protocol: http,
       targetPerReplica: 1.2}
    - {name: ttft, type: prometheus, query: 'sum(x)', target: 0.5, metricType: Value,
       authModes: bearer, tokenFromEnv: TOKEN, customHeaders: {X-Org: ml}}
  policy: {type: queue-sla, maxWaitSeconds: 30, rateTrigger: arrivals, serviceRatePerReplica: 1.2}
  behavior:
    scaleUp: {policies: [{type: Pods, value: 4, periodSeconds: 15}], selectPolicy: Max}
    scaleDown: {stabilizationSeconds: 300}
  fallback: {failureThreshold: 3, behavior: static, replicas: 2}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {name: company}
spec:
  companyMaxGpus: 64
  clusters: [{name: vks-1, gpuTypes: {A100: 32, RTX4090: 8}}]
  providers: {salad: {maxGpus: 24}}
"""
    )
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys the models know, so random mappings often reach deep into validation.
KEYS = st.sampled_from(
    [
        "apiVersion", "kind", "metadata", "spec", "name", "namespace", "pools", "triggers", "policy",
        "behavior", "fallback", "type", "deployment", "nodeClass", "gpuType", "queue", "queues", "mode",
        "protocol", "target", "targetPerReplica", "clusters", "gpuTypes", "providers", "maxGpus",
        "scaleUp", "scaleDown", "policies", "python", "minReplicas", "maxReplicas", "cluster", "provider",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**20)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["gpu-autoscaler/v1alpha1", "ScalingPolicy", "ParallelismLimits", "rabbitmq", "prometheus"]
    )
)
TREES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


def load_bytes(content: bytes) -> LoadedConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(content)
        config = load_config([path])
    assert all(isinstance(e, ConfigError) and e.line >= 0 and str(e) for e in config.errors)
    return config


@FUZZ
@given(st.text())
def test_any_text(text: str) -> None:
    load_bytes(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary())
def test_any_bytes(content: bytes) -> None:
    load_bytes(content)


@FUZZ
@given(st.lists(TREES, min_size=1, max_size=3))
def test_yaml_shaped_documents(documents: list[Any]) -> None:
    load_bytes(yaml.safe_dump_all(documents).encode())


@FUZZ
@given(
    st.lists(st.dictionaries(KEYS, TREES, max_size=4), min_size=1, max_size=2),
    st.sampled_from(["ScalingPolicy", "ParallelismLimits"]),
)
def test_documents_with_the_right_header(specs: list[dict[str, Any]], kind: str) -> None:
    documents = [
        {"apiVersion": "gpu-autoscaler/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
        for spec in specs
    ]
    load_bytes(yaml.safe_dump_all(documents).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


# Inside the documents: replacing a whole document is what the generators above already do.
DOCUMENT_PATHS = [p for p in _paths(EXAMPLE) if len(p) > 1]


@FUZZ
@given(st.sampled_from(DOCUMENT_PATHS), TREES, st.booleans())
def test_a_valid_document_with_one_part_replaced(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    documents = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    parent = documents
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    config = load_bytes(yaml.safe_dump_all(documents).encode())
    # Either the change was harmless or it is reported; a broken document yields no workload.
    assert config.errors or len(config.workloads) == 1


def test_the_fuzzed_example_is_valid() -> None:
    assert load_bytes(yaml.safe_dump_all(EXAMPLE).encode()).errors == ()
