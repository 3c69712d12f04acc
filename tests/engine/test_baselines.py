"""The baseline policies (keda-hpa, knative-kpa, static), called directly over simulated time.

`Drive` plays the engine: it calls `recommend` once per simulated second with the reading a
function of time gives, hands the memory back, and makes the answer the workload's size at once
(ready too, unless a test pins `ready`), so each test reads as the controller's documented timeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoscaler.engine.policy import Policy, PolicyContext, Recommendation
from autoscaler.engine.types import BehaviorSpec, WorkloadSpec
from autoscaler.policies import registry
from autoscaler.policies.baselines import (
    KedaHpaOptions,
    KedaHpaPolicy,
    KnativeKpaOptions,
    KnativeKpaPolicy,
    StaticOptions,
    StaticPolicy,
)
from autoscaler.policies.baselines.knative_kpa import KnativeKpaMemory
from tests.factories import trigger, workload


@dataclass
class Drive:
    """Calls `policy` every second; the workload's size follows the answer (None: it holds)."""

    policy: Policy
    wl: WorkloadSpec
    current: float = 0.0
    # Ready units the policy sees; None: everything asked for is ready.
    ready: float | None = None
    memory: object = None
    # (time, answer) whenever the answer changed.
    changes: list[tuple[float, float | None]] = field(default_factory=list)
    last: Recommendation | None = None

    def step(self, now: float, value: float | None) -> Recommendation:
        values = {} if value is None else {self.wl.triggers[0].name: value}
        failed = frozenset(t.name for t in self.wl.triggers if t.name not in values)
        ready = self.current if self.ready is None else self.ready
        ctx = PolicyContext(self.wl, values, failed, self.current, ready, 60.0, now, self.memory)
        rec = self.policy.recommend(ctx)
        self.memory = rec.memory
        if self.last is None or rec.units != self.last.units:
            self.changes.append((now, rec.units))
        self.last = rec
        if rec.units is not None:
            # The engine ceils the units and applies min/max (passthrough).
            self.current = float(min(max(math.ceil(rec.units), self.wl.min_replicas), self.wl.max_replicas))
        return rec

    def run(self, start: int, end: int, value: Callable[[float], float | None]) -> None:
        for t in range(start, end):
            self.step(float(t), value(float(t)))

    def first(self, units: float) -> float:
        """When the answer first reached `units` or more."""
        return next(t for t, u in self.changes if u is not None and u >= units)


def keda(wl: WorkloadSpec | None = None, **options: float) -> Drive:
    wl = wl or workload("w", triggers=(trigger("q", 10),), max_replicas=100)
    return Drive(KedaHpaPolicy(KedaHpaOptions.model_validate(options)), wl)


def step_at(at: float, high: float, low: float = 0.0, until: float = math.inf) -> Callable[[float], float]:
    return lambda t: high if at <= t < until else low


# ----------------------------------------------------------------------------------------------
# keda-hpa


@pytest.mark.parametrize(
    ("jump", "activation_at"),
    [
        (1, 30),  # just after a poll: KEDA sees it at the next one, 29 s later
        (29, 30),  # just before a poll: 1 s later
        (30, 30),  # on a poll: at once
        (31, 60),  # polls are 30 s apart, whatever the load
    ],
)
def test_keda_activates_at_the_first_poll_after_the_jump(jump: int, activation_at: float) -> None:
    d = keda()
    d.run(0, jump + 31, step_at(jump, 400.0))
    assert d.first(1) == activation_at
    assert 0 <= activation_at - jump < 30


def test_keda_hpa_grows_1_4_8_16_32_40_one_sync_apart_after_activation() -> None:
    # A queue needing 40 replicas (400 at 10 per replica) from t=1, just after the poll at t=0: the
    # worst phase of KEDA's polling.
    d = keda(wl=workload("w", triggers=(trigger("q", 10),), max_replicas=100))
    d.run(0, 200, step_at(1, 400.0))
    assert d.changes == [(0, 0), (30, 1), (45, 4), (60, 8), (75, 16), (90, 32), (105, 40)]
    # The HPA's first 1 -> N is one sync (15 s) after KEDA's 0 -> 1; 1 -> 40 takes 75 s, and the
    # burst is answered in full 104 s after it began (REFERENCE.md: about 90-105 s).
    assert 90 <= d.first(40) - 1 <= 105


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (100.0, 10),  # on target: no change
        (105.0, 10),  # 5 % over: within the tolerance
        (109.0, 10),  # 9 % over: still within it
        (115.0, 12),  # 15 % over: ceil(115 / 10)
        (300.0, 20),  # far over: capped at max(2 x 10, 4) for this sync
    ],
)
def test_keda_hpa_tolerance_and_scale_up_limit(usage: float, expected: int) -> None:
    d = keda()
    d.current = 10.0
    d.step(0.0, usage)  # first poll and sync
    assert d.last is not None
    assert d.last.units == expected


def test_keda_hpa_scales_down_to_the_highest_recommendation_of_the_last_300s() -> None:
    d = keda()
    d.current = 10.0
    d.run(0, 1000, step_at(0, 100.0, low=5.0, until=100))
    # The poll at t=90 read 100 and the one at 120 read 5, so the last sync that used 100 was at
    # t=105; 300 s later the window holds only the low recommendations.
    assert d.changes == [(0, 10), (405, 1)]


def test_keda_hpa_timeline_back_to_zero() -> None:
    d = keda()
    d.run(0, 1000, step_at(1, 400.0, until=200))
    # Up to 40 as above; the queue empties at t=200; KEDA's last active poll was t=180, the last
    # HPA sync with the high metric t=195.
    assert d.first(40) == 105
    down = [(t, u) for t, u in d.changes if t > 105]
    assert down == [(495, 1), (510, 0)]
    # N -> 1: 300 s after the last high recommendation; -> 0: KEDA's cooldown from its last active
    # poll (strictly more than 300 s: the poll after), within 330 s of the last activity.
    assert 495 - 195 == 300
    assert 300 <= 510 - 200 <= 330


def test_keda_hpa_with_min_replicas_never_goes_to_zero() -> None:
    wl = workload("w", triggers=(trigger("q", 10),), min_replicas=2, max_replicas=100)
    d = keda(wl=wl)
    d.current = 2.0
    d.run(0, 1200, lambda t: 0.0)
    assert d.current == 2.0
    assert all(u == 2 for _, u in d.changes)


def test_keda_scales_a_never_active_workload_to_zero_at_the_first_poll() -> None:
    # KEDA ignores the cooldown without a lastActiveTime (a Deployment scaled outside KEDA).
    d = keda()
    d.current = 3.0
    d.step(0.0, 0.0)
    assert d.last is not None
    assert d.last.units == 0


def test_keda_activation_threshold_and_options_override_the_trigger() -> None:
    d = keda(activation=5.0, targetPerReplica=2.0)
    d.run(0, 31, lambda t: 5.0)  # at the threshold: not active
    assert d.current == 0
    d.run(31, 80, lambda t: 6.0)  # above it: 0 -> 1 at the poll at 60, then ceil(6 / 2) = 3
    assert d.changes[-2:] == [(60, 1), (75, 3)]


def test_keda_hpa_holds_between_polls_and_syncs() -> None:
    d = keda()
    d.current = 4.0
    d.step(0.0, 40.0)
    # The queue explodes between the poll at 0 and the one at 30: KEDA has not read it.
    for t in range(1, 30):
        rec = d.step(float(t), 10_000.0)
        assert rec.units == 4, t
    assert d.step(30.0, 10_000.0).units == 8  # read at 30, capped at max(2 x 4, 4)


def test_keda_hpa_missing_reading_gives_no_recommendation_and_keeps_its_memory() -> None:
    d = keda()
    d.step(0.0, 0.0)
    before = d.memory
    rec = d.step(1.0, None)
    assert rec.units is None
    assert "no reading" in rec.reason
    assert rec.memory is before


# ----------------------------------------------------------------------------------------------
# knative-kpa


def kpa(ready: float | None = None, **options: float) -> Drive:
    # containerConcurrency 10 at 100 % utilization: target 10 in flight per replica, round numbers.
    opts = {"containerConcurrency": 10, "targetUtilization": 1.0, **options}
    wl = workload("w", triggers=(trigger("c", 10),), max_replicas=1000)
    return Drive(KnativeKpaPolicy(KnativeKpaOptions.model_validate(opts)), wl, ready=ready)


def panicking(d: Drive) -> bool:
    assert isinstance(d.memory, KnativeKpaMemory)
    return d.memory.panic_at is not None


@pytest.mark.parametrize(
    ("surge", "panics"),
    [
        (100.0, True),  # 10 replicas wanted over 6 s with 5 ready: 200 %, the threshold
        (90.0, False),  # 9 / 5 = 180 %: stays stable
        (200.0, True),  # 400 %
    ],
)
def test_kpa_panics_at_twice_the_ready_capacity(surge: float, panics: bool) -> None:
    d = kpa(ready=5.0)
    d.current = 5.0
    d.run(0, 120, lambda t: 50.0)  # steady at 5 replicas' worth
    assert not panicking(d)
    d.run(120, 130, lambda t: surge)  # more than the 6-s panic window
    assert panicking(d) is panics


def test_kpa_never_scales_down_in_panic_and_leaves_it_a_stable_window_later() -> None:
    d = kpa(ready=5.0)
    d.current = 5.0
    d.run(0, 120, lambda t: 50.0)
    d.run(120, 130, lambda t: 200.0)  # panic: 20 replicas
    assert panicking(d)
    assert d.current == 20
    d.run(130, 140, lambda t: 10.0)  # the surge leaves the 6-s panic window within a few ticks
    assert isinstance(d.memory, KnativeKpaMemory)
    last_over = d.memory.panic_at
    assert last_over is not None
    assert 130 <= last_over < 140
    d.run(140, int(last_over) + 61, lambda t: 10.0)  # the load is gone, but still in panic
    assert panicking(d)
    assert d.current == 20  # never down while panicking
    d.run(int(last_over) + 61, int(last_over) + 63, lambda t: 10.0)  # first tick past the window
    assert not panicking(d)
    assert d.current < 20


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        (10.0, 5),  # at most halved per tick (maxScaleDownRate 2)
        (5.0, 2),  # floor(5 / 2)
        (3.0, 1),
        (1.0, 1),  # 0 is wanted, but the grace period keeps one replica
    ],
)
def test_kpa_scale_down_is_at_most_halved_per_tick(ready: float, expected: int) -> None:
    d = kpa(ready=ready)
    d.current = ready
    d.step(0.0, 0.0)
    assert d.last is not None
    assert d.last.units == expected


def test_kpa_goes_to_zero_only_after_the_grace_period() -> None:
    d = kpa()
    d.current = 10.0
    d.run(0, 200, lambda t: 0.0)
    # 10 -> 5 -> 2 -> 1 one tick apart, 0 wanted from t=6 (ready 1), zero 30 s later.
    assert d.changes == [(0, 5), (2, 2), (4, 1), (36, 0)]


def test_kpa_answers_a_cold_start_at_once_not_at_the_next_tick() -> None:
    d = kpa()
    d.run(0, 101, lambda t: 0.0)
    assert d.current == 0
    rec = d.step(101.0, 25.0)  # 101 is between ticks: Knative's activator pokes the autoscaler
    assert rec.units == 1


def test_kpa_uses_the_stable_average_when_calm() -> None:
    d = kpa(ready=4.0)
    d.current = 4.0
    d.run(0, 61, lambda t: 30.0 if t < 30 else 50.0)
    # Stable: the mean of the last 60 s (about 40) over 10 per replica; panic 50 / 4 ready is
    # below 200 %.
    assert not panicking(d)
    assert d.current == 5


def test_kpa_missing_reading_records_nothing() -> None:
    d = kpa()
    d.step(0.0, 10.0)
    before = d.memory
    rec = d.step(1.0, None)
    assert rec.units is None
    assert rec.memory is before


# ----------------------------------------------------------------------------------------------
# static, the registry and the shared contract


def test_static_always_gives_its_replicas() -> None:
    d = Drive(StaticPolicy(StaticOptions(replicas=7)), workload("w"))
    d.run(0, 100, lambda t: 1000.0 if t > 50 else 0.0)
    assert d.changes == [(0, 7)]


@pytest.mark.parametrize(
    ("name", "options", "cls"),
    [
        ("keda-hpa", {"targetPerReplica": 5, "pollingIntervalSeconds": 15}, KedaHpaPolicy),  # camelCase
        ("knative-kpa", {"containerConcurrency": 4, "targetUtilization": 0.5}, KnativeKpaPolicy),
        ("static", {"replicas": 3}, StaticPolicy),
    ],
)
def test_registry_builds_the_baselines_from_policy_file_options(
    name: str, options: dict[str, object], cls: type
) -> None:
    policy = registry.build_policy(name, None, options)
    assert isinstance(policy, cls)
    assert getattr(policy, "owns_behavior", False) is True  # the engine must not smooth them again


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("keda-hpa", {"pollingInterval": 30}, "pollingInterval"),  # unknown option (extra forbidden)
        ("knative-kpa", {"targetUtilization": 1.5}, "targetUtilization"),  # a share, at most 1
        ("knative-kpa", {"panicThresholdPercentage": 100}, "panicThresholdPercentage"),  # Knative: >= 110
        ("static", {}, "replicas"),  # required
        ("static", {"replicas": -1}, "replicas"),
    ],
)
def test_registry_refuses_bad_baseline_options(name: str, options: dict[str, object], field: str) -> None:
    with pytest.raises(registry.PolicyLoadError) as exc:
        registry.build_policy(name, None, options)
    assert exc.value.field == field


def test_builtins_are_alphabetical() -> None:
    assert list(registry.BUILTINS) == sorted(registry.BUILTINS)
    assert {"keda-hpa", "knative-kpa", "static"} <= set(registry.BUILTINS)


@pytest.mark.parametrize(
    ("policy", "trigger_name", "problems"),
    [
        (KedaHpaPolicy(KedaHpaOptions(trigger="q")), "q", []),  # named and present
        (KedaHpaPolicy(KedaHpaOptions(trigger="nope")), "q", ["no trigger named 'nope' (triggers: q)"]),
        (KnativeKpaPolicy(KnativeKpaOptions()), "q", []),  # default: the first trigger
    ],
)
def test_check_names_a_missing_trigger(policy: KedaHpaPolicy, trigger_name: str, problems: list[str]) -> None:
    wl = workload("w", triggers=(trigger(trigger_name),))
    assert [message for _, message in policy.check(wl)] == problems


def test_a_policy_file_naming_keda_hpa_compiles_to_a_passthrough_workload(tmp_path: Path) -> None:
    from autoscaler.config import load_config

    path = tmp_path / "p.yaml"
    path.write_text(
        """apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: w, namespace: ns}
spec:
  maxReplicas: 10
  pools: [{deployment: w-a100, nodeClass: regular, gpuType: A100}]
  triggers: [{name: backlog, type: rabbitmq, queue: q, targetPerReplica: 5}]
  policy: {type: keda-hpa, trigger: backlog, pollingIntervalSeconds: 15}
""",
        encoding="utf-8",
    )
    loaded = load_config([str(path)])
    assert [str(e) for e in loaded.errors] == []
    (wl,) = loaded.workloads
    assert isinstance(wl.policy, KedaHpaPolicy)
    assert wl.policy.options.polling_interval_seconds == 15


def test_the_engine_passes_a_baseline_through_its_behavior_stage() -> None:
    from autoscaler.engine.behavior import BehaviorInput, decide
    from autoscaler.engine.types import WorkloadState

    # Default HPA rules would allow 1 -> 4 at most and hold a scale-down for 300 s.
    wl = workload("w", policy=StaticPolicy(StaticOptions(replicas=0)), behavior=BehaviorSpec())
    assert decide(wl, WorkloadState(), BehaviorInput(40.0, True, frozenset(), 1), 0.0).desired == 40
    assert decide(wl, WorkloadState(), BehaviorInput(0.0, True, frozenset(), 40), 1.0).desired == 0
