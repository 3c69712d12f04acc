"""queue-sla's burst order (`burstOrder`): while the queue outruns what the ready replicas drain
within the SLA, the queue term is sized on the instant rate with only the ready replicas serving,
that order stands until they catch up, and the hold never remembers it; hand-computed cases."""

from __future__ import annotations

import math

import pytest

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy, _Memory
from tests.factories import trigger, workload

WL = workload("w", triggers=(trigger("backlog"), trigger("rate")))  # startup 60 s
# A profiled 2 requests/s per replica and no spare capacity: round figures.
OPTIONS = {
    "maxWaitSeconds": 30,
    "backlogTrigger": "backlog",
    "rateTrigger": "rate",
    "serviceRatePerReplica": 2.0,
    "headroom": 0.0,
}
POLICY = QueueSlaPolicy(QueueSlaOptions.model_validate(OPTIONS))


def call(
    policy: QueueSlaPolicy,
    backlog: float,
    rate: float,
    ordered: float,
    ready: float,
    now: float,
    memory: object,
) -> Recommendation:
    values = {"backlog": backlog, "rate": rate}
    return policy.recommend(PolicyContext(WL, values, frozenset(), ordered, ready, 60.0, now, memory))


def test_an_outrun_queue_is_ordered_for_at_the_instant_rate_with_only_ready_replicas_serving() -> None:
    # First sight, 10 units ordered of which 4 are ready, 600 waiting, 20/s arriving. The 4 ready
    # ones drain 2 * 4 * 30 = 240 within the SLA: the queue outruns them.
    # The need counts every unit ordered as serving over the 60 s horizon: queue 600 + (20 - 20) * 60
    # = 600, need (20 + 600 / 30) / 2 = 20 units.
    # With only the 4 ready ones serving: 600 + (20 - 8) * 60 = 1320, 720 more to drain in 30 s at
    # 2/s per unit: 12 units more.
    rec = call(POLICY, 600.0, 20.0, 10.0, 4.0, 0.0, None)
    assert rec.units == pytest.approx(32.0)
    assert isinstance(rec.memory, _Memory) and rec.memory.burst == pytest.approx(12.0)
    assert "12.00 units more while the queue outruns the ready replicas" in (rec.reason or "")
    # The same call without it: the need alone.
    plain = QueueSlaPolicy(QueueSlaOptions.model_validate(OPTIONS | {"burstOrder": False}))
    assert call(plain, 600.0, 20.0, 10.0, 4.0, 0.0, None).units == pytest.approx(20.0)


def test_the_order_stands_while_the_queue_outruns_the_ready_replicas_and_goes_when_they_catch_up() -> None:
    first = call(POLICY, 600.0, 20.0, 10.0, 4.0, 0.0, None)
    # 5 s later the burst has stopped arriving (the instant rate falls to 14.33/s) and 250 still
    # wait, more than the 4 ready units drain in 30 s (240). Ordered anew it would be
    # (250 + (14.33 - 8) * 60) / 30 / 2 = 10.5 units: the order of 12 stands, on top of the need of
    # now (the last one the hold remembers).
    later = call(POLICY, 250.0, 0.0, 32.0, 4.0, 5.0, first.memory)
    assert isinstance(later.memory, _Memory) and later.memory.burst == pytest.approx(12.0)
    assert later.memory.rate == pytest.approx(20.0 * math.exp(-5.0 / 15.0))
    need_now = later.memory.needs[-1][1]
    assert later.units == pytest.approx(max(20.0, need_now + 12.0))
    # 30 units ready now drain 2 * 30 * 30 = 1800 within the SLA: the burst order goes, and what is
    # left is the hold of the needs alone (the highest, 20, from the first call), never the 32.
    caught_up = call(POLICY, 250.0, 0.0, 32.0, 30.0, 10.0, later.memory)
    assert isinstance(caught_up.memory, _Memory) and caught_up.memory.burst == 0.0
    assert caught_up.units == pytest.approx(max(need for _, need in caught_up.memory.needs))
    assert caught_up.units == pytest.approx(20.0)


def test_a_queue_the_ready_replicas_drain_within_the_sla_orders_nothing_more() -> None:
    # 4 ready units drain 240 within 30 s: a backlog of 200 is theirs, whatever the instant rate.
    rec = call(POLICY, 200.0, 20.0, 10.0, 4.0, 0.0, None)
    assert isinstance(rec.memory, _Memory) and rec.memory.burst == 0.0
    # need: queue 200 + (20 - 20) * 60 = 200, (20 + 200 / 30) / 2 units.
    assert rec.units == pytest.approx((20.0 + 200.0 / 30.0) / 2.0)


def test_the_standing_order_survives_a_new_leader() -> None:
    rec = call(POLICY, 600.0, 20.0, 10.0, 4.0, 0.0, None)
    data = POLICY.dump_memory(rec.memory)
    assert isinstance(data, dict) and data["burst"] == pytest.approx(12.0)
    assert POLICY.load_memory(data) == rec.memory
    # No order standing: the state is written as before the option existed, and still read.
    quiet = call(POLICY, 0.0, 1.0, 10.0, 10.0, 0.0, None)
    written = POLICY.dump_memory(quiet.memory)
    assert isinstance(written, dict) and "burst" not in written
    assert POLICY.load_memory(written) == quiet.memory
