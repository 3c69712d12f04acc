"""Every number a policy file holds is bounded: out of range is a located error, and whatever
passes validation, the engine computes with without overflow (issue 10: `gpusPerReplica: 10^400`
validated, then raised OverflowError in `limits.allocate`, in the live loop)."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from autoscaler.config import LoadedConfig, load_config
from autoscaler.config.models import json_schema
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, PoolStatus, Reading
from autoscaler.policies.registry import BUILTINS

# One field per line, so that each number has a line of its own.
ALL_NUMBERS = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: ml}
spec:
  priority: 100
  weight: 1.0
  minReplicas: 0
  maxReplicas: 40
  pools:
    - deployment: chat-a100
      nodeClass: regular
      gpuType: A100
      gpusPerReplica: 1
      costPerGpuHour: 2.0
      startupSeconds: 90
      startupP95Seconds: 300
      relativeThroughput: 1.0
      maxReplicas: 20
      pendingTimeoutSeconds: 120
  triggers:
    - name: backlog
      type: rabbitmq
      queue: chat
      targetPerReplica: 10
      activation: 1
      pollSeconds: 1
    - name: ttft
      type: prometheus
      query: sum(x)
      target: 0.5
      timeoutSeconds: 5
      pollSeconds: 15
  policy: {type: target, tolerance: 0.1}
  behavior:
    scaleUp:
      stabilizationSeconds: 0
      policies: [{type: Pods, value: 4, periodSeconds: 15}]
    scaleDown: {stabilizationSeconds: 300}
    cooldownSeconds: 300
  fallback: {failureThreshold: 3, behavior: static, replicas: 2}
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {name: company}
spec:
  companyMaxGpus: 64
  clusters: [{name: c1, gpuTypes: {A100: 32}}]
  providers: {salad: {maxGpus: 24}}
"""
POLICY_LINE = 33

# The policy block of each built-in policy, with every numeric option set.
POLICY_BLOCKS: dict[str, str] = {
    "target": "{type: target, tolerance: 0.1}",
    "queue-sla": "{type: queue-sla, maxWaitSeconds: 30, serviceRatePerReplica: 1.2, headroom: 0.1,"
    " lookaheadSeconds: 120, holdSeconds: 600}",
    "keda-hpa": "{type: keda-hpa, targetPerReplica: 10, activation: 1, pollingIntervalSeconds: 30,"
    " syncPeriodSeconds: 15, tolerance: 0.1, cooldownSeconds: 300, downscaleStabilizationSeconds: 300}",
    "knative-kpa": "{type: knative-kpa, containerConcurrency: 8, targetUtilization: 0.7,"
    " stableWindowSeconds: 60, panicWindowPercentage: 10, panicThresholdPercentage: 200,"
    " maxScaleUpRate: 1000, maxScaleDownRate: 2, tickSeconds: 2, scaleToZeroGracePeriodSeconds: 30}",
    "static": "{type: static, replicas: 3}",
}

HUGE = "1" + "0" * 400


def _with_policy(policy: str) -> str:
    lines = ALL_NUMBERS.splitlines(keepends=True)
    lines[POLICY_LINE - 1] = f"  policy: {POLICY_BLOCKS[policy]}\n"
    return "".join(lines)


def _replace(text: str, line: int, key: str, value: str) -> str:
    """`text` with the value of `key` on `line` (1-based) replaced."""
    lines = text.splitlines(keepends=True)
    lines[line - 1], n = re.subn(rf"\b{key}: [^,}}\n]+", f"{key}: {value}", lines[line - 1])
    assert n == 1, (key, lines[line - 1])
    return "".join(lines)


def _load(text: str) -> LoadedConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(text)
        return load_config([path])


def test_the_documents_with_every_number_are_valid() -> None:
    for policy in POLICY_BLOCKS:
        config = _load(_with_policy(policy))
        assert config.errors == () and len(config.workloads) == 1, (policy, config.errors)


# (line, key on that line, new value, field, start of the message)
OUT_OF_RANGE = [
    # the number of issue 10: an integer without bounds overflowed the caps arithmetic
    (13, "gpusPerReplica", HUGE, "spec.pools[0].gpusPerReplica", "must be at most 64, not 1000"),
    # one more than the largest multi-node replica
    (13, "gpusPerReplica", "65", "spec.pools[0].gpusPerReplica", "must be at most 64, not 65"),
    (8, "maxReplicas", "1000000000", "spec.maxReplicas", "must be at most 10000, not 1000000000"),
    (18, "maxReplicas", "10001", "spec.pools[0].maxReplicas", "must be at most 10000"),
    (5, "priority", HUGE, "spec.priority", "must be at most 1000000, not 1000"),
    (5, "priority", "-" + HUGE, "spec.priority", "must be at least -1000000, not -1000"),
    # a subnormal weight: a fair share divided by it is infinite
    (6, "weight", "1.0e-320", "spec.weight", "must be at least 0.001"),
    (6, "weight", "1.0e+7", "spec.weight", "must be at most 1e+06"),
    (14, "costPerGpuHour", ".inf", "spec.pools[0].costPerGpuHour", "must be a finite number"),
    # an integer too large to be a float at all
    (14, "costPerGpuHour", HUGE, "spec.pools[0].costPerGpuHour", "too large: must be a finite number"),
    (15, "startupSeconds", "1.0e+9", "spec.pools[0].startupSeconds", "must be at most 604800"),
    (16, "startupP95Seconds", ".nan", "spec.pools[0].startupP95Seconds", "must be a finite number"),
    (17, "relativeThroughput", "1.0e-320", "spec.pools[0].relativeThroughput", "must be at least 0.01"),
    (19, "pendingTimeoutSeconds", "1.0e+300", "spec.pools[0].pendingTimeoutSeconds", "must be at most"),
    (24, "targetPerReplica", "1.0e-320", "spec.triggers[0].targetPerReplica", "must be at least 1e-06"),
    (25, "activation", "1.0e+300", "spec.triggers[0].activation", "must be at most 1e+12"),
    (26, "pollSeconds", "0.001", "spec.triggers[0].pollSeconds", "must be at least 0.1"),
    (30, "target", "-.inf", "spec.triggers[1].target", "must be a finite number"),
    (31, "timeoutSeconds", "86400", "spec.triggers[1].timeoutSeconds", "must be at most 300"),
    (
        36,
        "stabilizationSeconds",
        "1.0e+5",
        "spec.behavior.scaleUp.stabilizationSeconds",
        "must be at most 3600",
    ),
    (37, "value", "100000", "spec.behavior.scaleUp.policies[0].value", "must be at most 10000"),
    (
        37,
        "periodSeconds",
        "1.0e+9",
        "spec.behavior.scaleUp.policies[0].periodSeconds",
        "must be at most 1800",
    ),
    (39, "cooldownSeconds", "1.0e+400", "spec.behavior.cooldownSeconds", "must be a finite number"),
    (40, "failureThreshold", HUGE, "spec.fallback.failureThreshold", "must be at most 1000"),
    (40, "replicas", "10001", "spec.fallback.replicas", "must be at most 10000"),
    (46, "companyMaxGpus", HUGE, "spec.companyMaxGpus", "must be at most 1000000"),
    (47, "A100", "10000000", "spec.clusters[0].gpuTypes.A100", "must be at most 1000000"),
    (48, "maxGpus", "-1", "spec.providers.salad.maxGpus", "must be at least 0"),
]
# (policy, option, value, start of the message): each policy's own options are bounded too
OPTIONS_OUT_OF_RANGE = [
    ("queue-sla", "serviceRatePerReplica", "1.0e-320", "must be at least 1e-06"),
    ("queue-sla", "maxWaitSeconds", "1.0e-320", "must be at least 0.01"),
    ("queue-sla", "holdSeconds", ".inf", "must be a finite number"),
    ("queue-sla", "lookaheadSeconds", "1.0e+9", "must be at most 86400"),
    ("target", "tolerance", ".nan", "must be a finite number"),
    ("keda-hpa", "pollingIntervalSeconds", "5.0e-324", "must be at least 0.1"),
    ("keda-hpa", "targetPerReplica", "1.0e+300", "must be at most 1e+12"),
    ("keda-hpa", "cooldownSeconds", "1.0e+9", "must be at most 604800"),
    ("knative-kpa", "maxScaleUpRate", "1.0e+300", "must be at most 1e+06"),
    ("knative-kpa", "containerConcurrency", HUGE, "must be at most 1000"),
    ("knative-kpa", "tickSeconds", "1.0e-300", "must be at least 0.1"),
    ("static", "replicas", HUGE, "must be at most 10000"),
]


def _short(value: str) -> str:
    return value if len(value) <= 12 else f"{value[:4]}...({len(value)} digits)"


@pytest.mark.parametrize(
    ("line", "key", "value", "field", "message"),
    OUT_OF_RANGE,
    ids=[f"{field}={_short(value)}" for _, _, value, field, _ in OUT_OF_RANGE],
)
def test_an_out_of_range_number_is_a_located_error(
    line: int, key: str, value: str, field: str, message: str
) -> None:
    config = _load(_replace(ALL_NUMBERS, line, key, value))
    assert [(e.line, e.field) for e in config.errors] == [(line, field)], config.errors
    assert config.errors[0].message.startswith(message), config.errors[0].message


@pytest.mark.parametrize(
    ("policy", "option", "value", "message"),
    OPTIONS_OUT_OF_RANGE,
    ids=[f"{policy}.{option}={_short(value)}" for policy, option, value, _ in OPTIONS_OUT_OF_RANGE],
)
def test_an_out_of_range_policy_option_is_a_located_error(
    policy: str, option: str, value: str, message: str
) -> None:
    config = _load(_replace(_with_policy(policy), POLICY_LINE, option, value))
    assert [(e.line, e.field) for e in config.errors] == [(POLICY_LINE, f"spec.policy.{option}")]
    assert config.errors[0].message.startswith(message), config.errors[0].message


def _numbers(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, schema) of every integer or number a JSON Schema describes, nullable ones and map
    values included."""
    found: list[tuple[str, dict[str, Any]]] = []
    for model, definition in {"": schema, **schema.get("$defs", {})}.items():
        for name, prop in definition.get("properties", {}).items():
            for option in [prop, *prop.get("anyOf", []), prop.get("additionalProperties")]:
                if isinstance(option, dict) and option.get("type") in ("integer", "number"):
                    found.append((f"{model}.{name}", option))
    return found


def test_every_number_of_the_documents_and_the_policies_options_has_both_bounds() -> None:
    schemas = {"documents": json_schema()}
    for name, cls in BUILTINS.items():
        options: type[BaseModel] = cls.Options
        schemas[name] = options.model_json_schema(by_alias=True)
    unbounded = [
        f"{where}: {name}"
        for where, schema in schemas.items()
        for name, number in _numbers(schema)
        if not (
            {"minimum", "exclusiveMinimum"} & set(number) and {"maximum", "exclusiveMaximum"} & set(number)
        )
    ]
    numbers = sum(len(_numbers(schema)) for schema in schemas.values())
    assert numbers >= 50 and unbounded == []


# ----------------------------------------------------------------------------------------------
# Whatever validates, the engine computes with


def _numeric_leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [path]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [leaf for key, value in items for leaf in _numeric_leaves(value, (*path, key))]


BASES = {policy: list(yaml.safe_load_all(_with_policy(policy))) for policy in POLICY_BLOCKS}
# The bounds themselves, and the numbers that used to get through.
EDGES = [0, 1, -1, 0.01, 0.1, 1e-6, 1e-3, 64, 65, 1800, 3600, 86_400, 604_800, 10_000, 10_001, 10**6]
EDGES += [10**9, 10**12, 2**63, 10**400, -(10**400), 5e-324, 1e-320, 1e6, 1e12, 1e300, -0.0]
NUMBERS = (
    st.sampled_from(EDGES)
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=2e6)
)


def _set(documents: list[Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = documents
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value


# Every number of the spec and limits (with the target policy), and every option of each policy.
LEAVES = [("target", path) for path in _numeric_leaves(BASES["target"])] + [
    (policy, path)
    for policy in sorted(BASES)
    if policy != "target"
    for path in _numeric_leaves(BASES[policy])
    if path[:3] == (0, "spec", "policy")
]


def _check_engine(documents: list[Any], replicas: int = 3, reading: float = 1e6) -> bool:
    """Load the documents; when they validate, reconcile them over a few hours of readings. False
    when they did not validate. Every error must be located; no reconcile may raise, and no policy
    may fail on a number (the engine catches a policy's exception and reports it as a step)."""
    config = _load(yaml.safe_dump_all(documents))
    assert all(e.line >= 1 for e in config.errors), config.errors
    if not config.ok:
        return False
    snapshot = ClusterSnapshot(
        {p.key: PoolStatus(replicas, ready=replicas) for w in config.workloads for p in w.pools},
        free_gpus={("c1", "A100"): 10**6},
    )
    state = EngineState()
    for now in (0.0, 1.0, 31.0, 3600.0, 10**6):
        readings = {
            w.name: {t.name: Reading(reading, now - 1.0) for t in w.triggers} for w in config.workloads
        }
        plan, state = reconcile(config.workloads, snapshot, readings, state, config.limits, now)
        for decision in plan.decisions.values():
            assert not any("Error(" in step for step in decision.steps), decision.steps
            assert math.isfinite(decision.granted_units)
        for action in plan.actions:
            assert 0 <= action.to_replicas <= 10_000
    return True


@pytest.mark.parametrize(
    ("policy", "path"), LEAVES, ids=lambda x: ".".join(map(str, x)) if isinstance(x, tuple) else x
)
def test_every_edge_number_in_every_field_is_refused_or_computed_with(
    policy: str, path: tuple[Any, ...]
) -> None:
    accepted = 0
    for value in EDGES:
        documents = yaml.safe_load(yaml.safe_dump(BASES[policy]))
        _set(documents, path, value)
        accepted += _check_engine(documents)
    assert accepted < len(EDGES)  # some edge is out of range for every field


@st.composite
def documents_with_extreme_numbers(draw: st.DrawFn) -> list[Any]:
    documents = yaml.safe_load(yaml.safe_dump(BASES[draw(st.sampled_from(sorted(BASES)))]))
    leaves = _numeric_leaves(documents)
    for path in draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=6, unique=True)):
        _set(documents, path, draw(NUMBERS))
    return documents


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents_with_extreme_numbers(),
    st.sampled_from([0, 1, 3, 10_000]),
    st.sampled_from([0.0, 1.0, 1e6, 1e12]),
)
def test_numbers_that_validate_never_overflow_the_engine(
    documents: list[Any], replicas: int, reading: float
) -> None:
    # Several numbers at once, at random: the bounds of one field must hold whatever the others are.
    _check_engine(documents, replicas, reading)
