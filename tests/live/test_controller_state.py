"""The controller's side of the engine state exchange (`export_state`, `adopt_state`): a follower
takes the leader's state for the workloads it has, never in the middle of a reconcile or a reload,
and says once what it could not carry; a leader whose state outgrows the annotation says so once and
writes less. The Lease side is in tests/kube/test_leader.py, the whole failover in
tests/e2e/test_failover_state.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.statecodec import pack_state, unpack_state
from autoscaler.engine.types import (
    UNLIMITED,
    ActionResult,
    EngineState,
    Plan,
    Reading,
    WorkloadSpec,
    WorkloadState,
)
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from autoscaler.sources.base import Source
from tests.factories import pool, trigger, workload
from tests.live.fakes import FakeSource

NOW = 1_750_000_000.0
CHAT = workload(
    "chat",
    triggers=(trigger("backlog"),),
    policy=QueueSlaPolicy(QueueSlaOptions(serviceRatePerReplica=1.0)),
)
BATCH = workload("batch", (pool("batch-a100"),))


def controller(workloads: list[WorkloadSpec], clock: list[float] | None = None) -> Controller:
    now = clock if clock is not None else [NOW]
    cluster = DryRunCluster(workloads)
    sources = {TriggerKey(w.name, t.name): FakeSource(0.0) for w in workloads for t in w.triggers}
    return Controller(workloads, UNLIMITED, sources, cluster, cluster, clock=lambda: now[0])


def leader_state(workloads: list[WorkloadSpec], state: EngineState, now: float = NOW) -> str:
    return pack_state(state, workloads, now, 1 << 20)[0].text


HELD = WorkloadState(
    last_desired=7, last_active=NOW - 3, failures={"backlog": 2}, blocked_until={"ns/chat-a100": NOW + 100}
)

BATCH_HELD = WorkloadState(last_desired=3)


def test_a_follower_takes_the_leaders_state_for_its_own_workloads() -> None:
    follower = controller([CHAT, BATCH])
    own = WorkloadState(last_desired=1)
    follower.state = EngineState({"chat": own, "batch": own})
    text = leader_state([CHAT], EngineState({"chat": HELD}))
    follower.adopt_state(text)
    # The leader's state where it has one; the follower's own where it has none (a workload the
    # leader does not manage yet, after a reload the follower saw first).
    assert follower.state == EngineState({"chat": HELD, "batch": own})
    assert follower.stats.state_adoptions == 1


def test_a_state_handed_over_during_a_reconcile_waits_until_the_next_one() -> None:
    class SlowActuator:
        def __init__(self) -> None:
            self.entered = asyncio.Event()
            self.release = asyncio.Event()

        async def apply(self, plan: Plan) -> list[ActionResult]:
            self.entered.set()
            await self.release.wait()
            return []

    async def go() -> None:
        actuator = SlowActuator()
        cluster = DryRunCluster([CHAT])
        cluster.sizes["ns/chat-a100"] = 0
        source = FakeSource(500.0)  # asks for replicas: the reconcile reaches the actuator
        sources: dict[TriggerKey, Source] = {TriggerKey("chat", "backlog"): source}
        c = Controller([CHAT], UNLIMITED, sources, cluster, actuator, clock=lambda: NOW)
        c.put_reading("chat", "backlog", await source.read())
        reconciling = asyncio.create_task(c.reconcile_once())
        await actuator.entered.wait()
        decided = c.state
        handed = leader_state([CHAT], EngineState({"chat": HELD}))
        c.adopt_state(handed)
        assert c.state is decided  # not under the reconcile's feet
        assert c.export_state() == handed  # what a renewal would write meanwhile: the newest known
        actuator.release.set()
        await reconciling
        assert c.state is decided
        await c.reconcile_once()  # takes it in before deciding
        assert c.stats.state_adoptions == 1
        assert c.state.workloads["chat"].blocked_until == {"ns/chat-a100": NOW + 100}

    asyncio.run(go())


def test_a_reload_takes_in_a_pending_state_for_the_new_workloads() -> None:
    async def go() -> None:
        sources = {TriggerKey(w.name, t.name): FakeSource(0.0) for w in (CHAT, BATCH) for t in w.triggers}
        cluster = DryRunCluster([CHAT, BATCH])
        c = Controller(
            [CHAT],
            UNLIMITED,
            {TriggerKey("chat", "backlog"): sources[TriggerKey("chat", "backlog")]},
            cluster,
            cluster,
            clock=lambda: NOW,
        )
        async with c._lock:  # a reconcile or a reload in progress
            c.adopt_state(leader_state([CHAT, BATCH], EngineState({"chat": HELD, "batch": BATCH_HELD})))
        assert c.state == EngineState()
        # The reload that adds `batch` takes the pending state in against the new workloads.
        await c.update_config([CHAT, BATCH], UNLIMITED, sources)
        assert c.state == EngineState({"chat": HELD, "batch": BATCH_HELD})

    asyncio.run(go())


def test_what_cannot_be_carried_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    follower = controller([CHAT])
    text = leader_state([CHAT], EngineState({"chat": HELD}))
    with caplog.at_level(logging.WARNING, logger="autoscaler.controller"):
        for _ in range(5):  # a follower adopts every retry period
            follower.adopt_state("not a state")
        follower.adopt_state(text)
        follower.adopt_state("not a state")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("not an encoded engine state" in w for w in warnings)
    # Unreadable text leaves the state as it was: here, the last one adopted.
    assert follower.state == EngineState({"chat": HELD})


def test_a_state_too_large_for_the_lease_is_written_smaller_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leader = controller([CHAT])
    needs = tuple((NOW - 500 + 5 * k, 100.0 - k) for k in range(100))
    memory = CHAT.policy.load_memory(  # type: ignore[attr-defined]
        {"at": NOW, "rate": 1.0, "slow": 1.0, "trend": 0.0, "needs": [list(n) for n in needs]}
    )
    leader.state = EngineState({"chat": WorkloadState(policy_memory=memory, last_desired=5)})
    full = leader.export_state()
    with caplog.at_level(logging.INFO, logger="autoscaler.controller"):
        texts = [leader.export_state(max_chars=300) for _ in range(3)]
        again = leader.export_state()
    assert texts[0] == texts[1] == texts[2] and len(texts[0]) < len(full)
    assert again == full
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "the engine state is too large for its Lease annotation: writing it with less detail",
        "the engine state fits its Lease annotation again",
    ]
    reduced = unpack_state(texts[0], [CHAT], NOW).state.workloads["chat"]
    assert reduced == WorkloadState(last_desired=5)


def test_the_lease_gets_the_state_a_full_recompute_holds_though_the_last_reconciles_skipped_workloads() -> (
    None
):
    # The controller reconciles incrementally: with readings that do not change, the workloads are
    # computed once and then skipped, their states keeping the time of that computation. What a
    # renewal writes is the state the full recompute would hold at the last reconcile (`settle`).
    async def go() -> None:
        clock = [NOW]
        c = controller([CHAT, BATCH], clock)
        for w in (CHAT, BATCH):
            for t in w.triggers:
                c.put_reading(w.name, t.name, Reading(3.0, NOW))
        full = EngineState()
        for step in range(4):
            clock[0] = NOW + 15.0 * step
            snapshot = c.cluster.snapshot()
            await c.reconcile_once()
            readings = {name: dict(got) for name, got in c.readings.items()}
            _, full = reconcile(c.workloads, snapshot, readings, full, UNLIMITED, clock[0])
        assert c.memo.recomputed == 0
        chat = c.state.workloads["chat"]
        assert chat.policy_memory.at < clock[0]  # type: ignore[attr-defined]
        exported = unpack_state(c.export_state(), [CHAT, BATCH], clock[0]).state
        assert (
            exported
            == unpack_state(leader_state([CHAT, BATCH], full, clock[0]), [CHAT, BATCH], clock[0]).state
        )

    asyncio.run(go())


def test_a_costly_export_is_handed_out_again_until_ten_times_its_cost_has_passed() -> None:
    # Settling and packing 10,000 workloads takes about 0.75 s of CPU and the Lease renews every
    # 2 s: here an export costs 0.2 s, so its text is reused for 2 s of the controller's clock.
    clock = [NOW]
    cpu = [0.0]

    def cpu_clock() -> float:
        cpu[0] += 0.2  # 0.2 s of CPU between any two readings: what one export costs
        return cpu[0]

    leader = controller([CHAT], clock)
    leader.cpu_clock = cpu_clock
    leader.state = EngineState({"chat": WorkloadState(last_desired=5)})
    first = leader.export_state()
    leader.state = EngineState({"chat": WorkloadState(last_desired=9)})
    clock[0] = NOW + 1.5
    assert leader.export_state() == first
    assert leader.stats.state_exports == 1
    clock[0] = NOW + 2.5
    fresh = unpack_state(leader.export_state(), [CHAT], clock[0]).state.workloads["chat"]
    assert fresh.last_desired == 9
    assert leader.stats.state_exports == 2


def test_a_cheap_export_is_made_afresh_every_time() -> None:
    leader = controller([CHAT])
    leader.state = EngineState({"chat": WorkloadState(last_desired=5)})
    first = leader.export_state()
    leader.state = EngineState({"chat": WorkloadState(last_desired=9)})
    second = leader.export_state()
    assert second != first
    assert unpack_state(second, [CHAT], NOW).state.workloads["chat"].last_desired == 9
