"""The baseline policies (keda-hpa, knative-kpa, static), called directly over simulated time.

`Drive` plays the engine: it calls `recommend` once per simulated second with the reading a
function of time gives, hands the memory back, and makes the answer the workload's size at once
(ready too, unless a test pins `ready`), so each test reads as the controller's documented timeline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoscaler.engine.policy import Policy, PolicyContext, Recommendation
from autoscaler.engine.types import BehaviorSpec, PoolSpec, WorkloadSpec
from autoscaler.policies import registry
from autoscaler.policies.baselines import (
    KedaHpaOptions,
    KedaHpaPolicy,
    KnativeKpaOptions,
    KnativeKpaPolicy,
    StaticOptions,
    StaticPolicy,
)
from autoscaler.policies.baselines.keda_hpa import KedaHpaMemory
from autoscaler.policies.baselines.knative_kpa import KnativeKpaMemory
from tests import factories
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

    def step(self, now: float, value: float | Mapping[str, float | None] | None) -> Recommendation:
        """`value`: the first trigger's reading, or one per trigger name (None: that read failed)."""
        if isinstance(value, Mapping):
            values = {name: v for name, v in value.items() if v is not None}
        else:
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

    def run(
        self, start: int, end: int, value: Callable[[float], float | Mapping[str, float | None] | None]
    ) -> None:
        for t in range(start, end):
            self.step(float(t), value(float(t)))

    def first(self, units: float) -> float:
        """When the answer first reached `units` or more."""
        return next(t for t, u in self.changes if u is not None and u >= units)


def keda(wl: WorkloadSpec | None = None, **options: object) -> Drive:
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
    # Each sync reads the queue afresh (useCachedMetrics false): the last one that saw 100 was at
    # t=90, so 300 s later the window holds only the low recommendations. (This test used to pin
    # t=405: the HPA reading KEDA's poll of t=90 at its sync of t=105, the cached-metrics timing.)
    assert d.changes == [(0, 10), (390, 1)]


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


@pytest.mark.parametrize(
    ("cached", "expected"),
    [
        # KEDA's default: the HPA asks KEDA at its sync of t=15 and KEDA reads the queue then:
        # 8 (the burst's ceil(10000 / 10), capped at max(2 x 4, 4)).
        (False, {14: 4, 15: 8, 29: 8, 30: 16}),
        # useCachedMetrics: the sync of t=15 sees KEDA's poll of t=0 (40: on target, 4); the poll of
        # t=30 reads the burst and the sync of the same second uses it.
        (True, {14: 4, 15: 4, 29: 4, 30: 8}),
    ],
)
def test_keda_hpa_reads_a_fresh_metric_at_each_sync_unless_cached(
    cached: bool, expected: dict[int, int]
) -> None:
    wl = workload("w", triggers=(trigger("q", 10),), max_replicas=100)
    d = keda(wl=wl, triggers=[{"name": "q", "useCachedMetrics": cached}])
    d.current = 4.0
    d.step(0.0, 40.0)  # KEDA's first poll and the HPA's first sync: on target
    answers = {t: d.step(float(t), 10_000.0).units for t in range(1, 31)}  # the queue explodes at t=1
    assert {t: answers[t] for t in expected} == expected


def test_keda_hpa_sync_without_a_valid_reading_holds_and_records_nothing() -> None:
    d = keda()
    d.current = 4.0
    d.step(0.0, 40.0)
    before = d.memory
    assert isinstance(before, KedaHpaMemory)
    rec = d.step(15.0, None)  # the sync of t=15 finds the trigger failed: the HPA does nothing
    assert rec.units == 4
    assert isinstance(rec.memory, KedaHpaMemory)
    assert rec.memory.recommendations == before.recommendations
    assert rec.memory.next_sync == 30.0  # the next sync is on its period, not at the next reading
    # (This test used to pin "no recommendation at all": the baseline then skipped the sync and
    # held its clocks until a reading came, which no HPA does.)


# ----------------------------------------------------------------------------------------------
# keda-hpa: the semantics issue 10 asks for, hand-computed


@pytest.mark.parametrize(
    ("polling", "jump", "expected"),
    [
        # pollingInterval 10: KEDA's 0 -> 1 at its poll of t=10, the HPA's first 1 -> N at its own
        # sync of t=15 (ceil(400 / 10) = 40, capped at max(2 x 1, 4)), then doubling per sync.
        (10, 1, [(0, 0), (10, 1), (15, 4), (30, 8)]),
        # A jump just after the poll of t=10 waits for the one of t=20; the HPA acts at t=30.
        (10, 12, [(0, 0), (20, 1), (30, 4), (45, 8)]),
        # pollingInterval 30 (KEDA's default): 0 -> 1 at t=30; the sync of the same second sees the
        # Deployment at zero, so 1 -> N waits for t=45.
        (30, 1, [(0, 0), (30, 1), (45, 4), (60, 8)]),
    ],
)
def test_keda_activates_at_its_poll_and_the_hpa_follows_at_its_sync(
    polling: float, jump: float, expected: list[tuple[float, float]]
) -> None:
    d = keda(pollingIntervalSeconds=polling)
    d.run(0, int(expected[-1][0]) + 1, step_at(jump, 400.0))
    assert d.changes == expected


# Two triggers: q at 10 per replica, r at 2 per replica; 4 pods; a scale-down is not held by any
# window (behavior scaleDown stabilization 0, 100 % per 15 s), so the invalid-metric rule shows.
TWO = workload("w", triggers=(trigger("q", 10), trigger("r", 2)), min_replicas=1, max_replicas=100)
NO_DOWN_WINDOW = {
    "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}
}


@pytest.mark.parametrize(
    ("q", "r", "expected"),
    [
        (50.0, 12.0, 6),  # q wants ceil(50/10) = 5, r ceil(12/2) = 6: the larger
        (50.0, 2.0, 5),  # r wants 1: the larger is still q's 5
        (50.0, None, 5),  # r failed: the valid q may still scale up
        (10.0, None, 4),  # q wants 1 but r failed: the HPA does not scale down on partial data
        (10.0, 2.0, 1),  # both valid and low: down to 1
        (None, None, 4),  # nothing valid: nothing happens
        (41.0, 2.0, 4),  # q at 41/(10 x 4) = 1.025 is within tolerance (4), r wants 1: 4
    ],
)
def test_keda_hpa_takes_the_largest_proposal_and_never_scales_down_with_a_metric_invalid(
    q: float | None, r: float | None, expected: int
) -> None:
    d = keda(wl=TWO, triggers=["q", "r"], advanced=NO_DOWN_WINDOW)
    d.current = 4.0
    rec = d.step(0.0, {"q": q, "r": r})  # KEDA's first poll and the HPA's first sync
    assert rec.units == expected


def test_keda_hpa_reads_only_the_triggers_of_its_scaled_object() -> None:
    one = KedaHpaPolicy(KedaHpaOptions.model_validate({}))
    both = KedaHpaPolicy(KedaHpaOptions.model_validate({"triggers": ["q", "r"]}))
    assert one.triggers_read(TWO) == {"q"}  # the older default: the workload's first trigger
    assert both.triggers_read(TWO) == {"q", "r"}


BEHAVIOR_DEFAULTS: dict[str, object] = {"horizontalPodAutoscalerConfig": {"behavior": {}}}


def behavior(**directions: object) -> dict[str, object]:
    return {"horizontalPodAutoscalerConfig": {"behavior": directions}}


@pytest.mark.parametrize(
    ("advanced", "expected"),
    [
        # No behavior: the HPA's older path, max(2 x current, 4) per sync.
        (None, [(0, 4), (15, 8), (30, 16), (45, 32), (60, 40)]),
        # behavior given, all defaults: 4 pods or 100 % per 15 s, the larger: 1 -> 5, not 4.
        (BEHAVIOR_DEFAULTS, [(0, 5), (15, 10), (30, 20), (45, 40)]),
        # selectPolicy Min: the smaller of the two: 1 -> 2 -> 4 -> 8 -> 12 -> 16.
        (behavior(scaleUp={"selectPolicy": "Min"}), [(0, 2), (15, 4), (30, 8), (45, 12), (60, 16)]),
        # Disabled: the HPA never scales up.
        (behavior(scaleUp={"selectPolicy": "Disabled"}), [(0, 1)]),
        # 10 pods per 60 s: +10 at t=0, then nothing until that event leaves the period at t=60.
        (
            behavior(scaleUp={"policies": [{"type": "Pods", "value": 10, "periodSeconds": 60}]}),
            [(0, 11), (60, 21)],
        ),
        # A 20-s scale-up window: the lowest recommendation of the last 20 s. The first sync records
        # the 1 pod found, so t=0 stays at 1; at t=15 that entry is still in the window.
        (behavior(scaleUp={"stabilizationWindowSeconds": 20}), [(0, 1), (30, 5), (45, 10), (60, 20)]),
    ],
)
def test_keda_hpa_scale_up_follows_the_behavior_when_given_and_the_legacy_path_otherwise(
    advanced: dict[str, object] | None, expected: list[tuple[float, float]]
) -> None:
    wl = workload("w", triggers=(trigger("q", 10),), min_replicas=1, max_replicas=40)
    d = keda(wl=wl, advanced=advanced)
    d.current = 1.0
    d.run(0, 61, lambda t: 400.0)
    assert d.changes == expected


@pytest.mark.parametrize(
    ("advanced", "expected"),
    [
        # No behavior: the highest recommendation of the last 300 s; the last sync to see 100 was
        # at t=90.
        (None, [(0, 10), (390, 1)]),
        # scaleDown stabilization 60 s, 100 % per 15 s: down at the first sync whose window no longer
        # holds t=90.
        (behavior(scaleDown={"stabilizationWindowSeconds": 60}), [(0, 10), (150, 1)]),
        # The same with 2 pods per 15 s: one step per sync, down to minReplicaCount 1.
        (
            behavior(
                scaleDown={
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 15}],
                }
            ),
            [(0, 10), (150, 8), (165, 6), (180, 4), (195, 2), (210, 1)],
        ),
    ],
)
def test_keda_hpa_scale_down_follows_the_behavior_when_given_and_the_legacy_path_otherwise(
    advanced: dict[str, object] | None, expected: list[tuple[float, float]]
) -> None:
    wl = workload("w", triggers=(trigger("q", 10),), min_replicas=1, max_replicas=100)
    d = keda(wl=wl, advanced=advanced)
    d.current = 10.0
    d.run(0, 500, step_at(0, 100.0, low=5.0, until=100))
    assert d.changes == expected


A100 = factories.pool("w-a100")
SALAD = factories.pool("w-salad", virtual=True, thr=0.5)


def pods_ctx(
    wl: WorkloadSpec, values: Mapping[str, float], pods: tuple[int, ...], room: tuple[int | None, ...]
) -> PolicyContext:
    """The context the engine gives at t=0 with these pods per pool, all ready."""
    units = sum(n * p.relative_throughput for n, p in zip(pods, wl.pools, strict=True))
    return PolicyContext(wl, values, frozenset(), units, units, 60.0, 0.0, None, pods, pods, room)


@pytest.mark.parametrize(
    ("pools", "pods", "room", "usage", "options", "units"),
    [
        # maxReplicaCount 10 on a pool of relativeThroughput 0.5: 10 pods, which are 5 units.
        ((SALAD,), (6,), (None,), 1000.0, {"maxReplicaCount": 10}, 5.0),
        # The same on a full-speed pool: 10 units.
        ((A100,), (6,), (None,), 1000.0, {"maxReplicaCount": 10}, 10.0),
        # Two pools, room for 1 more A100: 6 pods -> 10 = +1 A100 (1 unit) + 3 Salad (1.5 units).
        ((A100, SALAD), (2, 4), (1, None), 1000.0, {"maxReplicaCount": 10}, 6.5),
        # Tolerance in pods: 20 messages over 2 pods at 10 each is on target (2 pods, 1 unit held);
        # counted in units (1) it would look twice over target.
        ((SALAD,), (2,), (None,), 20.0, {}, 1.0),
        # Scale-in from the last pool first: 3 A100 + 4 Salad (7 pods) -> 2 pods = 2 A100, 2 units.
        ((A100, SALAD), (3, 4), (0, None), 20.0, {"advanced": NO_DOWN_WINDOW}, 2.0),
    ],
)
def test_keda_hpa_counts_pods_not_units(
    pools: tuple[PoolSpec, ...],
    pods: tuple[int, ...],
    room: tuple[int | None, ...],
    usage: float,
    options: dict[str, object],
    units: float,
) -> None:
    wl = workload("w", pools, triggers=(trigger("q", 10),), min_replicas=1, max_replicas=100)
    policy = KedaHpaPolicy(KedaHpaOptions.model_validate(options))
    rec = policy.recommend(pods_ctx(wl, {"q": usage}, pods, room))
    assert rec.units == pytest.approx(units)


def test_the_engine_places_the_hpa_s_pods_where_they_go() -> None:
    # 2 A100 pods and no free A100: the HPA's 2 -> 4 pods (max(2 x 2, 4)) become 2 Salad pods,
    # 3 units, not the 4 units that would be 4 Salad pods.
    from autoscaler.engine.reconcile import reconcile
    from autoscaler.engine.types import UNLIMITED, ClusterSnapshot, EngineState, PoolStatus, Reading

    policy = KedaHpaPolicy(KedaHpaOptions())
    wl = workload(
        "w", (A100, SALAD), triggers=(trigger("q", 10),), min_replicas=1, max_replicas=100, policy=policy
    )
    snapshot = ClusterSnapshot(
        pools={A100.key: PoolStatus(2, ready=2), SALAD.key: PoolStatus(0)}, free_gpus={("c1", "A100"): 0}
    )
    plan, _ = reconcile([wl], snapshot, {"w": {"q": Reading(1000.0, 0.0)}}, EngineState(), UNLIMITED, 0.0)
    assert {(a.pool, a.to_replicas) for a in plan.actions} == {(SALAD.key, 2)}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"trigger": "q", "triggers": ["q"]}, "trigger"),  # one form or the other
        ({"targetPerReplica": 5, "triggers": ["q"]}, "targetPerReplica"),  # value goes on the entry
        ({"triggers": ["q", "q"]}, "more than once"),
        ({"minReplicaCount": 5, "maxReplicaCount": 2}, "above maxReplicaCount"),
        ({"advanced": behavior(scaleUp={"policies": []})}, "at least 1"),  # Kubernetes: one or more
        (
            {
                "advanced": behavior(
                    scaleUp={"policies": [{"type": "Pods", "value": 4, "periodSeconds": 3600}]}
                )
            },
            "1800",
        ),
        ({"advanced": behavior(scaleDown={"stabilizationWindowSeconds": 7200})}, "3600"),
    ],
)
def test_keda_hpa_refuses_options_kubernetes_or_keda_would(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KedaHpaOptions.model_validate(options)


def test_keda_hpa_memory_round_trips_through_its_codec() -> None:
    d = keda(wl=TWO, triggers=["q", "r"], advanced=BEHAVIOR_DEFAULTS)
    d.current = 1.0
    d.run(0, 40, lambda t: {"q": 400.0, "r": None if t > 20 else 2.0})
    policy = d.policy
    assert isinstance(policy, KedaHpaPolicy)
    assert policy.load_memory(json.loads(json.dumps(policy.dump_memory(d.memory)))) == d.memory


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


@pytest.mark.parametrize(
    ("in_flight", "options", "units", "panic"),
    [
        # 80 in flight at 10 per pod: 8 pods, which on a pool of relativeThroughput 0.5 are 4 units;
        # 8 wanted over 4 ready pods is 200 %: panic.
        (80.0, {}, 4.0, True),
        # maxScale counts pods: 6 pods = 3 units.
        (80.0, {"maxScale": 6}, 3.0, True),
        # 7 pods over 4 ready is 175 %: stable (over the 2 ready units it would read 350 %).
        (70.0, {}, 3.5, False),
    ],
)
def test_kpa_counts_pods_not_units(
    in_flight: float, options: dict[str, object], units: float, panic: bool
) -> None:
    wl = workload("w", (SALAD,), triggers=(trigger("c", 10),), max_replicas=1000)
    opts = {"containerConcurrency": 10, "targetUtilization": 1.0, **options}
    policy = KnativeKpaPolicy(KnativeKpaOptions.model_validate(opts))
    rec = policy.recommend(pods_ctx(wl, {"c": in_flight}, (4,), (None,)))
    assert rec.units == pytest.approx(units)
    assert isinstance(rec.memory, KnativeKpaMemory)
    assert (rec.memory.panic_at is not None) is panic


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
