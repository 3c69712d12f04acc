"""The behavior stage against the documented Kubernetes HPA (autoscaling/v2) and KEDA semantics.

Most tests drive `decide` through time the way reconcile would: every call gets the desired units of
the previous one as `current`, as if the cluster followed at once.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine.behavior import (
    BehaviorInput,
    BehaviorResult,
    decide,
    legacy_hpa_scale_up_limit,
)
from autoscaler.engine.types import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    BehaviorSpec,
    FallbackBehavior,
    FallbackSpec,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
    TriggerSpec,
    WorkloadSpec,
    WorkloadState,
)

TRIGGERS = ("backlog", "ttft")
NONE: frozenset[str] = frozenset()


class _UncallablePolicy:
    """WorkloadSpec needs a policy; the behavior stage must never call it."""

    name: ClassVar[str] = "uncallable"
    Options: ClassVar[Any] = None

    def recommend(self, ctx: object) -> object:
        raise AssertionError("the behavior stage called the policy")


def make_spec(
    *,
    min_replicas: int = 1,
    max_replicas: int = 100,
    scale_up: ScalingRules = DEFAULT_SCALE_UP,
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN,
    cooldown: float = 300.0,
    fallback: FallbackSpec | None = None,
) -> WorkloadSpec:
    return WorkloadSpec(
        name="llm-chat",
        namespace="inference",
        pools=(),
        triggers=tuple(TriggerSpec(name=n, type="test", target=1.0) for n in TRIGGERS),
        policy=_UncallablePolicy(),  # type: ignore[arg-type]
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        behavior=BehaviorSpec(scale_up=scale_up, scale_down=scale_down, cooldown_seconds=cooldown),
        fallback=fallback or FallbackSpec(),
    )


def step(
    spec: WorkloadSpec,
    state: WorkloadState,
    now: float,
    rec: float | None,
    current: int,
    *,
    active: bool = True,
    failed: Iterable[str] = (),
) -> BehaviorResult:
    return decide(spec, state, BehaviorInput(rec, active, frozenset(failed), current), now)


def follow(
    spec: WorkloadSpec,
    script: Sequence[tuple[float, float | None]],
    *,
    current: int,
    active: bool = True,
    state: WorkloadState | None = None,
) -> tuple[list[int], WorkloadState]:
    """Feed (now, recommendation) pairs, the cluster following each decision."""
    state = state or WorkloadState()
    desired = []
    for now, rec in script:
        result = step(spec, state, now, rec, current, active=active)
        state, current = result.state, result.desired
        desired.append(current)
    return desired, state


def every_15s(start: float, *recs: float | None) -> list[tuple[float, float | None]]:
    return [(start + 15.0 * i, r) for i, r in enumerate(recs)]


# ----------------------------------------------------------------------------------------------
# The documented HPA examples, default behavior


def test_default_scale_up_takes_4_pods_then_doubles() -> None:
    spec = make_spec()
    # 1 -> 5 (4 Pods beats 100 % of 1), 5 -> 10 (100 % of 5 beats 5 + 4), 10 -> 20, 20 -> 40.
    desired, _ = follow(spec, every_15s(0.0, 40, 40, 40, 40), current=1)
    assert desired == [5, 10, 20, 40]


def test_default_scale_up_waits_for_the_period() -> None:
    spec = make_spec()
    first = step(spec, WorkloadState(), 0.0, 40, 1)
    assert first.desired == 5
    assert first.steps == ("scale-up limited to 5 by Pods policy (4 per 15s)",)
    # 5 s later the period still holds the +4: it started at 1, so 5 is all the policies allow.
    assert step(spec, first.state, 5.0, 40, 5).desired == 5
    # An event exactly one period old no longer counts (the HPA keeps events with t > now - period).
    later = step(spec, first.state, 15.0, 40, 5)
    assert later.desired == 10
    assert later.steps == ("scale-up limited to 10 by Percent policy (100% per 15s)",)


def test_default_scale_down_waits_300s_then_goes_at_once() -> None:
    spec = make_spec()
    desired, _ = follow(spec, every_15s(0.0, 10, *[1] * 21), current=10)
    times = [15.0 * i for i in range(22)]
    by_time = dict(zip(times, desired, strict=True))
    # The 10 recorded at t=0 holds through t=285 and leaves the window at t=300.
    assert all(by_time[t] == 10 for t in times if t < 300)
    # Then 100 % per 15 s lets it drop to the recommendation in one step.
    assert by_time[300.0] == 1


def test_scale_down_held_step_names_the_window() -> None:
    spec = make_spec()
    state = step(spec, WorkloadState(), 0.0, 10, 10).state
    held = step(spec, state, 15.0, 2, 10)
    assert held.desired == 10
    assert held.steps == (
        "scale-down held at 10 by the 300s stabilization window (highest recommendation 10)",
    )


def test_stabilization_picks_the_max_of_the_last_300s_in_a_sawtooth() -> None:
    spec = make_spec()
    saw = [3 if i % 2 else 7 for i in range(60)]
    desired, _ = follow(spec, every_15s(0.0, 10, *saw), current=10)
    times = [15.0 * i for i in range(61)]
    for t, d in zip(times, desired, strict=True):
        # Until the 10 of t=0 leaves the window it wins; then the 7s do, never the 3s in between.
        assert d == (10 if t < 300 else 7), t


def test_scale_up_stabilization_picks_the_min_of_its_window() -> None:
    up = ScalingRules(60.0, DEFAULT_SCALE_UP.policies)
    spec = make_spec(scale_up=up)
    desired, _ = follow(spec, every_15s(0.0, 2, 8, 8, 8, 8, 8), current=2)
    # The 2 of t=0 holds the scale-up until it is 60 s old; then 4 Pods per 15 s take it to 8.
    assert desired == [2, 2, 2, 2, 6, 8]


# ----------------------------------------------------------------------------------------------
# Rate policies, table-driven

PODS_4 = RatePolicy(RateKind.PODS, 4, 15.0)
PERCENT_100 = RatePolicy(RateKind.PERCENT, 100, 15.0)

UP_CASES = [
    # Min picks the smaller change: 100 % of 1 (to 2) beats 4 Pods (to 5).
    (ScalingRules(0.0, (PODS_4, PERCENT_100), SelectPolicy.MIN), 1, 40, 2),
    # Min from 10: 4 Pods (to 14) beats 100 % (to 20).
    (ScalingRules(0.0, (PODS_4, PERCENT_100), SelectPolicy.MIN), 10, 40, 14),
    # Max from 10: 100 % (to 20).
    (ScalingRules(0.0, (PODS_4, PERCENT_100), SelectPolicy.MAX), 10, 40, 20),
    # Disabled: no scale-up at all.
    (ScalingRules(0.0, (PODS_4, PERCENT_100), SelectPolicy.DISABLED), 3, 40, 3),
    # Percent rounds up: 10 % of 3 is 0.3, ceil(3.3) = 4.
    (ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 10, 60.0),)), 3, 40, 4),
    # Percent from 0 gives 0; only a Pods policy lets 0 grow.
    (ScalingRules(0.0, (PERCENT_100,)), 0, 40, 0),
    # ... and with one, 0 -> 4.
    (ScalingRules(0.0, (PODS_4, PERCENT_100)), 0, 40, 4),
    # No policies: no rate limit, only maxReplicas.
    (ScalingRules(0.0, ()), 1, 40, 40),
    # Below every limit the recommendation itself is taken.
    (DEFAULT_SCALE_UP, 4, 6, 6),
]


@pytest.mark.parametrize(("rules", "current", "rec", "expected"), UP_CASES)
def test_scale_up_rate_policies(rules: ScalingRules, current: int, rec: float, expected: int) -> None:
    spec = make_spec(min_replicas=0, scale_up=rules)
    assert step(spec, WorkloadState(), 0.0, rec, current).desired == expected


DOWN_CASES = [
    # Percent floors: 50 % of 5 leaves int(2.5) = 2.
    (ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 50, 60.0),)), 5, 1, 2),
    # 50 % of 3 leaves int(1.5) = 1.
    (ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 50, 60.0),)), 3, 1, 1),
    # 10 % of 7 leaves int(6.3) = 6.
    (ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 10, 60.0),)), 7, 1, 6),
    # Max = the largest change: 50 % (to 5) beats 1 Pod (to 9).
    (
        ScalingRules(0.0, (RatePolicy(RateKind.PODS, 1, 60.0), RatePolicy(RateKind.PERCENT, 50, 60.0))),
        10,
        1,
        5,
    ),
    # Min = the smallest change: 1 Pod (to 9).
    (
        ScalingRules(
            0.0,
            (RatePolicy(RateKind.PODS, 1, 60.0), RatePolicy(RateKind.PERCENT, 50, 60.0)),
            SelectPolicy.MIN,
        ),
        10,
        1,
        9,
    ),
    # Disabled: no scale-down at all.
    (ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 100, 15.0),), SelectPolicy.DISABLED), 10, 1, 10),
    # The default 100 % per 15 s: straight to the recommendation.
    (ScalingRules(0.0, DEFAULT_SCALE_DOWN.policies), 10, 1, 1),
]


@pytest.mark.parametrize(("rules", "current", "rec", "expected"), DOWN_CASES)
def test_scale_down_rate_policies(rules: ScalingRules, current: int, rec: float, expected: int) -> None:
    spec = make_spec(scale_down=rules)
    assert step(spec, WorkloadState(), 0.0, rec, current).desired == expected


def test_scale_down_percent_counts_from_the_start_of_the_period() -> None:
    spec = make_spec(scale_down=ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 50, 60.0),)))
    desired, _ = follow(spec, [(0.0, 1), (30.0, 1), (59.0, 1), (60.0, 1), (120.0, 1)], current=10)
    # 10 -> 5; the period started at 10, so 5 is the floor until the event is 60 s old; then 2, then 1.
    assert desired == [5, 5, 5, 2, 1]


def test_disabled_steps_say_so() -> None:
    rules = ScalingRules(0.0, (PODS_4,), SelectPolicy.DISABLED)
    spec = make_spec(scale_up=rules, scale_down=rules)
    assert step(spec, WorkloadState(), 0.0, 9, 3).steps == (
        "scale-up disabled (selectPolicy Disabled): staying at 3",
    )
    assert step(spec, WorkloadState(), 0.0, 1, 3).steps == (
        "scale-down disabled (selectPolicy Disabled): staying at 3",
    )


# ----------------------------------------------------------------------------------------------
# min/max and rounding


@pytest.mark.parametrize(
    ("rec", "current", "expected", "steps"),
    [
        # Float noise from usage/target does not add a replica.
        (3.0000000001, 3, 3, ()),
        # A real fraction does.
        (3.01, 3, 4, ()),
        # maxReplicas caps what the rate policies would allow (90 -> 180).
        (500.0, 90, 100, ()),
        # minReplicas lifts a recommendation below it.
        (0.0, 1, 3, ("clamped to minReplicas 3",)),
        # A negative recommendation reads as 0, then the minimum.
        (-5.0, 3, 3, ("clamped to minReplicas 3",)),
    ],
)
def test_rounding_and_clamping(rec: float, current: int, expected: int, steps: tuple[str, ...]) -> None:
    spec = make_spec(min_replicas=3, max_replicas=100, scale_down=ScalingRules(0.0, (PERCENT_100,)))
    result = step(spec, WorkloadState(), 0.0, rec, current)
    assert result.desired == expected
    assert result.steps == steps


def test_lowered_max_replicas_wins_over_everything() -> None:
    spec = make_spec(max_replicas=5)
    # Scale-down stabilization would hold 8, a failed trigger would forbid the scale-down: max wins.
    result = step(spec, WorkloadState(), 0.0, 8, 8, failed={"ttft"})
    assert result.desired == 5


# ----------------------------------------------------------------------------------------------
# Activation and cooldown (KEDA)

ACTIVATION_CASES = [
    # At 0 and below activation: stays 0, whatever the policy says.
    (0, False, 0.0, 0, ("below activation: staying at 0",)),
    (0, False, 7.0, 0, ("below activation: staying at 0",)),
    # Active with nothing recommended: at least 1.
    (0, True, 0.0, 1, ("active: at least 1",)),
    # Active with work: the default Pods policy takes 0 to 4 at once.
    (0, True, 10.0, 4, ("scale-up limited to 4 by Pods policy (4 per 15s)",)),
    # Active with exactly one replica's worth.
    (0, True, 1.0, 1, ()),
]


@pytest.mark.parametrize(("current", "active", "rec", "expected", "steps"), ACTIVATION_CASES)
def test_activation_from_zero(
    current: int, active: bool, rec: float, expected: int, steps: tuple[str, ...]
) -> None:
    spec = make_spec(min_replicas=0)
    result = step(spec, WorkloadState(), 100.0, rec, current, active=active)
    assert result.desired == expected
    assert result.steps == steps
    assert result.state.last_active == (100.0 if active else None)


@pytest.mark.parametrize("cooldown", [300.0, 60.0, 0.0])
def test_cooldown_to_zero_exactly_at_cooldown_seconds(cooldown: float) -> None:
    spec = make_spec(min_replicas=0, cooldown=cooldown)
    state = step(spec, WorkloadState(), 1000.0, 1, 1, active=True).state
    if cooldown >= 1:
        # 1 s before the cooldown ends: still 1 (the policy's 0 is lifted while cooling down).
        before = step(spec, state, 1000.0 + cooldown - 1, 0, 1, active=False)
        assert before.desired == 1
        state = before.state
    at = step(spec, state, 1000.0 + cooldown, 0, 1, active=False)
    assert at.desired == 0
    assert at.steps == (f"cooldown to zero after {cooldown:g}s idle (cooldown {cooldown:g}s)",)


def test_cooldown_bypasses_stabilization_and_rate() -> None:
    down = ScalingRules(300.0, (RatePolicy(RateKind.PODS, 1, 60.0),))
    spec = make_spec(min_replicas=0, scale_down=down)
    state = step(spec, WorkloadState(), 0.0, 8, 8).state
    # Stabilization would hold 8 and the Pods policy would take one at a time; KEDA goes 8 -> 0.
    result = step(spec, state, 300.0, 0, 8, active=False)
    assert result.desired == 0
    assert result.state.scale_events == ((300.0, -8),)


def test_cooldown_counts_from_first_sight_when_never_active() -> None:
    spec = make_spec(min_replicas=0)
    seen = step(spec, WorkloadState(), 5000.0, 0, 3, active=False)
    # Found running and idle after a restart: not at once to zero, and no scale-down either (the 3
    # found running counts as a recommendation, as in the HPA).
    assert seen.desired == 3
    assert seen.state.last_active == 5000.0
    assert step(spec, seen.state, 5299.0, 0, 3, active=False).desired == 3
    assert step(spec, seen.state, 5300.0, 0, 3, active=False).desired == 0


def test_activity_restarts_the_cooldown() -> None:
    spec = make_spec(min_replicas=0)
    state = step(spec, WorkloadState(), 0.0, 1, 1, active=True).state
    state = step(spec, state, 200.0, 1, 1, active=True).state
    assert step(spec, state, 300.0, 0, 1, active=False).desired == 1
    assert step(spec, state, 500.0, 0, 1, active=False).desired == 0


def test_no_cooldown_to_zero_while_a_trigger_fails() -> None:
    spec = make_spec(min_replicas=0)
    state = step(spec, WorkloadState(), 0.0, 1, 1, active=True).state
    # The failed trigger might be the one with work (KEDA, too, goes to zero only without errors).
    result = step(spec, state, 400.0, 0, 1, active=False, failed={"ttft"})
    assert result.desired == 1
    assert result.steps == ("idle 400s but trigger(s) ttft failed: not going to zero on partial data",)


def test_min_replicas_above_zero_ignores_activation_and_cooldown() -> None:
    spec = make_spec(min_replicas=2)
    assert step(spec, WorkloadState(), 0.0, 0, 0, active=False).desired == 2
    assert step(spec, WorkloadState(), 0.0, 0, 2, active=False).desired == 2


# ----------------------------------------------------------------------------------------------
# Failures and fallback

FALLBACK_CASES = [
    # hold: stays where it is, also on a recommendation that would scale down.
    (FallbackSpec(3, FallbackBehavior.HOLD), 5, 5),
    # static: goes to fallback.replicas, even below current.
    (FallbackSpec(3, FallbackBehavior.STATIC, replicas=2), 5, 2),
    # currentIfHigher: up to fallback.replicas when that is more ...
    (FallbackSpec(3, FallbackBehavior.CURRENT_IF_HIGHER, replicas=8), 5, 8),
    # ... and never down.
    (FallbackSpec(3, FallbackBehavior.CURRENT_IF_HIGHER, replicas=2), 5, 5),
    # static is clamped to maxReplicas.
    (FallbackSpec(3, FallbackBehavior.STATIC, replicas=500), 5, 100),
    # A threshold of 1 trips on the first failure.
    (FallbackSpec(1, FallbackBehavior.STATIC, replicas=7), 5, 7),
]


@pytest.mark.parametrize(("fallback", "current", "expected"), FALLBACK_CASES)
def test_fallback_after_threshold_consecutive_failures(
    fallback: FallbackSpec, current: int, expected: int
) -> None:
    spec = make_spec(fallback=fallback, scale_down=ScalingRules(0.0, (PERCENT_100,)))
    state = WorkloadState()
    for n in range(1, fallback.failure_threshold):
        # Below the threshold: the partial-failure guard holds against the recommendation of 1.
        result = step(spec, state, 15.0 * n, 1, current, failed={"backlog"})
        assert result.desired == current
        assert not any("fallback" in s for s in result.steps)
        assert result.state.failures == {"backlog": n}
        state = result.state
    tripped = step(spec, state, 100.0, 1, current, failed={"backlog"})
    assert tripped.desired == expected
    assert tripped.steps == (
        f"trigger backlog failed {fallback.failure_threshold} times in a row"
        f" (threshold {fallback.failure_threshold}): fallback {fallback.behavior.value} -> {expected}",
    )


def test_fallback_skips_stabilization_and_records_no_recommendation() -> None:
    spec = make_spec(fallback=FallbackSpec(1, FallbackBehavior.STATIC, replicas=2))
    state = step(spec, WorkloadState(), 0.0, 9, 9).state
    result = step(spec, state, 15.0, 1, 9, failed={"backlog"})
    # The 300 s scale-down window would hold 9; fallback goes to 2 regardless.
    assert result.desired == 2
    assert result.state.recommendations == state.recommendations


def test_recovered_trigger_resets_its_count() -> None:
    spec = make_spec(fallback=FallbackSpec(3, FallbackBehavior.STATIC, replicas=9))
    state = WorkloadState()
    history = [{"backlog"}, {"backlog"}, set(), {"backlog"}, {"backlog"}]
    for n, failed in enumerate(history):
        result = step(spec, state, 15.0 * n, 4, 4, failed=failed)
        # Never three in a row, so never the fallback's 9.
        assert result.desired == 4
        state = result.state
    assert state.failures == {"backlog": 2}
    # The other trigger failing resets backlog's run.
    state = step(spec, state, 100.0, 4, 4, failed={"ttft"}).state
    assert state.failures == {"ttft": 1}
    state = step(spec, state, 115.0, 4, 4).state
    assert state.failures == {}


def test_unknown_trigger_names_are_not_counted() -> None:
    spec = make_spec()
    result = step(spec, WorkloadState(), 0.0, 4, 4, failed={"not-a-trigger"})
    assert result.state.failures == {}


def test_fallback_step_names_every_tripped_trigger() -> None:
    spec = make_spec(fallback=FallbackSpec(2, FallbackBehavior.HOLD))
    state = step(spec, WorkloadState(), 0.0, 4, 4, failed={"backlog"}).state
    result = step(spec, state, 15.0, 4, 4, failed={"backlog", "ttft"})
    # ttft failed once only: not named.
    assert result.steps == ("trigger backlog failed 2 times in a row (threshold 2): fallback hold -> 4",)
    state = step(spec, result.state, 30.0, 4, 4, failed={"backlog", "ttft"}).state
    result = step(spec, state, 45.0, 4, 4, failed={"backlog", "ttft"})
    assert result.steps == (
        "trigger backlog failed 4 times, ttft failed 3 times in a row (threshold 2): fallback hold -> 4",
    )


PARTIAL_CASES = [
    # A would-be scale-down on partial data is held.
    (2, 10, 10),
    # A scale-up on partial data goes ahead (the valid triggers ask for more).
    (40, 10, 20),
    # No change stays no change.
    (10, 10, 10),
]


@pytest.mark.parametrize(("rec", "current", "expected"), PARTIAL_CASES)
def test_partial_failure_never_scales_down(rec: float, current: int, expected: int) -> None:
    spec = make_spec(scale_down=ScalingRules(0.0, (PERCENT_100,)))
    result = step(spec, WorkloadState(), 0.0, rec, current, failed={"ttft"})
    assert result.desired == expected
    if rec < current:
        assert result.steps == ("trigger(s) ttft failed: not scaling down on partial data, holding 10",)


NO_DATA_CASES = [
    # The policy cannot tell: hold, never read as 0.
    (None, 7, True, 7, "policy gave no recommendation: holding 7"),
    (None, 7, False, 7, "policy gave no recommendation: holding 7"),
    # NaN from a policy is as good as none.
    (math.nan, 7, True, 7, "policy gave nan, not a number of units: holding 7"),
    (math.inf, 7, True, 7, "policy gave inf, not a number of units: holding 7"),
    # Idle at 0 stays 0.
    (None, 0, False, 0, "policy gave no recommendation: holding 0"),
    # Active at 0: KEDA's own 0 -> 1 needs no metric, so the work does not wait for the outage.
    (None, 0, True, 1, "policy gave no recommendation; active: scaling from 0 to 1"),
]


@pytest.mark.parametrize(("rec", "current", "active", "expected", "reason"), NO_DATA_CASES)
def test_no_recommendation_holds(
    rec: float | None, current: int, active: bool, expected: int, reason: str
) -> None:
    spec = make_spec(min_replicas=0)
    # Long idle, past the cooldown: missing data must not take it to zero either.
    state = WorkloadState(last_active=0.0)
    result = step(spec, state, 10_000.0, rec, current, active=active, failed={"backlog"})
    assert result.desired == expected
    assert result.steps == (reason,)
    assert result.state.recommendations == ()


# ----------------------------------------------------------------------------------------------
# State handling


def test_state_fields_are_the_ones_behavior_copies() -> None:
    # behavior._finish and reconcile build WorkloadState positionally for speed; a new field must
    # be added there too.
    names = [f.name for f in dataclasses.fields(WorkloadState)]
    assert names == [
        "recommendations",
        "scale_events",
        "last_active",
        "failures",
        "policy_memory",
        "blocked_until",
        "last_desired",
        "failure_seen",
    ]


def test_policy_memory_and_blocked_until_pass_through() -> None:
    memory = object()
    blocked = {"inference/llm-chat-salad": 900.0}
    state = WorkloadState(policy_memory=memory, blocked_until=blocked)
    spec = make_spec(fallback=FallbackSpec(1))
    for failed in ((), ("backlog",)):
        for rec in (None, 3.0):
            result = step(spec, state, 0.0, rec, 2, failed=failed)
            assert result.state.policy_memory is memory
            assert result.state.blocked_until is blocked
            assert result.state.last_desired == result.desired


def test_scale_events_are_recorded_and_expire() -> None:
    spec = make_spec()
    desired, state = follow(spec, every_15s(0.0, 40, 40), current=1)
    assert desired == [5, 10]
    assert state.scale_events == ((15.0, 5),)  # the +4 at t=0 is one period old at t=15
    _, state = follow(spec, [(100.0, 10)], current=10, state=state)
    assert state.scale_events == ()


def test_first_sight_counts_current_as_a_recommendation() -> None:
    spec = make_spec()
    # An engine restarted next to 8 running replicas does not drop them at once ...
    first = step(spec, WorkloadState(), 0.0, 2, 8)
    assert first.desired == 8
    assert first.state.recommendations == ((0.0, 8), (0.0, 2))
    # ... but once the window has passed.
    assert step(spec, first.state, 300.0, 2, 8).desired == 2


def test_recommendations_keep_only_what_can_still_matter() -> None:
    spec = make_spec()
    _, state = follow(spec, every_15s(0.0, 5, 9, 3, 4, 4, 6), current=5)
    # 5 at t=0 lies between the later 3 and 9; the first 4 is superseded by the second.
    assert state.recommendations == ((15.0, 9), (30.0, 3), (60.0, 4), (75.0, 6))


def test_legacy_hpa_scale_up_limit() -> None:
    cases = [
        # At least 4 in total, even from 0 or 1 (so 1 -> 4, where the default behavior gives 5).
        (0, 4),
        (1, 4),
        (2, 4),
        # Then doubling.
        (3, 6),
        (10, 20),
    ]
    assert [legacy_hpa_scale_up_limit(c) for c, _ in cases] == [e for _, e in cases]


# ----------------------------------------------------------------------------------------------
# Properties

periods = st.sampled_from([0.0, 1.0, 15.0, 60.0, 300.0])
rate_policies = st.builds(
    RatePolicy,
    kind=st.sampled_from(list(RateKind)),
    value=st.integers(1, 200),
    period_seconds=st.sampled_from([1.0, 15.0, 60.0, 120.0]),
)
rules = st.builds(
    ScalingRules,
    stabilization_seconds=periods,
    policies=st.lists(rate_policies, max_size=3).map(tuple),
    select=st.sampled_from(list(SelectPolicy)),
)


@st.composite
def specs(draw: st.DrawFn) -> WorkloadSpec:
    low = draw(st.integers(0, 5))
    return make_spec(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 60)),
        scale_up=draw(rules),
        scale_down=draw(rules),
        cooldown=draw(periods),
        fallback=FallbackSpec(
            failure_threshold=draw(st.integers(1, 4)),
            behavior=draw(st.sampled_from(list(FallbackBehavior))),
            replicas=draw(st.integers(0, 80)),
        ),
    )


ticks = st.lists(
    st.tuples(
        st.floats(0.0, 120.0),  # seconds since the previous call
        st.none() | st.floats(-5.0, 200.0),  # recommendation
        st.booleans(),  # active
        st.frozensets(st.sampled_from([*TRIGGERS, "stray"]), max_size=2),  # failed triggers
        st.integers(0, 150),  # current as a share of max_replicas, in percent (above: max was lowered)
    ),
    min_size=1,
    max_size=40,
)


def run(spec: WorkloadSpec, script: list[tuple[float, float | None, bool, frozenset[str], int]]) -> list[Any]:
    """Drive decide with a cluster that does not always follow; returns (inputs, results)."""
    state, now, out = WorkloadState(), 0.0, []
    for dt, rec, active, failed, share in script:
        now += dt
        current = spec.max_replicas * share // 100
        inp = BehaviorInput(rec, active, failed, current)
        result = decide(spec, state, inp, now)
        out.append((inp, result))
        state = result.state
    return out


@settings(max_examples=300, deadline=None)
@given(specs(), ticks)
def test_desired_stays_within_min_and_max(spec: WorkloadSpec, script: Any) -> None:
    for _, result in run(spec, script):
        assert spec.min_replicas <= result.desired <= spec.max_replicas
        assert result.state.last_desired == result.desired


@settings(max_examples=300, deadline=None)
@given(specs(), ticks)
def test_a_failed_trigger_never_lowers_hold_or_current_if_higher(spec: WorkloadSpec, script: Any) -> None:
    if spec.fallback.behavior is FallbackBehavior.STATIC:
        return
    for inp, result in run(spec, script):
        # Only maxReplicas may lower a workload above it.
        if inp.failed_triggers and inp.current <= spec.max_replicas:
            assert result.desired >= inp.current


@settings(max_examples=300, deadline=None)
@given(specs(), ticks)
def test_missing_data_never_lowers(spec: WorkloadSpec, script: Any) -> None:
    if spec.fallback.behavior is FallbackBehavior.STATIC:
        return
    for inp, result in run(spec, script):
        # No recommendation is never read as zero, not even after the cooldown.
        if inp.recommended_units is None:
            assert result.desired >= min(inp.current, spec.max_replicas)


@settings(max_examples=100, deadline=None)
@given(specs(), ticks)
def test_decide_is_deterministic(spec: WorkloadSpec, script: Any) -> None:
    assert run(spec, script) == run(spec, script)


@settings(max_examples=5, deadline=None)
@given(specs(), st.integers(0, 2**32))
def test_state_stays_bounded_after_10000_steps(spec: WorkloadSpec, seed: int) -> None:
    rnd = random.Random(seed)  # drawing 40,000 values through hypothesis would make it crawl
    state, now, current = WorkloadState(), 0.0, 0
    longest = max(
        [p.period_seconds for p in (*spec.behavior.scale_up.policies, *spec.behavior.scale_down.policies)],
        default=0.0,
    )
    min_dt = 0.5
    for _ in range(10_000):
        now += rnd.uniform(min_dt, 5.0)
        rec = None if rnd.random() < 0.05 else rnd.uniform(0, 1000)
        failed = frozenset(t for t in TRIGGERS if rnd.random() < 0.1)
        result = decide(spec, state, BehaviorInput(rec, rnd.random() < 0.7, failed, current), now)
        state, current = result.state, result.desired
        assert len(state.recommendations) <= spec.max_replicas + 1
        assert len(state.scale_events) <= longest / min_dt + 1
        assert set(state.failures) <= set(TRIGGERS)


def test_passthrough_takes_the_policy_as_it_is_within_the_guards() -> None:
    rules = BehaviorSpec(passthrough=True)  # default stabilization and rate rules would apply otherwise
    wl = dataclasses.replace(make_spec(min_replicas=0, max_replicas=10), behavior=rules)
    state = WorkloadState()
    up = decide(wl, state, BehaviorInput(9.0, active=True, failed_triggers=frozenset(), current=1), 0.0)
    assert up.desired == 9  # no 4-pods-per-15s limit
    down = decide(wl, up.state, BehaviorInput(0.0, active=False, failed_triggers=frozenset(), current=9), 1.0)
    assert down.desired == 0  # no stabilization window, no cooldown
    held = decide(
        wl,
        up.state,
        BehaviorInput(2.0, active=True, failed_triggers=frozenset({TRIGGERS[0]}), current=9),
        2.0,
    )
    assert held.desired == 9  # still never scales down on partial data
    capped = decide(wl, state, BehaviorInput(50.0, active=True, failed_triggers=frozenset(), current=1), 3.0)
    assert capped.desired == 10


def test_the_same_failed_poll_seen_by_several_reconciles_counts_once() -> None:
    wl = make_spec(fallback=FallbackSpec(failure_threshold=2, behavior=FallbackBehavior.STATIC, replicas=7))
    state = WorkloadState()
    failed = frozenset({TRIGGERS[0]})
    for now in (0.0, 1.0, 2.0):  # three reconciles, one failed poll taken at t=0
        result = decide(wl, state, BehaviorInput(3.0, True, failed, 3, {TRIGGERS[0]: 0.0}), now)
        state = result.state
    assert state.failures == {TRIGGERS[0]: 1}
    assert result.desired != 7
    result = decide(wl, state, BehaviorInput(3.0, True, failed, 3, {TRIGGERS[0]: 15.0}), 15.0)
    assert result.state.failures == {TRIGGERS[0]: 2}
    assert result.desired == 7  # the second failed poll trips the fallback


def test_a_policy_that_owns_its_behavior_is_passed_through() -> None:
    class Emulator(_UncallablePolicy):
        owns_behavior = True

    wl = dataclasses.replace(make_spec(min_replicas=0), policy=Emulator())
    result = decide(wl, WorkloadState(), BehaviorInput(30.0, True, frozenset(), 1), 0.0)
    assert result.desired == 30  # the default 4-pods-per-15s limit would give 5


@pytest.mark.parametrize(
    ("rec", "failed", "fallback"),
    [
        (3.0, (), None),  # the policy's answer
        (None, (), None),  # no recommendation: holding
        (3.0, ("backlog",), FallbackSpec(failure_threshold=1)),  # the fallback
    ],
)
def test_the_new_state_carries_the_policy_memory_it_is_given(
    rec: float | None, failed: tuple[str, ...], fallback: FallbackSpec | None
) -> None:
    """`decide`'s `policy_memory` (what `reconcile.stage` passes, the policy's new memory) is the
    memory of the state it returns, whichever rule settles the units; without it, the state's."""
    spec = make_spec(fallback=fallback)
    state = WorkloadState(policy_memory="old")
    inp = BehaviorInput(rec, True, frozenset(failed), 2)
    given = decide(spec, state, inp, 30.0, "new")
    kept = decide(spec, state, inp, 30.0)
    assert given.state.policy_memory == "new"
    assert kept.state.policy_memory == "old"
    assert dataclasses.replace(given.state, policy_memory="old") == kept.state
    assert (given.desired, given.steps, given.fallback) == (kept.desired, kept.steps, kept.fallback)
