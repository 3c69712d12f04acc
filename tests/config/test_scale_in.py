"""`spec.scaleIn.podLoad` (idle-first scale-in): what validates, what `autoscaler validate` says
about wrong combinations, and the per-pod query each form compiles to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from autoscaler.config import load_config
from autoscaler.config.access import SecretAccess
from autoscaler.config.models import PodLoadOptions

POLICY = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: ml}
spec:
  pools:
    - {deployment: chat, nodeClass: regular, gpuType: A100}
  triggers:
    - {name: waiting, type: vllm, metric: waiting, deployment: chat}
  scaleIn:
    podLoad: """


def _load(tmp_path: Path, pod_load: str, access: SecretAccess | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "chat.yaml"
    path.write_text(POLICY + pod_load + "\n")
    return load_config([path]) if access is None else load_config([path], secret_access=access)


@pytest.mark.parametrize(
    ("pod_load", "query"),
    [
        (
            "{type: vllm, metric: running}",
            'sum by (pod) (vllm:num_requests_running{namespace="ml",pod=~"$pods"})',
        ),
        (
            "{type: dcgm, metric: gpuUtil, podLabel: exported_pod}",
            'avg by (exported_pod) (DCGM_FI_DEV_GPU_UTIL{namespace="ml",exported_pod=~"$pods"})',
        ),
        (
            '{type: prometheus, query: \'sum by (pod) (inflight{namespace="$namespace", pod=~"$pods"})\'}',
            'sum by (pod) (inflight{namespace="ml", pod=~"$pods"})',
        ),
    ],
)
def test_each_form_compiles_to_a_query_by_pod(tmp_path: Path, pod_load: str, query: str) -> None:
    config = _load(tmp_path, pod_load)
    assert [str(e) for e in config.errors] == []
    options = config.workloads[0].pod_load
    assert isinstance(options, PodLoadOptions)
    assert options.query == query
    # The whole budget bounds the query too.
    assert options.timeout_seconds == options.budget_seconds == 2.0


def test_idle_first_is_off_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text(POLICY.rsplit("  scaleIn:", 1)[0])
    assert load_config([path]).workloads[0].pod_load is None


@pytest.mark.parametrize(
    ("pod_load", "field", "message"),
    [
        ("{type: prometheus}", "query", "required with type: prometheus"),
        ("{type: prometheus, query: up, metric: running}", "metric", "applies to the presets"),
        ("{type: vllm}", "metric", "required with type vllm: one of waiting, running, kvCacheUsage"),
        ("{type: vllm, metric: pending}", "metric", "'pending' is not a vllm metric"),
        ("{type: vllm, metric: running, query: up}", "query", "type vllm writes its own query"),
        ("{type: vllm, metric: running, pollSeconds: 5}", "pollSeconds", "does not apply"),
        ("{type: vllm, metric: running, timeoutSeconds: 5}", "timeoutSeconds", "within budgetSeconds"),
        ("{type: vllm, metric: running, budgetSeconds: 60}", "budgetSeconds", "must be at most 30"),
        ("{type: rabbitmq, queue: jobs}", "type", "'prometheus', 'vllm'"),
    ],
)
def test_wrong_combinations_are_reported_at_their_field(
    tmp_path: Path, pod_load: str, field: str, message: str
) -> None:
    config = _load(tmp_path, pod_load)
    assert config.errors, pod_load
    assert any(
        e.field.startswith(f"spec.scaleIn.podLoad.{field}") and message in e.message for e in config.errors
    ), [(e.field, e.message) for e in config.errors]


def test_the_operators_prometheus_rules_apply_to_the_pod_load(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "{type: vllm, metric: running, serverAddress: 'http://collector.example:8080', authModes: bearer,"
        " tokenFromEnv: PROMETHEUS_TOKEN}",
        SecretAccess(),
    )
    assert [e.field for e in config.errors] == ["spec.scaleIn.podLoad.serverAddress"]
    assert config.errors[0].message.startswith("credentials (authModes) go only to a Prometheus")


def test_the_readme_examples_validate(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Idle-first scale-in and graceful drain", 1)[1].split("\n## ", 1)[0]
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    pod_loads = [e["spec"]["scaleIn"]["podLoad"] for e in examples if "scaleIn" in e["spec"]]
    assert [p["type"] for p in pod_loads] == ["vllm", "prometheus"]
    for pod_load in pod_loads:
        config = _load(tmp_path, json.dumps(pod_load))  # JSON is YAML
        assert [str(e) for e in config.errors] == [], pod_load
