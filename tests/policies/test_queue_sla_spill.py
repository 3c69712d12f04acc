"""queue-sla orders no forecast climb on a pool slower to start than the first (`spillOnTrend` off):
beyond what runs, the measured load and queue only; hand-computed cases."""

from __future__ import annotations

import pytest

from autoscaler.engine.policy import PolicyContext
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy, _Memory
from tests.factories import pool, trigger, workload
from tests.policies.test_queue_sla_burst import OPTIONS as BURST_OPTIONS

# A regular pool starting in 60 s, then a virtual one in 180 s.
WL = workload(
    "w",
    pools=(pool("w-a100"), pool("w-salad", virtual=True, startup=180.0)),
    triggers=(trigger("backlog"), trigger("rate")),
)
# 2/s per replica and no spare (the burst order's round figures), the trend at face value.
OPTIONS = BURST_OPTIONS | {"trendSignificance": None}
# A slow rate of 10/s climbing 0.01/s per second, and no rate reading now: the call uses these.
MEMORY = _Memory(0.0, 10.0, 10.0, 0.01, ((0.0, 4.0),), None)


def units(options: dict[str, object], startup: float, running: float) -> float:
    policy = QueueSlaPolicy(QueueSlaOptions.model_validate(OPTIONS | options))
    ctx = PolicyContext(WL, {"backlog": 0.0}, frozenset({"rate"}), running, running, startup, 10.0, MEMORY)
    rec = policy.recommend(ctx)
    assert rec.units is not None
    return rec.units


def test_a_climb_does_not_spill_to_a_slower_pool() -> None:
    # The first pool is full: new replicas start on the 180 s pool, looking 120 s ahead. 4 units run
    # and serve 8/s: the queue grows by 2/s over 120 s to 240, drained in 30 s: 8/s more.
    # The climb: 0.01 x (180 s of lag + 0.97 (1 - 0.97^120) / 0.03 damped) = 2.115/s.
    damped = 0.97 * (1 - 0.97**120) / 0.03
    with_climb = (10.0 + 0.01 * (180.0 + damped) + 8.0) / 2.0
    assert units({"spillOnTrend": True}, 180.0, 4.0) == pytest.approx(with_climb)
    assert with_climb == pytest.approx(10.0575, rel=1e-4)
    # Off (the default): the measured 10/s and the queue only.
    assert units({}, 180.0, 4.0) == pytest.approx((10.0 + 8.0) / 2.0)


def test_the_first_pool_with_room_takes_the_climb() -> None:
    # Startup 60 s: the first pool has room, its replicas come in time for the climb.
    damped = 0.97 * (1 - 0.97**60) / 0.03
    # Looking 60 s ahead: queue (10 - 8) * 60 = 120, 4/s to drain it; lag max(60, 30) = 60 s.
    expected = (10.0 + 0.01 * (60.0 + damped) + 4.0) / 2.0
    assert units({}, 60.0, 4.0) == pytest.approx(expected)
    assert units({"spillOnTrend": True}, 60.0, 4.0) == pytest.approx(expected)


def test_what_runs_is_never_cut_by_it() -> None:
    # 5.5 units run and serve 11/s: no queue. The need with the climb, 12.115 / 2 = 6.06 units, is
    # above them, the measured need (10 / 2 = 5) below: the climb is not ordered, and neither are
    # running units given back for it.
    assert units({"spillOnTrend": True}, 180.0, 5.5) == pytest.approx((10.0 + 0.01 * 211.497) / 2.0, rel=1e-4)
    rec = QueueSlaPolicy(QueueSlaOptions.model_validate(OPTIONS)).recommend(
        PolicyContext(WL, {"backlog": 0.0}, frozenset({"rate"}), 5.5, 5.5, 180.0, 10.0, MEMORY)
    )
    assert rec.units == pytest.approx(5.5)
    assert rec.reason is not None and "no climb on a slower pool" in rec.reason
