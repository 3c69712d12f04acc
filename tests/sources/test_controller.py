"""The loop with fake sources and the in-memory dry-run cluster: wake-ups, debounce, isolation of a
broken trigger, backoff, and what reaches the actuator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from autoscaler.backoff import Backoff
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.types import (
    UNLIMITED,
    ActionResult,
    FallbackSpec,
    Outcome,
    Plan,
    Reading,
    WorkloadSpec,
)
from autoscaler.sources.base import Source
from tests.factories import trigger, workload
from tests.sources.fakes import FakeSource


def _controller(
    workloads: list[WorkloadSpec], sources: dict[TriggerKey, Source], **kw: object
) -> tuple[Controller, DryRunCluster]:
    cluster = DryRunCluster(workloads)
    controller = Controller(workloads, UNLIMITED, sources, cluster, cluster, **kw)  # type: ignore[arg-type]
    return controller, cluster


async def _eventually(check: Callable[[], bool], wait: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def _running(controller: Controller, body: Callable[[], Awaitable[None]]) -> None:
    async def go() -> None:
        task = asyncio.create_task(controller.run())
        try:
            await body()
        finally:
            controller.stop()
            await asyncio.wait_for(task, 2.0)

    asyncio.run(go())


def test_a_changed_reading_wakes_the_engine_at_once_and_the_actuator_sees_the_plan() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    backlog = FakeSource(0.0)
    controller, cluster = _controller([chat], {TriggerKey("chat", "backlog"): backlog}, resync_seconds=3600)

    async def body() -> None:
        await _eventually(lambda: controller.stats.reconciles >= 1)
        assert cluster.history == []
        backlog.set(45.0)  # 45 messages / 10 per replica -> 5 replicas
        await _eventually(lambda: bool(cluster.history))
        assert cluster.sizes["ns/chat-a100"] == 5
        (applied,) = cluster.history
        assert applied.workload == "chat" and applied.scaled_up
        assert controller.decisions["chat"].targets == {"ns/chat-a100": 5}
        assert controller.last_plan is not None

    _running(controller, body)


def test_one_broken_trigger_never_stops_another_workload_from_scaling() -> None:
    broken = workload(
        "broken",
        triggers=(trigger("backlog"),),
        fallback=FallbackSpec(failure_threshold=1),
    )
    healthy = workload("healthy", triggers=(trigger("backlog", target=10.0),))
    dead = FakeSource()
    dead.fail("trigger 'ns/broken/backlog': queue 'x' not found")
    buggy = FakeSource(5.0)
    buggy.next_exception = RuntimeError("a bug in a source")
    live = FakeSource(0.0)
    controller, cluster = _controller(
        [broken, healthy],
        {
            TriggerKey("broken", "backlog"): dead,
            TriggerKey("healthy", "backlog"): live,
            # A second workload's source that raises once: reported as failed, then read again.
            TriggerKey("healthy", "other"): buggy,
        },
        resync_seconds=3600,
        backoff=Backoff(base_seconds=0.01, cap_seconds=0.05),
    )

    async def body() -> None:
        await _eventually(lambda: controller.stats.reconciles >= 1)
        live.set(30.0)
        await _eventually(lambda: cluster.sizes["ns/healthy-a100"] == 3)
        decision = controller.decisions["broken"]
        assert decision.failed_triggers == ("backlog",)
        assert cluster.sizes["ns/broken-a100"] == 0
        reading = controller.readings["broken"]["backlog"]
        assert reading.value is None and reading.error is not None and "not found" in reading.error
        await _eventually(lambda: controller.readings["healthy"]["other"].ok)

    _running(controller, body)


def test_wake_ups_within_the_debounce_window_are_coalesced() -> None:
    chat = workload("chat", triggers=(trigger("a"), trigger("b")))
    a, b = FakeSource(0.0, poll_seconds=60), FakeSource(0.0, poll_seconds=60)
    controller, _ = _controller(
        [chat],
        {TriggerKey("chat", "a"): a, TriggerKey("chat", "b"): b},
        resync_seconds=3600,
        debounce_seconds=0.05,
    )

    async def body() -> None:
        await _eventually(lambda: controller.stats.reconciles >= 1)
        before = controller.stats.reconciles
        controller.wake()
        controller.wake()
        await asyncio.sleep(0.01)
        controller.wake()
        await _eventually(lambda: controller.stats.reconciles > before)
        await asyncio.sleep(0.1)
        assert controller.stats.reconciles == before + 1

    _running(controller, body)


def test_the_resync_reconciles_without_any_change() -> None:
    chat = workload("chat")
    controller, _ = _controller(
        [chat], {TriggerKey("chat", "q"): FakeSource(1.0, poll_seconds=60)}, resync_seconds=0.02
    )

    async def body() -> None:
        await _eventually(lambda: controller.stats.reconciles >= 4)

    _running(controller, body)


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


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (1, 0.0, 0.5),  # the first retry waits the base
        (3, 0.0, 2.0),  # doubling
        (10, 0.0, 30.0),  # capped
        (10, 1.0, 15.0),  # jitter takes off at most half
        (5000, 0.0, 30.0),  # a long outage does not overflow the power
    ],
)
def test_backoff_delay(attempt: int, draw: float, expected: float) -> None:
    assert Backoff(base_seconds=0.5, cap_seconds=30.0).delay(attempt, lambda: draw) == expected


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


def test_an_actuator_failure_is_logged_and_the_loop_goes_on() -> None:
    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    actuator = _FailingActuator()
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat],
        UNLIMITED,
        {TriggerKey("chat", "backlog"): FakeSource(20.0)},
        cluster,
        actuator,
        resync_seconds=0.02,
    )

    async def body() -> None:
        await _eventually(lambda: len(actuator.calls) >= 2)

    _running(controller, body)
    assert controller.stats.apply_errors >= 2


def test_a_retry_steps_through_its_backoff_with_the_injected_random_source_and_starts_over() -> None:
    from autoscaler.backoff import Retry

    draws = iter([0.0, 0.5, 0.0, 0.0])
    retry = Retry(Backoff(base_seconds=1.0, cap_seconds=3.0, jitter=0.5), rng=lambda: next(draws))
    assert [retry.next(), retry.next(), retry.next()] == [1.0, 1.5, 3.0]  # 1, 2 shortened by 25 %, capped
    retry.reset()
    assert retry.next() == 1.0


def test_the_observer_reports_the_readings_the_decision_used_not_those_polled_during_the_writes() -> None:
    from autoscaler.engine.types import Reading

    chat = workload("chat", triggers=(trigger("backlog", target=10.0),))
    backlog = FakeSource(45.0)
    key = TriggerKey("chat", "backlog")

    class SlowActuator:
        """A write during which a poll lands (the live actuator awaits the API server)."""

        def __init__(self, controller: Controller) -> None:
            self.controller = controller

        async def apply(self, plan: Plan) -> list[ActionResult]:
            self.controller.readings["chat"]["backlog"] = Reading(999.0, at=1e9)
            return []

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[tuple[float | None, tuple[int, ...]]] = []

        def observe(self, *, readings, plan, **_: object) -> None:  # type: ignore[no-untyped-def]
            targets = tuple(plan.decisions["chat"].targets.values())
            self.seen.append((readings["chat"]["backlog"].value, targets))

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

        def observe(self, **kwargs: object) -> None:
            self.outcomes.append(kwargs.get("outcomes"))

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


def test_the_next_decision_names_the_write_that_did_not_land() -> None:
    async def go() -> None:
        controller, cluster = _asking_for_five()
        controller.actuator = _Answering(cluster, Outcome.FAILED, "API error 403 Forbidden")
        controller.readings["chat"]["backlog"] = Reading(45.0, at=controller.clock())
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
