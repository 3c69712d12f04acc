"""The loop with fake sources and the in-memory dry-run cluster: wake-ups, debounce, isolation of a
broken trigger, backoff, what reaches the actuator, configuration swaps between reconciles
(`Controller.update_config`), and the observer hooks.

The tests that wait for the loop's own timers (polls, debounce, resync, backoff) run on looptime's
fake event-loop clock: timers of realistic length take no real time, and the loop time a test
measures is exact, not what a loaded machine made of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from autoscaler.backoff import Backoff
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.types import (
    UNLIMITED,
    ActionResult,
    BehaviorSpec,
    FallbackSpec,
    Outcome,
    Plan,
    Reading,
    Reconciled,
    ScalingRules,
    WorkloadSpec,
)
from autoscaler.sources.base import Source
from tests.eventually import eventually
from tests.factories import trigger, workload
from tests.live.fakes import FakeSource


def _controller(
    workloads: list[WorkloadSpec], sources: dict[TriggerKey, Source], **kw: object
) -> tuple[Controller, DryRunCluster]:
    cluster = DryRunCluster(workloads)
    controller = Controller(workloads, UNLIMITED, sources, cluster, cluster, **kw)  # type: ignore[arg-type]
    return controller, cluster


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@asynccontextmanager
async def _running(controller: Controller) -> AsyncIterator[None]:
    task = asyncio.create_task(controller.run())
    try:
        yield
    finally:
        controller.stop()
        await asyncio.wait_for(task, 2.0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_changed_reading_wakes_the_engine_at_once_and_the_actuator_sees_the_plan() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    backlog = FakeSource(0.0, poll_seconds=1.0)
    controller, cluster = _controller([chat], {TriggerKey("chat", "backlog"): backlog}, resync_seconds=3600)

    async with _running(controller):
        await eventually(lambda: controller.stats.reconciles >= 1)
        assert cluster.history == []
        backlog.set(45.0)  # 45 messages / 10 per replica -> 5 replicas
        took = await eventually(lambda: bool(cluster.history))
        assert took <= 1.0 + controller.debounce_seconds + 0.01  # the next poll, not the hourly resync
        assert cluster.sizes["ns/chat-a100"] == 5
        (applied,) = cluster.history
        assert applied.workload == "chat" and applied.scaled_up
        assert controller.decisions["chat"].targets == {"ns/chat-a100": 5}
        assert controller.last_plan is not None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_one_broken_trigger_never_stops_another_workload_from_scaling() -> None:
    broken = workload(
        "broken",
        triggers=(trigger("backlog"),),
        fallback=FallbackSpec(failure_threshold=1),
    )
    healthy = workload("healthy", triggers=(trigger("backlog", target=10.0),))
    dead = FakeSource(poll_seconds=1.0)
    dead.fail("trigger 'ns/broken/backlog': queue 'x' not found")
    buggy = FakeSource(5.0, poll_seconds=1.0)
    buggy.next_exception = RuntimeError("a bug in a source")
    live = FakeSource(0.0, poll_seconds=1.0)
    controller, cluster = _controller(
        [broken, healthy],
        {
            TriggerKey("broken", "backlog"): dead,
            TriggerKey("healthy", "backlog"): live,
            # A second workload's source that raises once: reported as failed, then read again.
            TriggerKey("healthy", "other"): buggy,
        },
        resync_seconds=3600,
        backoff=Backoff(base_seconds=1.0, cap_seconds=5.0),
    )

    async with _running(controller):
        await eventually(lambda: controller.stats.reconciles >= 1)
        live.set(30.0)
        await eventually(lambda: cluster.sizes["ns/healthy-a100"] == 3)
        decision = controller.decisions["broken"]
        assert decision.failed_triggers == ("backlog",)
        assert cluster.sizes["ns/broken-a100"] == 0
        reading = controller.readings["broken"]["backlog"]
        assert reading.value is None and reading.error is not None and "not found" in reading.error
        await eventually(lambda: controller.readings["healthy"]["other"].ok)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_wake_ups_within_the_debounce_window_are_coalesced() -> None:
    chat = workload("chat", triggers=(trigger("a"), trigger("b")))
    a, b = FakeSource(0.0, poll_seconds=60), FakeSource(0.0, poll_seconds=60)
    controller, _ = _controller(
        [chat],
        {TriggerKey("chat", "a"): a, TriggerKey("chat", "b"): b},
        resync_seconds=3600,
        debounce_seconds=1.0,
    )

    async with _running(controller):
        await eventually(lambda: controller.stats.reconciles >= 1)
        before = controller.stats.reconciles
        controller.wake()
        controller.wake()
        await asyncio.sleep(0.5)
        controller.wake()
        took = await eventually(lambda: controller.stats.reconciles > before)
        # The window opens at the first wake-up; a later one within it does not push it back.
        assert 0.5 <= took <= 0.5 + 0.01
        await asyncio.sleep(10)
        assert controller.stats.reconciles == before + 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_decision_only_time_changes_is_made_when_its_window_runs_out_not_at_the_resync() -> None:
    # A 20 s scale-down stabilization window: the reading drops, the workload holds 5 replicas for
    # 20 s, and then scales in: at the engine's timer (`Memo.next_wake`), not at the hourly resync.
    behavior = BehaviorSpec(
        scale_up=ScalingRules(0.0, ()), scale_down=ScalingRules(20.0, ()), cooldown_seconds=0.0
    )
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),), behavior=behavior)
    backlog = FakeSource(45.0, poll_seconds=1.0)
    controller, cluster = _controller(
        [chat], {TriggerKey("chat", "backlog"): backlog}, resync_seconds=3600, clock=_loop_time
    )

    async with _running(controller):
        await eventually(lambda: cluster.sizes.get("ns/chat-a100") == 5)
        backlog.set(15.0)  # 2 replicas' worth
        dropped = _loop_time()
        await eventually(lambda: controller.stats.reconciles >= 2)  # the drop is seen: held at 5
        assert cluster.sizes["ns/chat-a100"] == 5
        took = await eventually(lambda: cluster.sizes["ns/chat-a100"] == 2, timeout=60.0)
        assert 19.0 <= _loop_time() - dropped <= 21.5, took


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_resync_reconciles_without_any_change() -> None:
    chat = workload("chat")
    controller, _ = _controller(
        [chat],
        {TriggerKey("chat", "q"): FakeSource(1.0, poll_seconds=60)},
        resync_seconds=30,
        clock=_loop_time,  # the resync is due by the engine's clock: the fake one here too
    )

    async with _running(controller):
        await eventually(lambda: controller.stats.reconciles == 1)  # after the first readings
        await asyncio.sleep(29.9)
        assert controller.stats.reconciles == 1  # nothing changed: nothing before the resync
        await asyncio.sleep(0.2)
        assert controller.stats.reconciles == 2
        await asyncio.sleep(60)
        assert controller.stats.reconciles == 4  # one every 30 s


def test_failed_reads_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    delays: list[float] = []
    draws = iter([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5])
    dead = FakeSource(poll_seconds=1.0)
    dead.fail("broker down")
    chat = workload("chat")
    controller, _ = _controller(
        [chat],
        {TriggerKey("chat", "q"): dead},
        resync_seconds=3600,
        debounce_seconds=0,
        backoff=Backoff(base_seconds=1.0, cap_seconds=20.0, jitter=0.5),
        rng=lambda: next(draws),
    )

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 8:
            controller.stop()
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    controller.sleep = fake_sleep
    asyncio.run(controller.run())
    # 1, 2, 4, 8, 16, then capped at 20; jitter shortens by up to half: 20 * (1 - 0.5 * 1.0) = 10.
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 10.0, 15.0]


def test_a_recovered_source_polls_at_its_interval_again() -> None:
    delays: list[float] = []
    flaky = FakeSource(poll_seconds=5.0)
    flaky.fail("down")
    clock_now = [100.0]
    controller, _ = _controller(
        [workload("chat")],
        {TriggerKey("chat", "q"): flaky},
        resync_seconds=3600,
        debounce_seconds=0,
        rng=lambda: 0.0,
        clock=lambda: clock_now[0],
    )

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 2:
            flaky.set(3.0)
        if len(delays) == 4:
            controller.stop()
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    controller.sleep = fake_sleep
    asyncio.run(controller.run())
    # Failed: max(poll 5 s, backoff 1 s, 2 s); ok again: back to the 5 s interval.
    assert delays == [5.0, 5.0, 5.0, 5.0]


def test_once_reconciles_after_the_first_readings_and_returns() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    controller, cluster = _controller([chat], {TriggerKey("chat", "backlog"): FakeSource(20.0)})
    asyncio.run(controller.run(once=True))
    assert controller.stats.reconciles == 1
    assert cluster.sizes["ns/chat-a100"] == 2


class _FailingActuator:
    def __init__(self) -> None:
        self.calls: list[Plan] = []

    async def apply(self, plan: Plan) -> list[ActionResult]:
        self.calls.append(plan)
        raise RuntimeError("API server unavailable")


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_actuator_failure_is_logged_and_the_loop_goes_on() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    actuator = _FailingActuator()
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat],
        UNLIMITED,
        {TriggerKey("chat", "backlog"): FakeSource(20.0, poll_seconds=60)},
        cluster,
        actuator,
        resync_seconds=30,
    )

    async with _running(controller):
        await eventually(lambda: len(actuator.calls) == 1)
        await asyncio.sleep(30.1)  # the resync: the same plan, tried again
        assert len(actuator.calls) == 2
    assert controller.stats.apply_errors == 2


def test_the_observer_reports_the_readings_the_decision_used_not_those_polled_during_the_writes() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    backlog = FakeSource(45.0)
    key = TriggerKey("chat", "backlog")

    class SlowActuator:
        """A write during which a poll lands (the live actuator awaits the API server)."""

        def __init__(self, controller: Controller) -> None:
            self.controller = controller

        async def apply(self, plan: Plan) -> list[ActionResult]:
            self.controller.put_reading("chat", "backlog", Reading(999.0, at=1e9))
            return []

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[tuple[float | None, tuple[int, ...]]] = []

        def observe(self, reconciled: Reconciled) -> None:
            targets = tuple(reconciled.plan.decisions["chat"].targets.values())
            self.seen.append((reconciled.readings["chat"]["backlog"].value, targets))

        def set_leader(self, leader: bool) -> None: ...

        def set_ready(self, ready: bool) -> None: ...

    recorder = Recorder()
    cluster = DryRunCluster([chat])
    controller = Controller([chat], UNLIMITED, {key: backlog}, cluster, cluster, observer=recorder)
    controller.actuator = SlowActuator(controller)
    asyncio.run(controller.run(once=True))
    # 45 messages / 10 per replica: 5 replicas, and the 45 it was decided on, not the 999 of later.
    assert recorder.seen == [(45.0, (5,))]


# ---- what became of the plan (issue 11): outcomes to the observer and into the next reconcile ----


class _Answering:
    """An actuator whose writes go as told: every action gets `outcome` (and `detail`); only `scaled`
    ones resize the in-memory cluster, as only accepted writes resize a real one."""

    def __init__(self, cluster: DryRunCluster, outcome: Outcome, detail: str = "") -> None:
        self.cluster, self.outcome, self.detail = cluster, outcome, detail

    async def apply(self, plan: Plan) -> list[ActionResult]:
        if self.outcome is Outcome.SCALED:
            await self.cluster.apply(plan)
        return [ActionResult(a, self.outcome, self.detail, writes=1) for a in plan.actions]


def _asking_for_five() -> tuple[Controller, DryRunCluster]:
    """chat at 0 replicas, its backlog of 45 (10 per replica) asking for 5."""
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    return _controller([chat], {TriggerKey("chat", "backlog"): FakeSource(45.0)})


def test_the_observer_gets_what_became_of_every_action() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.outcomes: list[object] = []

        def observe(self, reconciled: Reconciled) -> None:
            self.outcomes.append(reconciled.outcomes)

        def set_leader(self, leader: bool) -> None: ...

        def set_ready(self, ready: bool) -> None: ...

    controller, cluster = _asking_for_five()
    recorder = Recorder()
    controller.observer = recorder
    controller.actuator = _Answering(cluster, Outcome.CONFLICT, "API error 409 Conflict")
    asyncio.run(controller.run(once=True))
    assert controller.last_plan is not None
    [action] = controller.last_plan.actions
    assert recorder.outcomes == [(ActionResult(action, Outcome.CONFLICT, "API error 409 Conflict", 1),)]


def test_scale_actions_total_counts_a_failed_write_as_failed_not_as_scaled() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from autoscaler.telemetry import Telemetry

    def by_outcome(telemetry: Telemetry) -> dict[str, float]:
        body, _ = telemetry.metrics_text()
        counted: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == "autoscaler_scale_actions_total":
                    counted[s.labels["outcome"]] = counted.get(s.labels["outcome"], 0.0) + s.value
        return counted

    for answer, expected in (
        (Outcome.FAILED, {"scaled": 0.0, "failed": 1.0}),
        (Outcome.NOT_LEADER, {"scaled": 0.0, "not-leader": 1.0}),
        (Outcome.SCALED, {"scaled": 1.0}),
        (None, {"scaled": 0.0, "dry-run": 1.0}),  # the dry-run cluster's own answer
    ):
        controller, cluster = _asking_for_five()
        if answer is not None:
            controller.actuator = _Answering(cluster, answer, "API error 403 Forbidden")
        telemetry = Telemetry(port=0, host="127.0.0.1")
        telemetry.set_leader(True)
        controller.observer = telemetry
        try:
            asyncio.run(controller.run(once=True))
            assert controller.last_plan is not None and len(controller.last_plan.actions) == 1
            assert by_outcome(telemetry) == expected, answer
        finally:
            telemetry.close()


class RecordingObserver:
    def __init__(self) -> None:
        self.observed: list[dict[str, object]] = []
        self.leader: list[bool] = []
        self.ready: list[bool] = []

    def observe(self, reconciled: Reconciled) -> None:
        r = reconciled
        self.observed.append(
            {"now": r.now, "workloads": len(r.workloads), "plan": r.plan, "took": r.duration_seconds}
        )

    def set_leader(self, leader: bool) -> None:
        self.leader.append(leader)

    def set_ready(self, ready: bool) -> None:
        self.ready.append(ready)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_update_config_keeps_kept_sources_and_state_and_closes_the_dropped() -> None:
    chat = workload("chat", triggers=(trigger("a", target=10.0),))
    batch = workload("batch", triggers=(trigger("b"),))
    a, b, c = (FakeSource(value, poll_seconds=1.0) for value in (30.0, 5.0, 0.0))
    cluster = DryRunCluster([chat, batch])
    controller = Controller(
        [chat, batch],
        UNLIMITED,
        {TriggerKey("chat", "a"): a, TriggerKey("batch", "b"): b},
        cluster,
        cluster,
        resync_seconds=3600,
    )

    async with _running(controller):
        await eventually(lambda: cluster.sizes["ns/chat-a100"] == 3)
        chat_state = controller.state.workloads["chat"]
        assert "batch" in controller.state.workloads
        chat2 = workload("chat", triggers=(trigger("a", target=10.0), trigger("c", target=10.0)))
        await controller.update_config(
            [chat2], UNLIMITED, {TriggerKey("chat", "a"): a, TriggerKey("chat", "c"): c}
        )
        assert b.closed and not a.closed
        assert controller.readings["chat"]["a"].value == 30.0  # kept, not re-awaited
        assert set(controller.state.workloads) == {"chat"}
        assert controller.state.workloads["chat"].recommendations[: len(chat_state.recommendations)]
        calls = b.calls
        await eventually(lambda: c.calls > 0 and controller.stats.reconciles >= 2)
        await asyncio.sleep(5)  # five of its poll intervals
        assert b.calls == calls  # no longer polled
        c.set(60.0)  # the new trigger drives the workload: max(30, 60) / 10
        await eventually(lambda: cluster.sizes["ns/chat-a100"] == 6)
        assert set(controller.decisions) == {"chat"}


def test_the_observer_sees_every_reconcile_and_readiness_after_the_first_readings() -> None:
    chat = workload("chat")
    slow = FakeSource(10.0, poll_seconds=60)
    observer = RecordingObserver()
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat], UNLIMITED, {TriggerKey("chat", "q"): slow}, cluster, cluster, observer=observer
    )

    async def go() -> None:
        await controller.reconcile_once()  # before any reading: not ready
        assert observer.ready == [] and not controller.ready
        task = asyncio.create_task(controller.run())
        try:
            await eventually(lambda: observer.ready == [True])
            assert controller.ready
            controller.leadership_changed(True)
            assert observer.leader == [True]
            assert len(observer.observed) == controller.stats.reconciles
            assert all(isinstance(o["took"], float) and o["took"] >= 0 for o in observer.observed)
        finally:
            controller.stop()
            await task

    asyncio.run(go())


def test_an_observer_that_raises_does_not_stop_the_loop() -> None:
    class Broken(RecordingObserver):
        def observe(self, reconciled: Reconciled) -> None:
            raise RuntimeError("metrics bug")

    chat = workload("chat")
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat], UNLIMITED, {TriggerKey("chat", "q"): FakeSource(20.0)}, cluster, cluster, observer=Broken()
    )
    asyncio.run(controller.run(once=True))
    assert controller.stats.observer_errors == 1 and cluster.sizes["ns/chat-a100"] == 2


def test_the_next_decision_names_the_write_that_did_not_land() -> None:
    async def go() -> None:
        controller, cluster = _asking_for_five()
        controller.actuator = _Answering(cluster, Outcome.FAILED, "API error 403 Forbidden")
        controller.put_reading("chat", "backlog", Reading(45.0, at=controller.clock()))
        first = (await controller.reconcile_once()).decisions["chat"]
        assert not any("did not land" in step for step in first.steps)

        second = await controller.reconcile_once()
        failed = "the last write did not land: ns/chat-a100 0->5 failed: API error 403 Forbidden"
        assert failed in second.decisions["chat"].steps
        assert failed in second.decisions["chat"].explain()
        # Nothing was written, so the engine plans from what the cluster has, again.
        assert [(a.from_replicas, a.to_replicas) for a in second.actions] == [(0, 5)]

        controller.actuator = cluster  # the API server lets it through now
        await controller.reconcile_once()
        assert controller.failed_writes == {}
        third = await controller.reconcile_once()
        assert not any("did not land" in step for step in third.decisions["chat"].steps)
        assert cluster.sizes["ns/chat-a100"] == 5

    asyncio.run(go())
