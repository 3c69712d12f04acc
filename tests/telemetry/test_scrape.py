"""`/metrics` for a big fleet: a scrape costs what changed, not a conversion of every series; the
lines a scrape reuses follow every change of what they show; both encodings say the same."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.engine.types import (
    ClusterSnapshot,
    Decision,
    Limits,
    Plan,
    PoolStatus,
    Reading,
    Reconciled,
    WorkloadSpec,
)
from autoscaler.telemetry import Telemetry
from tests.factories import pool, trigger, workload

COUNTERS = {"autoscaler_scale_actions", "autoscaler_trigger_failures", "autoscaler_reconciles"}
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
LIMITS = Limits(company_max_gpus=1 << 20)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry(port=0, host="127.0.0.1", environ={})
    t.set_leader(True)
    yield t
    t.close()


def fleet(n: int) -> list[WorkloadSpec]:
    return [
        workload(
            f"w{i}",
            (pool(f"w{i}-a100"), pool(f"w{i}-salad", virtual=True, gpu="RTX4090")),
            triggers=(trigger("backlog"), trigger("arrivals")),
        )
        for i in range(n)
    ]


def observe(
    t: Telemetry,
    workloads: Sequence[WorkloadSpec],
    now: float,
    snapshot: ClusterSnapshot | None = None,
    readings: dict[str, dict[str, Reading]] | None = None,
    plan: Plan | None = None,
) -> None:
    t.observe(
        Reconciled(
            now=now,
            workloads=workloads,
            limits=LIMITS,
            snapshot=snapshot or ClusterSnapshot({}),
            readings=readings or {},
            plan=plan or Plan((), {}),
            duration_seconds=0.01,
        )
    )


def samples(body: bytes, parse: object = text_string_to_metric_families) -> set[tuple[str, tuple, float]]:
    families = parse(body.decode())  # type: ignore[operator]
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in families
        if not family.name.startswith("process_")
        for s in family.samples
    }


def test_a_scrape_of_three_thousand_workloads_takes_well_under_a_second(telemetry: Telemetry) -> None:
    """It took about 5 s of CPU through the OpenTelemetry exporter (and timed out at 10,000):
    every series converted at every scrape. Now about 50 ms; the bound leaves room for a loaded
    machine. benchmarks/scrape.py measures it properly."""
    workloads = fleet(3000)
    readings = {w.name: {"backlog": Reading(5.0, 9.0), "arrivals": Reading(1.0, 9.0)} for w in workloads}
    observe(telemetry, workloads, 10.0, readings=readings)
    started = time.process_time()
    body, _ = telemetry.metrics_text(OPENMETRICS)
    assert time.process_time() - started < 1.0
    assert body.count(b"\nautoscaler_pool_current_replicas{") == 6000


def test_reused_lines_follow_every_change_of_what_they_show(telemetry: Telemetry) -> None:
    workloads = fleet(3)
    key = workloads[1].pools[0].key
    readings = {w.name: {"backlog": Reading(5.0, 9.0), "arrivals": Reading(1.0, 9.0)} for w in workloads}
    observe(telemetry, workloads, 10.0, readings=readings)
    before = samples(telemetry.metrics_text()[0])
    assert ("autoscaler_trigger_reading_age_seconds", _labels("w1", "backlog"), 1.0) in before

    # w1's pool grows and its backlog changes; w2 gets a decision; time goes on for everybody.
    readings = {**readings, "w1": {"backlog": Reading(7.0, 9.0), "arrivals": Reading(None, 10.5)}}
    decision = Decision("w2", 12.0, 3.0, 3, 3.0, {workloads[2].pools[0].key: 3}, ())
    snapshot = ClusterSnapshot({key: PoolStatus(2, ready=1)})
    observe(telemetry, workloads, 12.0, snapshot, readings, Plan((), {"w2": decision}))
    after = samples(telemetry.metrics_text()[0])
    assert after == samples(telemetry.metrics_text(OPENMETRICS)[0], openmetrics_families)
    changed = after - before
    assert ("autoscaler_trigger_value", _labels("w1", "backlog"), 7.0) in changed
    assert ("autoscaler_trigger_failing", _labels("w1", "arrivals"), 1.0) in changed
    assert ("autoscaler_trigger_reading_age_seconds", _labels("w1", "arrivals"), 1.5) in changed
    assert not any(
        labels == _labels("w1", "arrivals") for name, labels, _ in after if name.endswith("_value")
    )
    assert ("autoscaler_trigger_reading_age_seconds", _labels("w0", "backlog"), 3.0) in changed
    assert ("autoscaler_workload_desired_units", (("namespace", "ns"), ("workload", "w2")), 3.0) in changed
    current = {
        v for name, labels, v in after if name == "autoscaler_pool_current_replicas" and _is(labels, key)
    }
    assert current == {2.0}

    # A reload gives w1 other pools under the same name: its lines are drawn anew, labels and all.
    reloaded = [*workloads[:1], workload("w1", (pool("w1-h100", gpu="H100"),)), *workloads[2:]]
    observe(telemetry, reloaded, 13.0, snapshot, readings)
    gpu_types = {
        dict(labels)["gpu_type"]
        for name, labels, _ in samples(telemetry.metrics_text()[0])
        if name == "autoscaler_pool_current_replicas" and dict(labels)["workload"] == "w1"
    }
    assert gpu_types == {"H100"}


def _labels(name: str, trig: str) -> tuple[tuple[str, str], ...]:
    return (("namespace", "ns"), ("trigger", trig), ("type", "rabbitmq"), ("workload", name))


def _is(labels: tuple[tuple[str, str], ...], key: str) -> bool:
    found = dict(labels)
    return f"{found['namespace']}/{found['deployment']}" == key


def test_the_otlp_exporter_gets_the_same_series_as_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTLP metrics are drawn from the same frame and counters as `/metrics` (here an in-memory
    reader stands for the OTLP exporter)."""
    import autoscaler.telemetry as telemetry_module

    reader = InMemoryMetricReader()
    monkeypatch.setattr(telemetry_module, "_otlp_metric_reader", lambda env: reader)
    t = Telemetry(port=0, host="127.0.0.1", environ={})
    t.set_leader(True)
    workloads = fleet(2)
    readings = {"w0": {"backlog": Reading(5.0, 9.0), "arrivals": Reading(None, 9.0)}}
    observe(
        t, workloads, 10.0, ClusterSnapshot({workloads[0].pools[0].key: PoolStatus(2, ready=2)}), readings
    )
    exported = set()
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "autoscaler_reconcile_duration_seconds":
                    continue  # a histogram: buckets, not one value
                suffix = "_total" if metric.name in COUNTERS else ""
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    labels = tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))
                    exported.add((metric.name + suffix, labels, float(point.value)))  # type: ignore[union-attr]
    scraped = {
        s for s in samples(t.metrics_text()[0]) if not s[0].startswith("autoscaler_reconcile_duration")
    }
    t.close()
    assert exported == scraped
    assert ("autoscaler_trigger_failing", _labels("w0", "arrivals"), 1.0) in exported
