"""Only the triggers a policy reads may hold a workload (issue 9, item 3).

The shipped Salad example had a `ttft` Prometheus trigger beside a queue-sla policy that never reads
it; with no TTFT exporter every poll failed, `fallback: hold` tripped, and a backlog of 3,250 sat at
9 units for minutes. A trigger kept for dashboards must not freeze scaling, nor wake a workload.
"""

from __future__ import annotations

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
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
