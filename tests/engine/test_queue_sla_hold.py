"""The decaying hold of queue-sla: a need is held whole for the first pool's p95 startup, then a
share of it falling linearly to nothing at holdSeconds (hand-computed cases)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.engine.policy import PolicyContext
from autoscaler.engine.types import WorkloadSpec
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from tests.factories import pool, trigger, workload

# need = backlog / maxWait / serviceRate with no rate and no look-ahead: a backlog of 600 -> 10 units.
# A 1800 s hold: round figures (the default, 2700 s, is checked on its own).
POLICY = QueueSlaPolicy(
    QueueSlaOptions(
        maxWaitSeconds=30,
        backlogTrigger="backlog",
        serviceRatePerReplica=2.0,
        headroom=0.0,
        lookahead=False,
        holdSeconds=1800,
    )
)
WL = workload("w", triggers=(trigger("backlog"),))  # one pool, startup 60 s, no p95 known


def run(
    policy: QueueSlaPolicy, wl: WorkloadSpec, backlogs: dict[float, float], until: float
) -> dict[float, float]:
    """One call every 5 s with the backlog of `backlogs` at its time (else 0); units by time."""
    memory: object = None
    out = {}
    for step in range(int(until / 5) + 1):
        now = step * 5.0
        ctx = PolicyContext(wl, {"backlog": backlogs.get(now, 0.0)}, frozenset(), 1.0, 1.0, 60.0, now, memory)
        rec = policy.recommend(ctx)
        assert rec.units is not None
        out[now] = rec.units
        memory = rec.memory
    return out


def test_defaults_decay_the_hold_over_2700_seconds() -> None:
    defaults = QueueSlaOptions.model_validate({"serviceRatePerReplica": 2.0})
    assert defaults.hold_decay is True
    assert defaults.hold_seconds == 2700


def test_a_need_is_held_whole_for_the_startup_then_falls_linearly_to_nothing() -> None:
    units = run(POLICY, WL, {0.0: 600.0}, 1900)
    assert units[0.0] == pytest.approx(10.0)
    assert units[60.0] == pytest.approx(10.0)  # flat for the pool's startup (60 s, no p95 given)
    # Halfway down the 1740 s of decay: 60 + 870 s.
    assert units[930.0] == pytest.approx(5.0)
    assert units[1800.0] == pytest.approx(0.0)
    assert all(units[t] >= units[t + 5.0] for t in units if t + 5.0 in units)


def test_the_flat_part_is_the_first_pools_p95_startup() -> None:
    first = replace(pool("w-a100"), startup_p95_seconds=120.0)
    wl = replace(WL, pools=(first, pool("w-salad", virtual=True)))
    units = run(POLICY, wl, {0.0: 600.0}, 1000)
    assert units[120.0] == pytest.approx(10.0)
    # 840 s into the 1680 s of decay.
    assert units[960.0] == pytest.approx(5.0)


def test_an_older_higher_need_and_a_later_lower_one_each_count_by_their_own_age() -> None:
    # 10 units at t=0 and 6 at t=600; at t=1000 (flat 60 s, decay over 1740 s) the first weighs
    # 1 - 940/1740 and the second 1 - 340/1740: the later, lower need is the higher now.
    units = run(POLICY, WL, {0.0: 600.0, 600.0: 360.0}, 1000)
    assert units[1000.0] == pytest.approx(max(10 * (1 - 940 / 1740), 6 * (1 - 340 / 1740)))
    assert units[1000.0] == pytest.approx(6 * (1 - 340 / 1740))


def test_without_decay_the_hold_is_flat() -> None:
    flat = QueueSlaPolicy(POLICY.options.model_copy(update={"hold_decay": False}))
    units = run(flat, WL, {0.0: 600.0}, 1900)
    assert units[1795.0] == pytest.approx(10.0)
    assert units[1900.0] == pytest.approx(0.0)
