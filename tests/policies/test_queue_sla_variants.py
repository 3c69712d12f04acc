"""queue-sla's spare capacity and trend: square-root staffing (`staffingBeta`, 1 by default with
concurrencyPerReplica) and a trend counted only beyond its standard error (`trendSignificance`, 2 by
default); hand-computed cases."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from autoscaler.engine.policy import PolicyContext
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy, _Memory, _slope_error
from tests.factories import trigger, workload

WL = workload("w", triggers=(trigger("backlog"), trigger("rate"), trigger("delivered"), trigger("in-flight")))
# A profiled 2 requests/s per replica, 8 served at once; the learning triggers give no reading here,
# so the profiled rate is the one used. No look-ahead: need = rate / 2 (+ spare capacity).
STAFFED = {
    "maxWaitSeconds": 30,
    "backlogTrigger": "backlog",
    "rateTrigger": "rate",
    "serviceRatePerReplica": 2.0,
    "deliveryTrigger": "delivered",
    "inFlightTrigger": "in-flight",
    "concurrencyPerReplica": 8,
    "lookahead": False,
}


def first_call(options: dict[str, object], rate: float) -> float:
    policy = QueueSlaPolicy(QueueSlaOptions.model_validate(options))
    ctx = PolicyContext(WL, {"backlog": 0.0, "rate": rate}, frozenset(), 0.0, 0.0, 60.0, 0.0)
    units = policy.recommend(ctx).units
    assert units is not None
    return units


def test_square_root_staffing_adds_beta_sqrt_of_the_requests_in_service() -> None:
    # 100/s at 2/s per replica: 50 units, 400 requests in service; beta 1 adds sqrt(400) = 20 slots,
    # 2.5 units of 8 slots.
    assert first_call(STAFFED | {"staffingBeta": 1.0}, 100.0) == pytest.approx(52.5)
    # Four times the load, twice the spare slots: 200 units, 1600 in service, + 40 slots = 5 units.
    assert first_call(STAFFED | {"staffingBeta": 1.0}, 400.0) == pytest.approx(205.0)
    assert first_call(STAFFED | {"staffingBeta": 0.0}, 100.0) == pytest.approx(50.0)
    # Unset, beta is 1 when the concurrency is known; a headroom given replaces it (here 10 %).
    assert first_call(STAFFED, 100.0) == pytest.approx(52.5)
    assert first_call(STAFFED | {"headroom": 0.1}, 100.0) == pytest.approx(55.0)
    # Without the concurrency, requests in service cannot be counted: the default 10 % headroom.
    assert QueueSlaOptions.model_validate({"serviceRatePerReplica": 2.0}).staffing() is None


def test_the_spare_capacity_in_force_survives_a_dump_and_reload() -> None:
    # The simulator's presets rebuild options from a full dump, where every field reads as given:
    # the choice between staffing and headroom is made from the values alone.
    for given, beta, spare in (
        ({}, 1.0, 0.1),
        ({"headroom": 0.2}, None, 0.2),
        ({"staffingBeta": 0.5}, 0.5, 0.1),
    ):
        options = QueueSlaOptions.model_validate(STAFFED | given)
        for dump in (options.model_dump(), options.model_dump(by_alias=True)):
            again = QueueSlaOptions.model_validate(dump)
            assert (again.staffing(), again.spare_share()) == (beta, spare), given


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("no concurrency", {"serviceRatePerReplica": 2.0, "staffingBeta": 1.0}),
        ("with a headroom too", STAFFED | {"staffingBeta": 1.0, "headroom": 0.2}),
    ],
)
def test_square_root_staffing_needs_the_concurrency_and_replaces_the_headroom(
    case: str, options: dict[str, object]
) -> None:
    with pytest.raises(ValidationError, match="staffingBeta replaces headroom"):
        QueueSlaOptions.model_validate(options)


# A memory with a slow rate of 10/s climbing 0.01/s per second, readings scattered by 5/s (variance
# 25), and no rate reading now: the call uses these as they are. 2/s per replica and 4 replicas: over
# the 60 s horizon 10/s - 8/s queues 120 requests, to drain in 30 s: need = (ahead rate + 4) / 2.
SIGNIFICANCE = {
    "maxWaitSeconds": 30,
    "backlogTrigger": "backlog",
    "rateTrigger": "rate",
    "serviceRatePerReplica": 2.0,
    "headroom": 0.0,
    "trendSignificance": None,  # at face value (the default is 2)
}
MEMORY = _Memory(0.0, 10.0, 10.0, 0.01, (), None, 25.0)
# Startup 60 s: the slow average's lag (trend * 60 s) and the damped climb over the 60 s horizon.
LAG, DAMPED = 60.0, 0.97 * (1 - 0.97**60) / 0.03
# The trend's window is 10 x 30 s = 300 s, 30 readings of the 10 s rate window: the standard error
# of their slope is sqrt(12 * 25 / (30 * 300^2)) = 0.0105409/s per second.
SLOPE_ERROR = math.sqrt(12 * 25 / (30 * 300**2))


def recall(options: dict[str, object]) -> float:
    policy = QueueSlaPolicy(QueueSlaOptions.model_validate(options))
    ctx = PolicyContext(WL, {"backlog": 0.0}, frozenset({"rate"}), 4.0, 4.0, 60.0, 10.0, MEMORY)
    units = policy.recommend(ctx).units
    assert units is not None
    return units


def test_a_trend_within_its_standard_error_adds_no_climb() -> None:
    assert _slope_error(25.0, 300.0) == pytest.approx(SLOPE_ERROR)
    assert pytest.approx(0.0105409, rel=1e-5) == SLOPE_ERROR
    assert QueueSlaOptions.model_validate({"serviceRatePerReplica": 2.0}).trend_significance == 2.0
    # At face value: 10 + 0.01 * (60 + 27.1347) = 10.8713/s.
    assert recall(SIGNIFICANCE) == pytest.approx((10 + 0.01 * (LAG + DAMPED) + 4) / 2)
    assert recall(SIGNIFICANCE) == pytest.approx(7.43567, rel=1e-5)
    # One standard error (0.0105) exceeds the trend (0.01): the slow rate alone.
    assert recall(SIGNIFICANCE | {"trendSignificance": 1.0}) == pytest.approx(7.0)
    # Half of one: only the trend beyond 0.00527 counts.
    beyond = 0.01 - 0.5 * SLOPE_ERROR
    assert recall(SIGNIFICANCE | {"trendSignificance": 0.5}) == pytest.approx(
        (10 + beyond * (LAG + DAMPED) + 4) / 2
    )


def test_the_noise_is_the_average_squared_miss_of_the_rate_forecast_over_the_trend_window() -> None:
    # Memory at t=0: rate 10, no trend, no noise; a reading of 13/s at t=10 misses the forecast (10)
    # by 3: the noise moves 1 - exp(-10/300) of the way from 0 to 9.
    start = _Memory(0.0, 10.0, 10.0, 0.0, ((0.0, 5.0),), None, 0.0)
    ctx = PolicyContext(WL, {"backlog": 0.0, "rate": 13.0}, frozenset(), 5.0, 5.0, 60.0, 10.0, start)
    tracked = QueueSlaPolicy(QueueSlaOptions.model_validate(SIGNIFICANCE | {"trendSignificance": 2.0}))
    memory = tracked.recommend(ctx).memory
    assert isinstance(memory, _Memory) and memory.noise == pytest.approx(9 * (1 - math.exp(-10 / 300)))
    # At face value nothing is tracked: the state of every other workload stays as it was.
    plain = QueueSlaPolicy(QueueSlaOptions.model_validate(SIGNIFICANCE)).recommend(ctx).memory
    assert isinstance(plain, _Memory) and plain.noise == 0.0
    assert "noise" not in tracked.dump_memory(plain)  # type: ignore[operator]
    assert tracked.load_memory(tracked.dump_memory(memory)) == memory
