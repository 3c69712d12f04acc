"""deploy/examples/rabbitmq-worker: the worker that drains on scale-in renders into valid objects,
its grace period outlasts its drain, the autoscaler owns its replicas, and its ScalingPolicy (with
idle-first scale-in) loads and scales the example's Deployment."""

from __future__ import annotations

import ast

from autoscaler.config import load_config
from autoscaler.config.models import PodLoadOptions
from tests.deploy.conftest import ROOT, by_kind, invalid, render
from tests.deploy.test_kubernetes import env_of

TREE = "../examples/rabbitmq-worker"  # relative to deploy/kubernetes, as `render` takes it
EXAMPLE = ROOT / "deploy" / "examples" / "rabbitmq-worker"


def test_the_worker_example_is_valid_against_the_kubernetes_schemas() -> None:
    objects = render(TREE)
    assert {o["kind"] for o in objects} == {"Deployment", "ConfigMap"}
    assert invalid(objects) == []


def test_the_worker_drains_within_its_grace_period_and_leaves_replicas_to_the_autoscaler() -> None:
    objects = render(TREE)
    (deployment,) = by_kind(objects, "Deployment")
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    env = {name: e.get("value") for name, e in env_of(pod["containers"][0]).items()}
    assert int(env["PREFETCH"] or 0) >= 1
    assert float(env["DRAIN_SECONDS"] or 0) < pod["terminationGracePeriodSeconds"]
    (config_map,) = by_kind(objects, "ConfigMap")
    ast.parse(config_map["data"]["worker.py"])  # the worker the pod runs is the one documented


def test_the_worker_policy_loads_with_idle_first_scale_in() -> None:
    (deployment,) = by_kind(render(TREE), "Deployment")
    config = load_config([EXAMPLE / "policy.yaml"])
    assert [str(e) for e in config.errors] == []
    (workload,) = config.workloads
    assert [(p.namespace, p.deployment) for p in workload.pools] == [
        (deployment["metadata"]["namespace"], deployment["metadata"]["name"])
    ]
    assert isinstance(workload.pod_load, PodLoadOptions)
    assert workload.pod_load.query == 'sum by (pod) (jobs_in_flight{namespace="jobs", pod=~"$pods"})'
