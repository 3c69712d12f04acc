"""queue-sla learns a replica's service rate from RabbitMQ deliveries (issue 10: no constant from
the whole trace; the same information a live deployment has)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from tests.factories import trigger, workload

WL = workload("chat", triggers=(trigger("backlog"), trigger("arrivals"), trigger("delivered")))


def _policy(**options: object) -> QueueSlaPolicy:
    return QueueSlaPolicy(
        QueueSlaOptions.model_validate(
            {"backlogTrigger": "backlog", "deliveryTrigger": "delivered", **options}
        )
    )


def _step(
    policy: QueueSlaPolicy, memory: object, now: float, backlog: float, delivered: float | None, ready: float
) -> Recommendation:
    values = {"backlog": backlog}
    if delivered is not None:
        values["delivered"] = delivered
    ctx = PolicyContext(WL, values, frozenset(), ready, ready, 0.0, now, memory)
    return policy.recommend(ctx)


def test_without_a_profiled_rate_it_starts_one_replica_then_sizes_from_what_it_served() -> None:
    policy = _policy(lookahead=False, headroom=0, holdSeconds=0)
    rec = _step(policy, None, 0.0, backlog=300, delivered=None, ready=0)
    assert rec.units == 1 and "no service rate learned yet" in rec.reason
    # One replica ready, requests still wait: busy, but not yet for a whole 10 s rate window.
    rec = _step(policy, rec.memory, 10.0, backlog=300, delivered=1.0, ready=1)
    assert rec.units == 1 and "no service rate learned yet" in rec.reason
    # Busy for the whole window: it was handed 2 requests/s.
    rec = _step(policy, rec.memory, 20.0, backlog=300, delivered=2.0, ready=1)
    # backlog 300 drained within 30 s at 2/s per unit: 300 / 30 / 2 = 5 units.
    assert rec.units == pytest.approx(5.0)
    assert "2/s per replica (learned)" in rec.reason


def test_a_wrong_profiled_rate_is_corrected_by_what_busy_replicas_serve() -> None:
    policy = _policy(serviceRatePerReplica=0.5, lookahead=False, headroom=0, holdSeconds=0)
    rec = _step(policy, None, 0.0, backlog=60, delivered=8.0, ready=4)
    memory = rec.memory
    for t in range(10, 1200, 10):  # saturated for 20 minutes at 2/s per unit
        rec = _step(policy, memory, float(t), backlog=60, delivered=8.0, ready=4)
        memory = rec.memory
    # 60 waiting, to be served within 30 s at ~2/s per unit: ~1 unit, not the 4 of the 0.5 guess.
    assert rec.units == pytest.approx(1.0, rel=0.01)


def test_idle_replicas_never_lower_the_learned_rate() -> None:
    policy = _policy(lookahead=False, headroom=0, holdSeconds=0)
    rec = _step(policy, None, 0.0, backlog=100, delivered=4.0, ready=2)  # busy: 2/s per unit
    for t in range(10, 600, 10):  # no queue: 4 replicas mostly idle, 0.5/s each
        rec = _step(policy, rec.memory, float(t), backlog=0, delivered=2.0, ready=4)
    rec = _step(policy, rec.memory, 600.0, backlog=120, delivered=4.0, ready=2)
    assert rec.units == pytest.approx(120 / 30 / 2.0, rel=0.01)


def test_a_window_in_which_replicas_were_added_or_idle_is_not_a_measurement() -> None:
    policy = _policy(serviceRatePerReplica=2.0, lookahead=False, headroom=0, holdSeconds=0)
    rec = _step(policy, None, 0.0, backlog=0, delivered=2.0, ready=2)
    # A burst arrives: requests wait, but the trailing window still holds the idle seconds before.
    rec = _step(policy, rec.memory, 5.0, backlog=500, delivered=1.0, ready=2)
    # New replicas became ready within the window: deliveries lag them.
    rec = _step(policy, rec.memory, 12.0, backlog=500, delivered=2.0, ready=6)
    assert "learned" not in rec.reason
    assert rec.units == pytest.approx(500 / 30 / 2.0)


def test_a_service_rate_must_come_from_somewhere() -> None:
    with pytest.raises(ValidationError, match=r"serviceRatePerReplica .* or deliveryTrigger"):
        QueueSlaOptions.model_validate({"backlogTrigger": "backlog"})


def test_the_learned_rate_survives_a_leader_change() -> None:
    policy = _policy(lookahead=False, headroom=0, holdSeconds=0)
    rec = _step(policy, None, 0.0, backlog=300, delivered=6.0, ready=2)
    restored = policy.load_memory(policy.dump_memory(rec.memory))
    assert restored == rec.memory
    assert policy.triggers_read(WL) == {"backlog", "delivered"}


def _little(
    policy: QueueSlaPolicy,
    memory: object,
    now: float,
    ready_pods: tuple[int, ...],
    ready: float,
    backlog: float,
    in_flight: float,
    delivered: float,
) -> Recommendation:
    values = {"backlog": backlog, "in-flight": in_flight, "delivered": delivered}
    ctx = PolicyContext(WL, values, frozenset(), ready, ready, 0.0, now, memory, ready_pods, ready_pods)
    return policy.recommend(ctx)


@pytest.mark.parametrize(
    ("case", "ready_pods", "ready_units", "in_service", "delivered", "per_unit"),
    [
        # 4 pods of 8 slots, half busy, 4 requests/s handed out: 2 busy units serve 4/s, so 2/s each.
        ("half busy", (4,), 4.0, 16.0, 4.0, 2.0),
        # 2 fast pods and 2 half-speed ones (3 units), every slot busy, 4 s a request on a fast pod:
        # the fast ones take 2/s each, the slow ones 1/s each; 6/s over 3 units is 2/s per unit.
        ("mixed pools, all busy", (2, 2), 3.0, 32.0, 6.0, 2.0),
    ],
)
def test_with_in_flight_requests_the_service_rate_is_known_at_any_load(
    case: str,
    ready_pods: tuple[int, ...],
    ready_units: float,
    in_service: float,
    delivered: float,
    per_unit: float,
) -> None:
    policy = _policy(
        inFlightTrigger="in-flight", concurrencyPerReplica=8, lookahead=False, headroom=0, holdSeconds=0
    )
    wl = workload("chat", triggers=(trigger("backlog"), trigger("in-flight"), trigger("delivered")))
    assert policy.triggers_read(wl) == {"backlog", "in-flight", "delivered"}
    rec = _little(policy, None, 0.0, ready_pods, ready_units, 0.0, in_service, delivered)
    assert f"{per_unit:g}/s per replica (learned)" in rec.reason, case
    # Then 60 requests wait, to be served within 30 s at that rate (no arrival-rate trigger here).
    rec = _little(policy, rec.memory, 10.0, ready_pods, ready_units, 60.0, in_service + 60, delivered)
    assert rec.units == pytest.approx(60 / 30 / per_unit), case


def test_in_flight_needs_the_concurrency_and_a_delivery_trigger() -> None:
    with pytest.raises(ValidationError, match="inFlightTrigger and concurrencyPerReplica go together"):
        QueueSlaOptions.model_validate(
            {"backlogTrigger": "backlog", "inFlightTrigger": "in-flight", "serviceRatePerReplica": 1}
        )
