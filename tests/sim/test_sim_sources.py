"""Trigger readings in simulation: KEDA's RabbitMQ meanings, refusals, and simulated outages."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.config.models import RabbitMQOptions
from autoscaler.engine.types import TriggerSpec
from autoscaler.sim.cluster import SimCluster
from autoscaler.sim.sources import SourceError, TriggerOutage, build_sources
from tests.factories import compiled_trigger
from tests.sim.simfakes import model, pool, spec

GROUP = ("sim", "A100")


def rabbit(name: str, **options: Any) -> TriggerSpec:
    return compiled_trigger(name=name, type="rabbitmq", targetPerReplica=1.0, queue="q", **options)


def test_queue_length_over_amqp_and_http_differ_by_the_requests_in_service() -> None:
    a = pool("a", startup=0.0)
    triggers = [
        rabbit("amqp", mode="QueueLength", protocol="amqp"),
        rabbit("http", mode="QueueLength", protocol="http"),
        rabbit("ready-only", mode="QueueLength", protocol="http", excludeUnacknowledged=True),
    ]
    w = model("w", [a], [0.0, 0.0, 0.0, 0.0, 0.0], service=100.0, concurrency=3)
    cluster = SimCluster([w], {GROUP: 1})
    sources = build_sources([spec("w", [a], triggers)], {"w": w.trace.arrival})
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(1.0)
    got = {name: r.value for name, r in sources.read(cluster, 1.0)["w"].items()}
    assert got == {"amqp": 2.0, "http": 5.0, "ready-only": 2.0}


def test_message_rate_is_arrivals_per_second_over_the_last_ten_seconds() -> None:
    a = pool("a")
    arrivals = [0.5, 1.0, 2.0, 9.0, 10.0, 10.5, 30.0]
    w = model("w", [a], arrivals)
    cluster = SimCluster([w], {GROUP: 1})
    sources = build_sources(
        [spec("w", [a], [rabbit("rate", mode="MessageRate", protocol="http")])], {"w": w.trace.arrival}
    )
    assert sources.read(cluster, 10.0)["w"]["rate"].value == 0.5  # (0, 10]: 0.5 .. 10.0
    assert sources.read(cluster, 11.0)["w"]["rate"].value == 0.4  # (1, 11]: 2.0 .. 10.5
    assert sources.read(cluster, 25.0)["w"]["rate"].value == 0.0


def test_a_prometheus_trigger_is_refused_naming_workload_and_trigger() -> None:
    a = pool("a")
    ttft = compiled_trigger(name="ttft", type="prometheus", target=0.5, query="up")
    with pytest.raises(SourceError) as err:
        build_sources(
            [spec("llm-chat", [a], [rabbit("backlog"), ttft])],
            {"llm-chat": model("x", [a], []).trace.arrival},
        )
    assert err.value.problems == (
        "workload llm-chat, trigger ttft: type prometheus is not simulated (the simulator reads "
        "rabbitmq triggers only); use policy files without it for the simulation",
    )


def test_a_rabbitmq_mode_the_simulator_does_not_model_is_refused() -> None:
    a = pool("a")
    with pytest.raises(
        SourceError, match="trigger pub: rabbitmq mode PublishedToDeliveredRatio is not simulated"
    ):
        # A mode policy files do not offer (yet): the simulator refuses what it does not model.
        options = RabbitMQOptions.model_construct(queue="q", mode="PublishedToDeliveredRatio")
        build_sources(
            [spec("w", [a], [TriggerSpec("pub", "rabbitmq", 1.0, options=options)])],
            {"w": model("w", [a], []).trace.arrival},
        )


def test_deliver_get_rate_is_requests_handed_to_replicas_per_second_over_ten_seconds() -> None:
    # One replica serving 2 at a time, 4 s per request, 6 requests at t=0: 2 delivered at 0, 4 and 8.
    a = pool("a", startup=0.0)
    w = model("w", [a], [0.0] * 6, service=4.0, concurrency=2)
    cluster = SimCluster([w], {GROUP: 1})
    sources = build_sources(
        [spec("w", [a], [rabbit("delivered", mode="DeliverGetRate", protocol="http")])],
        {"w": w.trace.arrival},
    )
    cluster.set_replicas(a.key, 1, 0.0)
    cluster.advance(9.0)
    assert sources.read(cluster, 9.0)["w"]["delivered"].value == 0.6  # (-1, 9]: 6 deliveries
    cluster.advance(12.0)
    assert sources.read(cluster, 12.0)["w"]["delivered"].value == 0.4  # (2, 12]: those at 4 and 8


def test_an_outage_reads_as_a_failure_not_as_zero() -> None:
    a = pool("a")
    w = model("w", [a], [0.0])
    cluster = SimCluster([w], {GROUP: 1})
    sources = build_sources(
        [spec("w", [a], [rabbit("backlog")])],
        {"w": w.trace.arrival},
        [TriggerOutage("w", "backlog", 5.0, 8.0)],
    )
    cluster.advance(6.0)
    assert sources.read(cluster, 4.0)["w"]["backlog"].value == 1.0
    during = sources.read(cluster, 6.0)["w"]["backlog"]
    assert during.value is None
    assert during.error == "simulated outage"
    assert sources.read(cluster, 8.0)["w"]["backlog"].value == 1.0


def test_an_outage_of_an_unknown_trigger_is_refused() -> None:
    a = pool("a")
    with pytest.raises(SourceError, match="workload w has no trigger lag"):
        build_sources(
            [spec("w", [a], [rabbit("backlog")])],
            {"w": model("w", [a], []).trace.arrival},
            [TriggerOutage("w", "lag", 0, 1)],
        )
