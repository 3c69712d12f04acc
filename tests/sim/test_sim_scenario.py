"""Scenario files: the bundled demo, and errors located as file:line: field: message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.sim.scenario import Overrides, ScenarioError, default_scenario_path, load_scenario
from autoscaler.sim.trace import load_trace

SCENARIOS = default_scenario_path().parent


def test_the_bundled_scenario_loads() -> None:
    sim = load_scenario(default_scenario_path())
    assert [w.name for w in sim.workloads] == ["llm-code", "llm-conv"]
    assert {w.namespace for w in sim.workloads} == {"inference"}
    code, conv = sim.workloads
    assert conv.priority > code.priority
    for w in sim.workloads:
        assert [p.node_class.value for p in w.pools] == ["regular", "virtual"]
        assert w.pools[1].provider == "salad"
        assert {t.name for t in w.triggers} == {"backlog", "arrivals"}
    assert sim.limits.company_max_gpus is not None
    assert sim.node_groups == {("vks-1", "A100"): 8}
    assert sim.sla_seconds == {"llm-code": 10.0, "llm-conv": 30.0}  # the policies' maxWaitSeconds
    assert [len(m.trace) for m in sim.models] == [8819, 19366]


def test_policy_service_rates_match_the_scenario_service_model() -> None:
    """serviceRatePerReplica in the policies is concurrency / mean service time of the trace."""
    sim = load_scenario(default_scenario_path())
    for spec, model in zip(sim.workloads, sim.models, strict=True):
        trace = load_trace(model.trace.name)
        mean = float(np.mean(model.service.seconds(trace.context_tokens, trace.generated_tokens)))
        rate = spec.policy.options.service_rate_per_replica  # type: ignore[attr-defined]
        assert rate == pytest.approx(model.concurrency / mean, rel=0.01), spec.name


def test_overrides_change_the_run_not_the_file() -> None:
    sim = load_scenario(
        default_scenario_path(),
        Overrides(window=(0, 600), speed=2, scale=1.5, seed=9, tick=5, sla=12, traces={"llm-code": "conv"}),
    )
    assert sim.seed == 9
    assert sim.tick == 5
    assert sim.sla_seconds == {"llm-code": 12, "llm-conv": 12}
    code, conv = sim.models
    assert code.trace.span < 300 + 1  # a scaled copy may trail its original by up to 1 s
    assert len(code.trace) == pytest.approx(len(conv.trace), rel=0.1)  # both replay conv now


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


POLICIES = str(SCENARIOS / "default-policies.yaml")
GOOD = f"""\
apiVersion: gpu-autoscaler/v1alpha1
kind: SimulationScenario
policies: [{POLICIES}]
workloads:
  llm-code:
    trace: code
    serviceModel: {{baseSeconds: 0.1, prefillSecondsPerToken: 0.0004, decodeSecondsPerToken: 0.03}}
  llm-conv:
    trace: conv
    serviceModel: {{baseSeconds: 0.1, prefillSecondsPerToken: 0.0004, decodeSecondsPerToken: 0.03}}
nodeGroups: [{{cluster: vks-1, gpuType: A100, gpus: 8}}]
"""


def errors_of(path: Path, overrides: Overrides | None = None) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, overrides)
    return list(err.value.errors)


def test_a_list_of_traces_is_replayed_into_one_queue(tmp_path: Path) -> None:
    window = Overrides(window=(0, 600), scale=2)
    one = load_scenario(write(tmp_path, GOOD), window)
    both = load_scenario(write(tmp_path, GOOD.replace("trace: conv", "trace: [conv, code]")), window)
    code, conv = one.models
    mixed = both.models[1]
    assert mixed.trace.name == "conv+code"
    assert len(mixed.trace) == len(conv.trace) + len(code.trace)
    assert np.all(np.diff(mixed.trace.arrival) >= 0)
    # The first stream is derived with the seed a single trace gets: a one-item list is the same run.
    assert np.isin(conv.trace.arrival, mixed.trace.arrival).all()
    listed = load_scenario(write(tmp_path, GOOD.replace("trace: conv", "trace: [conv]")), window)
    assert np.array_equal(listed.models[1].trace.arrival, conv.trace.arrival)


def test_an_empty_trace_in_a_list_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("trace: conv", 'trace: [conv, ""]'))
    assert errors_of(path) == [f"{path}:9: workloads.llm-conv.trace[1]: must not be empty"]


def test_a_minimal_scenario_loads(tmp_path: Path) -> None:
    sim = load_scenario(write(tmp_path, GOOD))
    assert sim.tick == 1.0
    assert sim.providers == {}


def test_an_unknown_field_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    trace: code\n", "    trace: code\n    colour: blue\n"))
    assert errors_of(path) == [
        f"{path}:7: workloads.llm-code.colour: unknown field 'colour' "
        "(known: trace, serviceModel, concurrency, sla, initialReplicas)"
    ]


def test_a_wrong_kind_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("kind: SimulationScenario", "kind: Scenario"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:2: kind: must be 'SimulationScenario'")


def test_a_regular_pool_without_a_node_group_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("gpuType: A100", "gpuType: H100"))
    assert errors_of(path) == [
        f"{path}:11: nodeGroups: pool inference/{name}-a100 needs regular A100 nodes in cluster vks-1; "
        "add {cluster: vks-1, gpuType: A100, gpus: N}"
        for name in ("llm-code", "llm-conv")
    ]


def test_workloads_must_match_the_policies(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  llm-conv:", "  llm-chat:"))
    assert errors_of(path) == [
        f"{path}:8: workloads.llm-chat: no policy file defines workload 'llm-chat' "
        "(defined: llm-code, llm-conv)",
        f"{path}:4: workloads: workload 'llm-conv' of the policies has no trace and service model here",
    ]


def test_a_missing_trace_file_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("trace: conv", "trace: nowhere.csv"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:9: workloads.llm-conv.trace: {tmp_path / 'nowhere.csv'}")


def test_policy_file_errors_come_through_unchanged(tmp_path: Path) -> None:
    policies = write(
        tmp_path, "apiVersion: gpu-autoscaler/v1alpha1\nkind: ScalingPolicy\nspec: 3\n", "p.yaml"
    )
    path = write(tmp_path, GOOD.replace(POLICIES, str(policies)))
    errors = errors_of(path)
    assert errors
    assert all(e.startswith(f"{policies}:") for e in errors)


def test_a_trigger_that_is_not_simulated_is_refused_by_name(tmp_path: Path) -> None:
    backlog = (
        "    - {name: backlog, type: rabbitmq, queue: code-requests, mode: QueueLength, "
        "targetPerReplica: 8}\n"
    )
    ttft = "    - {name: ttft, type: prometheus, query: 'up', target: 0.5}\n"
    policies = Path(POLICIES).read_text().replace(backlog, backlog + ttft, 1)
    path = write(tmp_path, GOOD.replace(POLICIES, str(write(tmp_path, policies, "p.yaml"))))
    assert errors_of(path) == [
        f"{path}:3: policies: workload llm-code, trigger ttft: type prometheus is not simulated "
        "(the simulator reads rabbitmq triggers only); use policy files without it for the simulation"
    ]


def test_a_trace_override_for_an_unknown_workload_is_refused(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, GOOD), Overrides(traces={"llm-x": "code"})) == [
        "--trace: no workload 'llm-x' (workloads: llm-code, llm-conv)"
    ]


def test_an_empty_window_is_refused(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, GOOD), Overrides(window=(90_000, 90_100)))
    assert len(errors) == 2
    assert all("no requests in the window" in e for e in errors)


def test_a_trigger_outage_reaches_the_engine_as_a_failed_trigger(tmp_path: Path) -> None:
    from autoscaler.engine.reconcile import reconcile
    from autoscaler.sim.runner import run

    outage = "triggerOutages: [{workload: llm-conv, trigger: backlog, start: 60, end: 120}]\n"
    sim = load_scenario(write(tmp_path, GOOD + outage), Overrides(window=(0, 300)))
    assert [(o.workload, o.trigger, o.start, o.end) for o in sim.outages] == [
        ("llm-conv", "backlog", 60, 120)
    ]
    failed: list[float] = []

    def decide(*args: Any) -> Any:
        plan, state = reconcile(*args)
        if "backlog" in plan.decisions["llm-conv"].failed_triggers:
            failed.append(args[-1])
        return plan, state

    run(sim, decide)
    assert failed == [float(t) for t in range(60, 120)]


def test_initial_replicas_must_name_a_pool_of_the_workload(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace("    trace: code\n", "    trace: code\n    initialReplicas: {nope: 2}\n")
    )
    (error,) = errors_of(path)
    assert error.startswith(
        f"{path}:7: workloads.llm-code.initialReplicas.nope: workload 'llm-code' has no pool"
    )
