"""`reconcile` itself, the stages joined (each stage has its own tests: test_behavior, test_placement,
test_limits, test_policies): which readings count, a policy's crash kept to its workload, and the
order of the plan's actions.

Only the triggers a policy reads may hold a workload (issue 9, item 3). The shipped Salad example
had a `ttft` Prometheus trigger beside a queue-sla policy that never reads it; with no TTFT exporter
every poll failed, `fallback: hold` tripped, and a backlog of 3,250 sat at 9 units for minutes. A
trigger kept for dashboards must not freeze scaling, nor wake a workload.
"""

from __future__ import annotations

import math

import pytest

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ActionKind,
    ClusterSnapshot,
    EngineState,
    FallbackBehavior,
    FallbackSpec,
    Limits,
    PoolStatus,
    Reading,
)
from autoscaler.policies.baselines.static import StaticOptions, StaticPolicy
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from tests.factories import pool, trigger, workload

QUEUE_SLA = QueueSlaPolicy(
    QueueSlaOptions(maxWaitSeconds=30, backlogTrigger="backlog", serviceRatePerReplica=1.2)
)
CHAT = workload(
    "chat",
    (pool("chat-a100"),),
    triggers=(trigger("backlog", 10, activation=1), trigger("ttft", 0.5)),
    policy=QUEUE_SLA,
    fallback=FallbackSpec(failure_threshold=3, behavior=FallbackBehavior.HOLD),
)


def _run(backlog: float, ttft_fails: bool, rounds: int = 6) -> tuple[int, str]:
    state = EngineState()
    replicas = 9
    explain = ""
    for i in range(rounds):
        now = 10.0 * i
        ttft = Reading(None, now, "no series") if ttft_fails else Reading(0.3, now)
        readings = {"chat": {"backlog": Reading(backlog, now), "ttft": ttft}}
        snapshot = ClusterSnapshot(pools={"ns/chat-a100": PoolStatus(replicas, ready=replicas)})
        plan, state = reconcile([CHAT], snapshot, readings, state, Limits(), now)
        for action in plan.actions:
            replicas = action.to_replicas
        explain = plan.decisions["chat"].explain()
    return replicas, explain


def test_a_failing_trigger_the_policy_does_not_read_does_not_hold_scaling() -> None:
    healthy, _ = _run(3250, ttft_fails=False)
    with_failing_ttft, explain = _run(3250, ttft_fails=True)
    assert healthy > 9
    # Past the failure threshold of the unread trigger, the workload still scales exactly as if it worked.
    assert with_failing_ttft == healthy
    assert "ttft" in explain and "not read by the policy" in explain


def test_a_failing_trigger_the_policy_reads_still_holds() -> None:
    # The guard itself is intact: the backlog trigger failing is a real reason to hold.
    state = EngineState()
    for i in range(5):
        now = 10.0 * i
        readings = {"chat": {"backlog": Reading(None, now, "broker down"), "ttft": Reading(0.3, now)}}
        snapshot = ClusterSnapshot(pools={"ns/chat-a100": PoolStatus(9, ready=9)})
        plan, state = reconcile([CHAT], snapshot, readings, state, Limits(), now)
        assert plan.actions == ()


def test_an_unread_trigger_does_not_activate_a_workload() -> None:
    static = workload(
        "idle",
        (pool("idle-a100"),),
        triggers=(trigger("q", 10, activation=0),),
        policy=StaticPolicy(StaticOptions(replicas=0)),
    )
    snapshot = ClusterSnapshot(pools={"ns/idle-a100": PoolStatus(0)})
    readings = {"idle": {"q": Reading(500, 0.0)}}
    plan, _ = reconcile([static], snapshot, readings, EngineState(), Limits(), 0.0)
    assert plan.actions == ()


class _Crashing:
    """A third-party policy with a bug."""

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        raise ZeroDivisionError("division by zero")


def test_a_policy_that_raises_holds_its_own_workload_and_no_other() -> None:
    buggy = workload("buggy", policy=_Crashing())
    chat = workload("chat")
    snapshot = ClusterSnapshot(pools={"ns/buggy-a100": PoolStatus(3, ready=3), "ns/chat-a100": PoolStatus(1)})
    readings = {"buggy": {"q": Reading(90.0, 0.0)}, "chat": {"q": Reading(40.0, 0.0)}}
    plan, _ = reconcile([buggy, chat], snapshot, readings, EngineState(), Limits(), 0.0)
    # 40 / 10 per replica: chat goes to 4; buggy keeps its 3 whatever its reading says.
    assert [(a.pool, a.to_replicas) for a in plan.actions] == [("ns/chat-a100", 4)]
    decision = plan.decisions["buggy"]
    assert decision.recommended_units is None and decision.targets == {"ns/buggy-a100": 3}
    assert decision.steps[0] == "policy _Crashing failed: ZeroDivisionError('division by zero')"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_reading_that_is_not_a_finite_number_is_a_failed_trigger(value: float) -> None:
    chat = workload("chat")
    snapshot = ClusterSnapshot(pools={"ns/chat-a100": PoolStatus(5, ready=5)})
    plan, _ = reconcile([chat], snapshot, {"chat": {"q": Reading(value, 0.0)}}, EngineState(), Limits(), 0.0)
    decision = plan.decisions["chat"]
    assert decision.failed_triggers == ("q",) and decision.recommended_units is None
    assert plan.actions == ()  # held at 5: missing data is not a reason to scale either way


def test_the_plan_lists_every_scale_down_before_any_scale_up() -> None:
    # Freed GPUs exist before they are claimed again (`Plan`): the actuator writes in this order.
    names = ["a", "b", "c", "d"]
    snapshot = ClusterSnapshot(pools={f"ns/{n}-a100": PoolStatus(4, ready=4) for n in names})
    # a and c grow to 8, b and d shrink to 1: in workload order the ups and downs alternate.
    values = {"a": 80.0, "b": 10.0, "c": 80.0, "d": 10.0}
    readings = {n: {"q": Reading(values[n], 0.0)} for n in names}
    plan, _ = reconcile([workload(n) for n in names], snapshot, readings, EngineState(), Limits(), 0.0)
    assert [(a.pool, a.from_replicas, a.to_replicas) for a in plan.actions] == [
        ("ns/b-a100", 4, 1),
        ("ns/d-a100", 4, 1),
        ("ns/a-a100", 4, 8),
        ("ns/c-a100", 4, 8),
    ]


# ----------------------------------------------------------------------------------------------
# Why each action happened: the engine's typed kind (issue 11). Telemetry labels come from it and
# derive nothing, so a dashboard's "spill" is the give-up placement really made.

A100 = pool("w-a100", max_replicas=2, timeout=60.0)
SALAD = pool("w-salad", virtual=True, gpu="RTX4090")


def _kinds(
    backlog: float | None,
    statuses: dict[str, PoolStatus],
    *,
    limits: Limits | None = None,
    fallback: FallbackSpec | None = None,
    now: float = 100.0,
) -> dict[str, ActionKind | None]:
    """One reconcile of a backlog-per-10 workload on A100 (at most 2, a 60 s pending timeout) then
    Salad: each pool's action kind."""
    wl = workload("w", (A100, SALAD), triggers=(trigger("q", 10),), fallback=fallback)
    state = EngineState()
    # With a fallback, the failures that reached its threshold come first, one per poll.
    for t in (now - 2, now - 1, now) if fallback is not None else (now,):
        reading = Reading(backlog, t) if backlog is not None else Reading(None, t, "broker down")
        snapshot = ClusterSnapshot(statuses)
        plan, state = reconcile([wl], snapshot, {"w": {"q": reading}}, state, limits or Limits(), t)
    return {a.pool.split("/")[1]: a.kind for a in plan.actions}


def test_the_engine_gives_each_action_the_kind_of_its_cause() -> None:
    up = {"ns/w-a100": PoolStatus(1, ready=1)}
    assert _kinds(20, up) == {"w-a100": ActionKind.SCALE_UP}
    # Past A100's two replicas the rest goes to Salad: capacity spilled past the preferred pool.
    assert _kinds(40, up) == {"w-a100": ActionKind.SCALE_UP, "w-salad": ActionKind.SPILL}
    # A company cap of 1 GPU held by the running replica: the cap stops the scale-up... and a cap of
    # 2 grants less than the 4 wanted.
    assert _kinds(40, up, limits=Limits(company_max_gpus=2)) == {"w-a100": ActionKind.CAP}
    two = {"ns/w-a100": PoolStatus(2, ready=2)}
    assert _kinds(10, two) == {"w-a100": ActionKind.SCALE_DOWN}
    assert _kinds(0, two) == {"w-a100": ActionKind.COOLDOWN}


def test_pods_given_up_after_the_pending_timeout_are_a_spill_not_a_scale_down() -> None:
    # Two A100 pods Pending since t=0, past the 60 s timeout at t=100: placement gives them up and
    # their capacity goes to Salad.
    stuck = {"ns/w-a100": PoolStatus(2, ready=0, pending_since=(0.0, 0.0))}
    assert _kinds(20, stuck) == {"w-a100": ActionKind.SPILL, "w-salad": ActionKind.SPILL}
    # The same pods within their timeout are kept: nothing moves.
    assert _kinds(20, stuck, now=50.0) == {}


def test_a_size_set_by_the_fallback_is_a_fallback() -> None:
    fallback = FallbackSpec(failure_threshold=3, behavior=FallbackBehavior.STATIC, replicas=1)
    assert _kinds(None, {"ns/w-a100": PoolStatus(2, ready=2)}, fallback=fallback) == {
        "w-a100": ActionKind.FALLBACK
    }
