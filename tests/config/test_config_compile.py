"""Compiling documents into the engine's dataclasses, and the checks across documents."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.config import LoadedConfig, load_config
from autoscaler.config.models import PrometheusOptions, RabbitMQOptions
from autoscaler.engine.types import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    UNLIMITED,
    FallbackBehavior,
    MetricType,
    NodeClass,
    PoolSpec,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
)
from autoscaler.policies.queue_sla import QueueSlaPolicy
from autoscaler.policies.target import TargetPolicy

# The `write` fixture of conftest.py: (file name, YAML text) -> path.
WriteFile = Callable[[str, str], Path]

HEAD = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: demo, namespace: ml}
spec:
"""
TRIGGER = "  triggers: [{name: backlog, type: rabbitmq, queue: jobs}]\n"
POOL = "  pools: [{deployment: demo-a100, nodeClass: regular, gpuType: A100}]\n"


LIMITS_HEAD = "---\napiVersion: gpu-autoscaler/v1alpha1\nkind: ParallelismLimits\nmetadata: {name: company}\n"


def limits_doc(body: str) -> str:
    return LIMITS_HEAD + "spec:\n" + body


def load(write: WriteFile, text: str, **kwargs: str) -> LoadedConfig:
    return load_config([write("p.yaml", text)], default_cluster=kwargs.get("default_cluster", "default"))


def test_pool_defaults(write: WriteFile) -> None:
    config = load(write, HEAD + POOL + TRIGGER)
    assert config.errors == ()
    assert config.workloads[0].pools == (
        PoolSpec(
            deployment="demo-a100",
            namespace="ml",
            node_class=NodeClass.REGULAR,
            gpu_type="A100",
            cluster="default",
            gpus_per_replica=1,
            cost_per_gpu_hour=0.0,
            startup_seconds=60.0,
            startup_p95_seconds=None,
            relative_throughput=1.0,
            max_replicas=None,
            pending_timeout_seconds=300.0,
            provider=None,
        ),
    )


def test_workload_defaults(write: WriteFile) -> None:
    # No policy block: the KEDA-like target policy. Namespace defaults to "default".
    config = load(write, (HEAD + POOL + TRIGGER).replace(", namespace: ml", ""))
    workload = config.workloads[0]
    assert (workload.name, workload.namespace) == ("demo", "default")
    assert (workload.min_replicas, workload.max_replicas, workload.priority, workload.weight) == (
        0,
        100,
        0,
        1.0,
    )
    assert isinstance(workload.policy, TargetPolicy)
    assert workload.behavior.scale_up == DEFAULT_SCALE_UP
    assert workload.behavior.scale_down == DEFAULT_SCALE_DOWN
    assert workload.behavior.cooldown_seconds == 300.0
    assert (workload.fallback.failure_threshold, workload.fallback.behavior) == (3, FallbackBehavior.HOLD)
    assert workload.rebalance is False


def test_rebalance_is_a_placement_option(write: WriteFile) -> None:
    config = load(write, HEAD + POOL + TRIGGER + "  placement: {rebalance: true}\n")
    assert config.errors == ()
    assert config.workloads[0].rebalance is True
    config = load(write, HEAD + POOL + TRIGGER + "  placement: {rebalance: yes-please}\n")
    assert [e.field for e in config.errors] == ["spec.placement.rebalance"]
    config = load(write, HEAD + POOL + TRIGGER + "  placement: {maxSurge: 2}\n")
    assert [e.field for e in config.errors] == ["spec.placement.maxSurge"]


def test_the_readme_rebalance_example_validates(write: WriteFile) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Rebalance between pools", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    config = load(write, HEAD + block.split("spec:\n", 1)[1] + TRIGGER)
    assert config.errors == ()
    assert config.workloads[0].rebalance is True
    assert [p.deployment for p in config.workloads[0].pools] == ["llm-chat-salad", "llm-chat-a100"]


def test_triggers_compile_with_their_options(write: WriteFile) -> None:
    text = (
        HEAD
        + POOL
        + """
  triggers:
    - {name: backlog, type: rabbitmq, queues: [a, b], operation: max, activation: 2}
    - {name: rate, type: rabbitmq, queue: a, mode: MessageRate, protocol: http, targetPerReplica: 1.5,
       metricType: Value, connectionFromEnv: MGMT_URL}
    - {name: p95, type: prometheus, query: 'sum(x)', target: 0.5, customHeaders: {X-Org: ml}}
  policy: {type: queue-sla, serviceRatePerReplica: 1.5, rateTrigger: rate}
"""
    )
    config = load(write, text)
    assert config.errors == ()
    backlog, rate, p95 = config.workloads[0].triggers
    # QueueLength without a target gets KEDA's default of 20 per replica
    assert (backlog.type, backlog.target, backlog.activation) == ("rabbitmq", 20.0, 2.0)
    assert backlog.metric_type is MetricType.AVERAGE_VALUE
    # The source's options, typed and with the model's defaults filled in; nothing the engine reads.
    assert backlog.options == RabbitMQOptions(queues=["a", "b"], operation="max")
    assert isinstance(backlog.options, RabbitMQOptions) and backlog.options.vhost_name == "/"
    assert (rate.target, rate.metric_type) == (1.5, MetricType.VALUE)
    assert isinstance(rate.options, RabbitMQOptions) and rate.options.connection_from_env == "MGMT_URL"
    assert (p95.type, p95.target) == ("prometheus", 0.5)
    assert p95.options == PrometheusOptions(query="sum(x)", custom_headers={"X-Org": "ml"})
    assert isinstance(p95.options, PrometheusOptions) and p95.options.ignore_null_values is False
    assert "target" not in PrometheusOptions.model_fields
    assert isinstance(config.workloads[0].policy, QueueSlaPolicy)


@pytest.mark.parametrize(
    ("behavior", "up", "down"),
    [
        # only a scale-down window: the default scale-down rate policies stay
        (
            "{scaleDown: {stabilizationSeconds: 60}}",
            DEFAULT_SCALE_UP,
            ScalingRules(60.0, DEFAULT_SCALE_DOWN.policies, SelectPolicy.MAX),
        ),
        # only scale-up policies: the default window and select stay
        (
            "{scaleUp: {policies: [{type: Percent, value: 50, periodSeconds: 30}]}}",
            ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 50, 30.0),), SelectPolicy.MAX),
            DEFAULT_SCALE_DOWN,
        ),
        # only a select policy
        (
            "{scaleDown: {selectPolicy: Disabled}}",
            DEFAULT_SCALE_UP,
            ScalingRules(300.0, DEFAULT_SCALE_DOWN.policies, SelectPolicy.DISABLED),
        ),
        # an empty behavior block changes nothing
        ("{}", DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN),
    ],
)
def test_behavior_defaults_part_by_part(
    write: WriteFile, behavior: str, up: ScalingRules, down: ScalingRules
) -> None:
    config = load(write, HEAD + POOL + TRIGGER + f"  behavior: {behavior}\n")
    assert config.errors == ()
    assert config.workloads[0].behavior.scale_up == up
    assert config.workloads[0].behavior.scale_down == down


def test_fallback(write: WriteFile) -> None:
    config = load(
        write, HEAD + POOL + TRIGGER + "  fallback: {failureThreshold: 5, behavior: static, replicas: 2}\n"
    )
    assert config.workloads[0].fallback.behavior is FallbackBehavior.STATIC
    assert (config.workloads[0].fallback.failure_threshold, config.workloads[0].fallback.replicas) == (5, 2)


def test_limits_mapping(write: WriteFile) -> None:
    text = limits_doc(
        "  companyMaxGpus: 64\n"
        "  clusters: [{name: a, gpuTypes: {A100: 32, H100: 16}}, {name: b, gpuTypes: {L4: 8}}]\n"
        "  providers: {salad: {maxGpus: 24}}\n"
    )
    config = load(write, text)
    assert config.errors == ()
    assert config.limits.company_max_gpus == 64
    assert dict(config.limits.cluster_gpu_types) == {("a", "A100"): 32, ("a", "H100"): 16, ("b", "L4"): 8}
    assert dict(config.limits.provider_max_gpus) == {"salad": 24}


def test_no_limits_document_means_unlimited(write: WriteFile) -> None:
    assert load(write, HEAD + POOL + TRIGGER).limits == UNLIMITED


@pytest.mark.parametrize(
    ("pool_extra", "clusters", "default_cluster", "cluster"),
    [
        # an explicit cluster wins
        (", cluster: b", "[{name: a, gpuTypes: {A100: 1}}, {name: b, gpuTypes: {A100: 1}}]", "a", "b"),
        # the only cluster the limits list
        ("", "[{name: only, gpuTypes: {A100: 1}}]", "elsewhere", "only"),
        # several clusters: the operator's cluster
        ("", "[{name: a, gpuTypes: {A100: 1}}, {name: b, gpuTypes: {A100: 1}}]", "b", "b"),
        # no clusters listed: the operator's cluster, and no cluster checks
        ("", "[]", "home", "home"),
    ],
)
def test_cluster_defaulting(
    write: WriteFile, pool_extra: str, clusters: str, default_cluster: str, cluster: str
) -> None:
    pool = POOL.replace("gpuType: A100", "gpuType: A100" + pool_extra)
    config = load(
        write,
        HEAD + pool + TRIGGER + limits_doc(f"  clusters: {clusters}\n"),
        default_cluster=default_cluster,
    )
    assert config.errors == ()
    assert config.workloads[0].pools[0].cluster == cluster


def test_no_limits_means_operator_cluster_and_no_checks(write: WriteFile) -> None:
    config = load(write, HEAD + POOL.replace("A100", "AnyGPU") + TRIGGER, default_cluster="home")
    assert config.errors == ()
    assert config.workloads[0].pools[0].cluster == "home"


def test_several_clusters_and_the_operator_cluster_not_listed(write: WriteFile) -> None:
    text = HEAD + POOL + TRIGGER + limits_doc("  clusters: [{name: a, gpuTypes: {A100: 1}}, {name: b}]\n")
    config = load(write, text, default_cluster="default")
    assert [(e.line, e.field) for e in config.errors] == [(5, "spec.pools[0].cluster")]
    assert "no cluster given" in config.errors[0].message


@pytest.mark.parametrize(
    ("pool", "providers", "errors"),
    [
        # a virtual pool whose provider has a quota: capped by the quota, any GPU type
        (
            "{deployment: v, nodeClass: virtual, provider: salad, gpuType: RTX4090}",
            "{salad: {maxGpus: 8}}",
            [],
        ),
        # a virtual pool whose provider has no quota: the cluster's GPU types apply
        (
            "{deployment: v, nodeClass: virtual, provider: salad, gpuType: RTX4090}",
            "{}",
            ["spec.pools[0].gpuType"],
        ),
        # a virtual pool without provider: fine, but the cluster's GPU types apply
        ("{deployment: v, nodeClass: virtual, gpuType: A100}", "{}", []),
        ("{deployment: v, nodeClass: virtual, gpuType: RTX4090}", "{}", ["spec.pools[0].gpuType"]),
        # a regular pool never escapes the cluster's GPU types, quota or not
        (
            "{deployment: v, nodeClass: regular, gpuType: RTX4090}",
            "{salad: {maxGpus: 8}}",
            ["spec.pools[0].gpuType"],
        ),
    ],
)
def test_virtual_provider_quota_exempts_gpu_type(
    write: WriteFile, pool: str, providers: str, errors: list[str]
) -> None:
    text = (
        HEAD
        + f"  pools: [{pool}]\n"
        + TRIGGER
        + limits_doc(f"  clusters: [{{name: c, gpuTypes: {{A100: 4}}}}]\n  providers: {providers}\n")
    )
    config = load(write, text)
    assert [e.field for e in config.errors] == errors


def test_python_policy_from_an_allowed_module(write: WriteFile) -> None:
    path = write(
        "p.yaml", HEAD + POOL + TRIGGER + "  policy: {python: 'autoscaler.policies.target:TargetPolicy'}\n"
    )
    assert [e.field for e in load_config([path]).errors] == ["spec.policy.python"]
    config = load_config([path], allowed_modules=["autoscaler.policies"])
    assert config.errors == ()
    assert isinstance(config.workloads[0].policy, TargetPolicy)


def test_type_and_python_together(write: WriteFile) -> None:
    config = load(write, HEAD + POOL + TRIGGER + "  policy: {type: target, python: 'a.b:C'}\n")
    assert [(e.field, e.message) for e in config.errors] == [
        ("spec.policy.python", "give either 'type' or 'python', not both")
    ]


def test_valid_workloads_survive_next_to_broken_ones(write: WriteFile) -> None:
    good = HEAD + POOL + TRIGGER
    bad = (HEAD + POOL + TRIGGER).replace("name: demo", "name: other").replace("demo-a100", "other-a100")
    bad = bad.replace("queue: jobs", "queue: jobs, targetPerReplica: -1")
    config = load(write, good + "---" + bad)
    assert [e.field for e in config.errors] == ["spec.triggers[0].targetPerReplica"]
    assert [w.name for w in config.workloads] == ["demo"]


def test_same_name_in_two_namespaces_is_refused(write: WriteFile) -> None:
    # The engine, its state and the trigger sources are keyed by workload name alone: such a pair
    # used to compile, then crash the controller's first reconcile with KeyError.
    other = (HEAD + POOL + TRIGGER).replace("namespace: ml", "namespace: batch")
    config = load(write, HEAD + POOL + TRIGGER + "---" + other)
    assert [(e.field, e.message.split(";")[0]) for e in config.errors] == [
        (
            "metadata.name",
            "workload name 'demo' is already used by workload 'ml/demo' at " + config.files[0] + ":3",
        )
    ]
    assert [(w.namespace, w.name) for w in config.workloads] == [("ml", "demo")]


def test_a_deployment_twice_in_one_workload(write: WriteFile) -> None:
    pools = (
        "  pools:\n"
        "    - {deployment: demo-a100, nodeClass: regular, gpuType: A100}\n"
        "    - {deployment: demo-a100, nodeClass: virtual, gpuType: A100}\n"
    )
    config = load(write, HEAD + pools + TRIGGER)
    assert [(e.line, e.field) for e in config.errors] == [(7, "spec.pools[1].deployment")]


THIRD_PARTY = """
from typing import ClassVar
from pydantic import BaseModel, ConfigDict

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boom: str = ""

class Checked:
    name: ClassVar[str] = "checked"
    Options: ClassVar[type[BaseModel]] = Options

    def __init__(self, options):
        if options.boom == "init":
            raise RuntimeError("constructor failed")
        self.boom = options.boom

    def recommend(self, ctx):
        raise AssertionError("not called while loading")

    def check(self, workload):
        if self.boom == "check":
            raise KeyError("check failed")
        return [("windows.0.start", "starts after it ends")] if self.boom == "windows" else []
"""


@pytest.mark.parametrize(
    ("module_text", "options", "expected"),
    [
        # a third-party policy whose check() finds a problem, at a nested option
        (THIRD_PARTY, "boom: windows", [("spec.policy.windows[0].start", "starts after it ends")]),
        # its constructor raises: a config error, not a traceback
        (
            THIRD_PARTY,
            "boom: init",
            [("spec.policy", "policy could not be built: RuntimeError: constructor failed")],
        ),
        # its check() raises
        (THIRD_PARTY, "boom: check", [("spec.policy", "policy check failed: KeyError: 'check failed'")]),
        # the module itself fails at import with something other than ImportError
        ("raise RuntimeError('broken at import')\n", "{}", [("spec.policy", "policy could not be built")]),
    ],
)
def test_third_party_policy_failures_are_config_errors(
    write: WriteFile,
    monkeypatch: pytest.MonkeyPatch,
    module_text: str,
    options: str,
    expected: list[tuple[str, str]],
) -> None:
    module = write("acme_policy_under_test.py", module_text)
    monkeypatch.syspath_prepend(str(module.parent))
    # Each case imports its own version of the module.
    monkeypatch.delitem(sys.modules, "acme_policy_under_test", raising=False)
    extra = "" if options == "{}" else f", {options}"
    path = write(
        "p.yaml", HEAD + POOL + TRIGGER + f"  policy: {{python: 'acme_policy_under_test:Checked'{extra}}}\n"
    )
    config = load_config([path], allowed_modules=["acme_policy_under_test"])
    got = [(e.field, e.message) for e in config.errors]
    assert len(got) == len(expected), got
    for (field, message), (want_field, want_message) in zip(got, expected, strict=True):
        assert field == want_field and message.startswith(want_message), got
    assert config.workloads == ()
