"""A cluster that cannot be reached (`ClusterSnapshot.unreachable`): its pools hold exactly, as
paused ones do, their last known GPUs (pending and terminating pods included) keep counting against
the company cap, the other clusters go on deciding, and the decision says which cluster and since
when."""

from __future__ import annotations

import dataclasses

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, Limits, PoolStatus
from tests.factories import pool, read, workload

# `chat` has a pool in each cluster; `batch` lives in c2 only.
CHAT = workload("chat", (pool("chat-c1", cluster="c1"), pool("chat-c2", cluster="c2", gpu="H100")))
BATCH = workload("batch", (pool("batch-c2", cluster="c2", gpu="H100"),))
LIMITS = Limits(company_max_gpus=10)


def _targets(snapshot: ClusterSnapshot, chat: float, batch: float) -> dict[str, int]:
    readings = {"chat": {"q": read(chat)}, "batch": {"q": read(batch)}}
    plan, _ = reconcile([CHAT, BATCH], snapshot, readings, EngineState(), LIMITS, 100.0)
    return {k: v for d in plan.decisions.values() for k, v in d.targets.items()}


SEEN = ClusterSnapshot(
    {
        "ns/chat-c1": PoolStatus(1, ready=1),
        # c2 as last seen: 3 replicas, one of them Pending since long ago, and 2 pods terminating.
        "ns/chat-c2": PoolStatus(3, ready=2, pending_since=(0.0,), terminating=2),
        "ns/batch-c2": PoolStatus(2, ready=2),
    }
)
DOWN = dataclasses.replace(SEEN, unreachable={"c2": 40.0})


def test_pools_of_an_unreachable_cluster_hold_exactly() -> None:
    # Both want far less than they have: nothing in c2 may shrink (nor grow), c1 may.
    targets = _targets(DOWN, chat=0.0, batch=0.0)
    assert targets["ns/chat-c2"] == 3
    assert targets["ns/batch-c2"] == 2
    # The same wishes with c2 reachable shrink c2's pools.
    reachable = _targets(SEEN, chat=0.0, batch=0.0)
    assert reachable["ns/chat-c2"] < 3 and reachable["ns/batch-c2"] < 2


def test_its_last_known_gpus_keep_counting_against_the_company_cap() -> None:
    # c2 holds 3 + 2 terminating + 2 = 7 GPUs; the cap is 10, so chat gets at most 3 in c1 however
    # much it wants, and none of it may go to c2.
    targets = _targets(DOWN, chat=1000.0, batch=0.0)
    assert targets["ns/chat-c1"] == 3
    assert targets["ns/chat-c2"] == 3


def test_the_decision_names_the_cluster_and_since_when() -> None:
    readings = {"chat": {"q": read(1000.0)}, "batch": {"q": read(0.0)}}
    plan, _ = reconcile([CHAT, BATCH], DOWN, readings, EngineState(), LIMITS, 100.0)
    note = (
        "cluster c2 unreachable since t=40.0s (60s): its pools hold their size, and their last "
        "known GPUs keep counting against the caps"
    )
    assert plan.decisions["chat"].steps[-1] == note
    assert plan.decisions["batch"].steps[-1] == note
    assert all(a.pool == "ns/chat-c1" for a in plan.actions)


def test_a_reachable_cluster_adds_nothing_to_the_explanation() -> None:
    readings = {"chat": {"q": read(10.0)}, "batch": {"q": read(0.0)}}
    plan, _ = reconcile([CHAT], SEEN, readings, EngineState(), LIMITS, 100.0)
    assert not any("unreachable" in step for step in plan.decisions["chat"].steps)
