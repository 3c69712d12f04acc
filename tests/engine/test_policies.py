"""The built-in policies and the registry that loads policies by name."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import MetricType, TriggerSpec, WorkloadSpec
from autoscaler.policies import registry
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from autoscaler.policies.target import TargetOptions, TargetPolicy
from tests.factories import trigger, workload


def ctx(
    wl: WorkloadSpec,
    values: dict[str, float],
    current: float = 0,
    ready: float | None = None,
    startup: float = 60,
) -> PolicyContext:
    failed = frozenset(t.name for t in wl.triggers if t.name not in values)
    return PolicyContext(wl, values, failed, current, current if ready is None else ready, startup, 0.0)


TARGET = TargetPolicy(TargetOptions())


@pytest.mark.parametrize(
    ("case", "triggers", "values", "current", "expected"),
    [
        # AverageValue: usage / target per replica.
        ("average value", (trigger("q", 10),), {"q": 95}, 2, 9.5),
        # Within the 10 % HPA tolerance of the current size: keep it.
        ("tolerance holds", (trigger("q", 10),), {"q": 105}, 10, 10),
        # Just outside the tolerance: move.
        ("tolerance exceeded", (trigger("q", 10),), {"q": 115}, 10, 11.5),
        # Several triggers: the largest wish wins.
        ("max across triggers", (trigger("a", 10), trigger("b", 1)), {"a": 30, "b": 7}, 1, 7),
        # A failed trigger is skipped, not read as zero.
        ("failed trigger skipped", (trigger("a", 10), trigger("b", 1)), {"a": 30}, 1, 3),
        # Value target scales the ready size by usage/target.
        ("value target", (TriggerSpec("lat", "prometheus", 0.5, MetricType.VALUE),), {"lat": 1.0}, 4, 8),
        # Value target from zero: usage/target.
        ("value from zero", (TriggerSpec("lat", "prometheus", 0.5, MetricType.VALUE),), {"lat": 1.0}, 0, 2),
    ],
)
def test_target(
    case: str, triggers: tuple[TriggerSpec, ...], values: dict[str, float], current: float, expected: float
) -> None:
    rec = TARGET.recommend(ctx(workload("w", triggers=triggers), values, current))
    assert rec.units == pytest.approx(expected), case


def test_target_without_any_reading_cannot_tell() -> None:
    assert TARGET.recommend(ctx(workload("w"), {}, 3)).units is None


SLA = QueueSlaPolicy(
    QueueSlaOptions(
        maxWaitSeconds=30,
        backlogTrigger="backlog",
        rateTrigger="rate",
        serviceRatePerReplica=2.0,
        headroom=0.0,
    )
)
SLA_WL = workload("w", triggers=(trigger("backlog"), trigger("rate")))


def test_queue_sla_serves_arrivals_and_drains_backlog_within_the_sla() -> None:
    # 4/s arrivals need 2 replicas; 120 queued must drain in 30 s: 4/s more, 2 more replicas.
    rec = SLA.recommend(ctx(SLA_WL, {"backlog": 120, "rate": 4}, current=4))
    assert rec.units == pytest.approx(4.0)


def run_sla(
    policy: QueueSlaPolicy, samples: list[tuple[float, float, float]], current: float = 1, startup: float = 90
) -> list[float]:
    """Feed (time, backlog, rate) readings one call at a time, threading the policy's memory."""
    memory: object = None
    out = []
    for now, backlog, rate in samples:
        c = PolicyContext(
            SLA_WL, {"backlog": backlog, "rate": rate}, frozenset(), current, current, startup, now, memory
        )
        rec = policy.recommend(c)
        assert rec.units is not None
        out.append(rec.units)
        memory = rec.memory
    return out


def test_queue_sla_sizes_for_the_rate_a_startup_ahead_when_load_climbs() -> None:
    # Arrivals climb by 0.02/s every second for ten minutes and end at 14/s, a need of 7 units, with
    # 5 units running. Looking one startup (90 s) ahead it asks for more than 7; without look-ahead
    # its average lags the climb and it asks for less.
    climbing = [(float(t), 0.0, 2.0 + 0.02 * t) for t in range(601)]
    ahead = run_sla(SLA, climbing, current=5)[-1]
    blind = run_sla(QueueSlaPolicy(SLA.options.model_copy(update={"lookahead": False})), climbing, current=5)[
        -1
    ]
    assert blind < 7.0 < ahead


def test_queue_sla_smooths_a_spike_shorter_than_the_sla() -> None:
    # A 3 s spike to 40/s on a 2/s stream: the queue absorbs it within 30 s; no 20-replica order.
    spike = [(float(t), 0.0, 40.0 if 100 <= t < 103 else 2.0) for t in range(200)]
    assert max(run_sla(SLA, spike)) < 5


def test_queue_sla_holds_the_highest_need_then_lets_go() -> None:
    # 10/s for a minute, then nothing: with the flat hold, the highest need stays for the hold time
    # (600 s), then falls. The decaying hold (the default) has its own tests (test_queue_sla_hold.py).
    flat = QueueSlaPolicy(SLA.options.model_copy(update={"hold_decay": False, "hold_seconds": 600.0}))
    load = [(float(t), 0.0, 10.0 if t < 60 else 0.0) for t in range(800)]
    units = run_sla(flat, load)
    peak = max(units[:60])
    assert units[590] == peak
    assert units[-1] < peak / 2


def test_queue_sla_keeps_what_runs_at_first_sight() -> None:
    # A restarted autoscaler facing a momentarily quiet queue does not cut a warm workload at once.
    assert run_sla(SLA, [(0.0, 0.0, 0.0)], current=40)[0] == 40


def test_queue_sla_keeps_what_runs_when_its_memory_is_older_than_the_hold() -> None:
    # A memory whose every need has left the hold window (the backlog unread for longer than that,
    # or a leader's state adopted long after it was written) is no better than none: what runs stays.
    later = run_sla(SLA, [(0.0, 400.0, 0.0), (5000.0, 0.0, 0.0)], current=4, startup=0)
    assert later == [pytest.approx(400 / 30 / 2), 4]


def test_queue_sla_without_a_backlog_reading_cannot_tell() -> None:
    assert SLA.recommend(ctx(SLA_WL, {"rate": 4}, current=1)).units is None


def test_queue_sla_without_a_rate_reading_sizes_for_the_backlog_alone() -> None:
    rec = SLA.recommend(ctx(SLA_WL, {"backlog": 60}, current=0, startup=0))
    assert rec.units == pytest.approx(1.0)  # 60 queued, drained in 30 s at 2/s per replica
    assert "no fresh reading" in rec.reason


def test_queue_sla_checks_its_trigger_names() -> None:
    wl = workload("w", triggers=(trigger("queue"),))
    assert [f for f, _ in SLA.check(wl)] == ["backlogTrigger", "rateTrigger"]


def test_registry_builds_builtins_with_their_own_options() -> None:
    policy = registry.build_policy("queue-sla", None, {"serviceRatePerReplica": 3, "maxWaitSeconds": 10})
    assert isinstance(policy, QueueSlaPolicy) and policy.max_wait_seconds == 10


@pytest.mark.parametrize(
    ("case", "type_name", "python", "options", "field", "message"),
    [
        # A typo in the type names the known ones.
        ("unknown type", "queue-sl", None, {}, "type", "known: "),
        # Options are validated by the policy's own model.
        (
            "bad option",
            "queue-sla",
            None,
            {"serviceRatePerReplica": -1},
            "serviceRatePerReplica",
            "greater than or equal to 0.000001",
        ),
        # Unknown options are refused.
        ("unknown option", "target", None, {"tolerence": 0.2}, "tolerence", "Extra inputs"),
        # python: refuses modules the operator did not allow, without importing them.
        ("disallowed module", None, "os:system", {}, "python", "not allowed"),
        # python: needs module:Class.
        ("malformed python", None, "just_a_module", {}, "python", "package.module:Class"),
    ],
)
def test_registry_refuses_with_a_located_reason(
    case: str, type_name: str | None, python: str | None, options: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(registry.PolicyLoadError) as err:
        registry.build_policy(type_name, python, options)
    assert err.value.field == field, case
    assert message in str(err.value), case


class Always:
    """A third-party policy: always asks for `units`."""

    name = "always"

    class Options(BaseModel):
        units: float = 1.0

    def __init__(self, options: Always.Options) -> None:
        self.units = options.units

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        return Recommendation(self.units, f"always {self.units}")


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    mod = types.ModuleType("acme_policies")
    mod.Always = Always  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "acme_policies", mod)
    return "acme_policies"


def test_python_policy_loads_from_an_allowed_module(plugin_module: str) -> None:
    policy = registry.build_policy(
        None, f"{plugin_module}:Always", {"units": 3}, allowed_modules=[plugin_module]
    )
    assert policy.recommend(ctx(workload("w"), {"q": 1})).units == 3


def test_python_policy_with_a_lookalike_prefix_is_refused(plugin_module: str) -> None:
    with pytest.raises(registry.PolicyLoadError):
        registry.build_policy(None, f"{plugin_module}:Always", {}, allowed_modules=["acme"])


def test_entry_point_policies_are_found_by_name(plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="always", value=f"{plugin_module}:Always", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else []
    )
    assert "always" in registry.known_types()
    assert registry.build_policy("always", None, {"units": 2}).recommend(ctx(workload("w"), {})).units == 2
