"""The previous reconcile's writes that did not land come in with the snapshot: the decision of the
workload they belong to names them, and nothing else about the decision changes (sizes come from
what the cluster has, which never counted the write)."""

from __future__ import annotations

import dataclasses

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ActionResult,
    ClusterSnapshot,
    EngineState,
    Limits,
    Outcome,
    PoolStatus,
    ScaleAction,
)
from tests.factories import read, workload

CHAT = workload("chat")
BATCH = workload("batch")
READINGS = {"chat": {"q": read(50.0)}, "batch": {"q": read(20.0)}}
SNAPSHOT = ClusterSnapshot({"ns/chat-a100": PoolStatus(1, ready=1), "ns/batch-a100": PoolStatus(2, ready=2)})


def test_the_decision_names_the_write_that_did_not_land_and_decides_the_same() -> None:
    refused = ActionResult(
        ScaleAction("ns/chat-a100", "chat", 1, 5, "q 50 > 10/replica"),
        Outcome.FAILED,
        "API error 403 Forbidden",
    )
    told = dataclasses.replace(SNAPSHOT, failed_writes={"ns/chat-a100": refused})
    plain, _ = reconcile([CHAT, BATCH], SNAPSHOT, READINGS, EngineState(), Limits(), 10.0)
    plan, _ = reconcile([CHAT, BATCH], told, READINGS, EngineState(), Limits(), 10.0)

    note = "the last write did not land: ns/chat-a100 1->5 failed: API error 403 Forbidden"
    assert plan.decisions["chat"].steps == (*plain.decisions["chat"].steps, note)
    assert note in plan.decisions["chat"].explain()
    assert plan.decisions["batch"] == plain.decisions["batch"]  # not its pool
    # The same sizes, planned again from the replicas the cluster has.
    assert [(a.pool, a.from_replicas, a.to_replicas) for a in plan.actions] == [
        (a.pool, a.from_replicas, a.to_replicas) for a in plain.actions
    ]
    assert ("ns/chat-a100", 1, 5) in [(a.pool, a.from_replicas, a.to_replicas) for a in plan.actions]
