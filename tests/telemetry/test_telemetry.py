"""`Telemetry` after hand-made reconciles: metric names and labels, failed readings, reason kinds,
leadership, the HTTP endpoints, `promtool check metrics`, and the spans of a decision."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ActionKind,
    ActionResult,
    ClusterSnapshot,
    Decision,
    EngineState,
    FallbackBehavior,
    FallbackSpec,
    Limits,
    Outcome,
    Plan,
    PoolStatus,
    Reading,
    Reconciled,
    ScaleAction,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.telemetry import Telemetry
from tests.factories import pool, read, trigger, workload

A100 = pool("chat-a100", gpus=2, cost=2.0)
SALAD = pool("chat-salad", virtual=True, gpu="RTX4090", cost=0.3, timeout=120.0)
CHAT = workload(
    "chat",
    (A100, SALAD),
    triggers=(trigger("backlog", target=10.0), TriggerSpec(name="ttft", type="prometheus", target=0.5)),
)
LIMITS = Limits(company_max_gpus=16, cluster_gpu_types={("c1", "A100"): 8}, provider_max_gpus={"salad": 4})
SNAPSHOT = ClusterSnapshot(
    {A100.key: PoolStatus(3, ready=2, terminating=1), SALAD.key: PoolStatus(2, ready=0, pending_since=(5.0,))}
)
DECISION = Decision(
    workload="chat",
    at=100.0,
    recommended_units=7.5,
    desired_units=8,
    granted_units=6.0,
    targets={A100.key: 4, SALAD.key: 1},
    steps=("queue 75 > target", "company cap 16 GPUs binds"),
)
PLAN = Plan(
    actions=(
        # The engine's kinds: the grant (6 units) is below the wish (8), both resizes are the cap's.
        ScaleAction(SALAD.key, "chat", 2, 1, "free text that must not become a label", ActionKind.CAP),
        ScaleAction(A100.key, "chat", 3, 4, "free text", ActionKind.CAP),
    ),
    decisions={"chat": DECISION},
)
READINGS = {"chat": {"backlog": Reading(75.0, at=99.0), "ttft": Reading(None, at=98.0, error="timeout")}}


def observe(
    t: Telemetry,
    *,
    readings: Any = READINGS,
    plan: Plan = PLAN,
    now: float = 100.0,
    workloads: Sequence[WorkloadSpec] = (CHAT,),
    snapshot: ClusterSnapshot = SNAPSHOT,
) -> None:
    t.observe(
        Reconciled(
            now=now,
            workloads=workloads,
            limits=LIMITS,
            snapshot=snapshot,
            readings=readings,
            plan=plan,
            duration_seconds=0.004,
        )
    )


def samples(t: Telemetry) -> dict[str, list[tuple[dict[str, str], float]]]:
    body, _ = t.metrics_text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(t: Telemetry, name: str, **labels: str) -> float:
    found = [v for lab, v in samples(t).get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The leader's telemetry: the replica whose plans are acted on, the only one with fleet gauges."""
    t = Telemetry(port=0, host="127.0.0.1")
    t.set_leader(True)
    yield t
    t.close()


def test_pool_gauges_carry_the_pool_labels_and_the_plan(telemetry: Telemetry) -> None:
    observe(telemetry)
    labels = {
        "workload": "chat",
        "namespace": "ns",
        "deployment": "chat-a100",
        "node_class": "regular",
        "gpu_type": "A100",
        "cluster": "c1",
        "provider": "",
    }
    found = samples(telemetry)
    assert (labels, 4.0) in found["autoscaler_pool_desired_replicas"]
    assert (labels, 3.0) in found["autoscaler_pool_current_replicas"]
    assert (labels, 2.0) in found["autoscaler_pool_ready_replicas"]
    assert (labels, 0.0) in found["autoscaler_pool_pending_replicas"]
    assert (labels, 8.0) in found["autoscaler_pool_gpus"]  # (3 spec + 1 terminating) x 2 GPUs
    assert (labels, 12.0) in found["autoscaler_pool_cost_dollars_per_hour"]  # 3 x 2 GPUs x $2
    assert (
        value(telemetry, "autoscaler_pool_pending_replicas", deployment="chat-salad", provider="salad") == 1
    )
    assert value(telemetry, "autoscaler_workload_recommended_units", workload="chat") == 7.5
    assert value(telemetry, "autoscaler_workload_desired_units", workload="chat") == 8
    assert value(telemetry, "autoscaler_workload_granted_units", workload="chat") == 6


def test_a_failed_reading_is_absent_not_zero_and_counts_once_per_poll(telemetry: Telemetry) -> None:
    observe(telemetry)
    observe(telemetry, now=101.0)  # the same failed poll (at=98) seen by a second reconcile
    assert value(telemetry, "autoscaler_trigger_value", trigger="backlog") == 75.0
    assert all(lab["trigger"] != "ttft" for lab, _ in samples(telemetry)["autoscaler_trigger_value"])
    assert value(telemetry, "autoscaler_trigger_failing", trigger="ttft") == 1
    assert value(telemetry, "autoscaler_trigger_failing", trigger="backlog") == 0
    assert value(telemetry, "autoscaler_trigger_failures_total", trigger="ttft") == 1
    assert value(telemetry, "autoscaler_trigger_failures_total", trigger="backlog") == 0
    assert value(telemetry, "autoscaler_trigger_target", trigger="ttft") == 0.5
    assert value(telemetry, "autoscaler_trigger_reading_age_seconds", trigger="backlog") == 2.0

    failed_again = {"chat": {"backlog": Reading(75.0, at=99.0), "ttft": Reading(None, at=100.5, error="x")}}
    observe(telemetry, readings=failed_again, now=102.0)
    assert value(telemetry, "autoscaler_trigger_failures_total", trigger="ttft") == 2


def test_a_trigger_never_read_is_failing_with_no_value(telemetry: Telemetry) -> None:
    observe(telemetry, readings={})
    assert value(telemetry, "autoscaler_trigger_failing", trigger="backlog") == 1
    assert "autoscaler_trigger_value" not in samples(telemetry)


def test_caps_and_gpus_per_scope_are_what_the_engine_counted(telemetry: Telemetry) -> None:
    # A VKS-style per-type cap on the virtual pool's GPU type too: the engine counts the Salad pool
    # under it, and so must the dashboard (it used to count regular pools only, and showed 0 in use
    # under a cap that bound the engine).
    limits = Limits(
        company_max_gpus=16,
        cluster_gpu_types={("c1", "A100"): 8, ("c1", "RTX4090"): 4},
        provider_max_gpus={"salad": 4},
    )
    readings = {"chat": {"backlog": Reading(75.0, at=99.0), "ttft": Reading(0.3, at=99.0)}}
    plan, _ = reconcile([CHAT], SNAPSHOT, readings, EngineState(), limits, 100.0)
    observe(telemetry, plan=plan, readings=readings)
    assert value(telemetry, "autoscaler_gpu_cap", scope="company") == 16
    assert value(telemetry, "autoscaler_gpu_cap", scope="cluster_gpu_type", gpu_type="A100") == 8
    assert value(telemetry, "autoscaler_gpu_cap", scope="cluster_gpu_type", gpu_type="RTX4090") == 4
    assert value(telemetry, "autoscaler_gpu_cap", scope="provider", provider="salad") == 4
    # Held now: A100 (3 + 1 terminating) x 2 = 8, Salad 2 x 1 = 2.
    assert value(telemetry, "autoscaler_gpus_in_use", scope="company") == 10
    assert value(telemetry, "autoscaler_gpus_in_use", scope="cluster_gpu_type", gpu_type="A100") == 8
    assert value(telemetry, "autoscaler_gpus_in_use", scope="cluster_gpu_type", gpu_type="RTX4090") == 2
    assert value(telemetry, "autoscaler_gpus_in_use", scope="provider", provider="salad") == 2
    # Every dimension, held and granted, exactly as the limits stage counted it.
    for dim, use in plan.usage.items():
        labels = {"scope": "cluster_gpu_type" if dim[0] == "type" else dim[0]}
        if dim[0] == "type":
            labels |= {"cluster": dim[1], "gpu_type": dim[2]}
        if dim[0] == "provider":
            labels["provider"] = dim[1]
        assert value(telemetry, "autoscaler_gpus_in_use", **labels) == use.held, dim
        assert value(telemetry, "autoscaler_gpus_granted", **labels) == use.granted, dim


def test_a_follower_exports_no_fleet_gauges_however_many_reconciles(telemetry: Telemetry) -> None:
    telemetry.set_leader(False)
    for i in range(5):
        observe(telemetry, now=100.0 + i)
    found = samples(telemetry)
    assert "autoscaler_pool_desired_replicas" not in found
    assert "autoscaler_gpus_in_use" not in found
    assert not any(v for _, v in found.get("autoscaler_scale_actions_total", []))
    assert value(telemetry, "autoscaler_reconciles_total") == 5


def test_actions_count_by_direction_and_a_bounded_reason(telemetry: Telemetry) -> None:
    observe(telemetry)
    actions = samples(telemetry)["autoscaler_scale_actions_total"]
    assert {lab["reason"] for lab, _ in actions} <= {str(k) for k in ActionKind}
    counted = {(lab["deployment"], lab["direction"], lab["reason"]): v for lab, v in actions if v}
    # As the engine said: both resizes are the cap's doing.
    assert counted == {("chat-salad", "down", "cap"): 1.0, ("chat-a100", "up", "cap"): 1.0}
    # Every pool starts with all its (direction, reason) counters at zero, so the first resize
    # after a restart is already an increase.
    assert len([1 for lab, _ in actions if lab["deployment"] == "chat-a100"]) == 9


def test_the_reason_label_is_the_engines_kind_and_nothing_derived(telemetry: Telemetry) -> None:
    # The engine called the Salad scale-down a spill (it gave up stuck pods): telemetry must say so
    # even though the snapshot shows no pod Pending past the timeout, and must not guess "cap" from
    # the decision. An action built by hand (no kind) is counted by its direction.
    plan = Plan(
        actions=(
            ScaleAction(SALAD.key, "chat", 2, 1, "x", ActionKind.SPILL),
            ScaleAction(A100.key, "chat", 3, 4, "x"),
        ),
        decisions={"chat": DECISION},
    )
    observe(telemetry, plan=plan)
    counted = {
        (lab["deployment"], lab["direction"], lab["reason"])
        for lab, v in samples(telemetry)["autoscaler_scale_actions_total"]
        if v
    }
    assert counted == {("chat-salad", "down", "spill"), ("chat-a100", "up", "scale_up")}


def test_a_rebalancing_workload_counts_its_migration_steps_from_zero(telemetry: Telemetry) -> None:
    moving = replace(CHAT, rebalance=True)
    plan = Plan(
        actions=(
            ScaleAction(SALAD.key, "chat", 2, 1, "x", ActionKind.REBALANCE),
            ScaleAction(A100.key, "chat", 3, 4, "x", ActionKind.REBALANCE),
        ),
        decisions={"chat": DECISION},
    )
    observe(telemetry, workloads=[moving], plan=plan)
    actions = samples(telemetry)["autoscaler_scale_actions_total"]
    counted = {(lab["deployment"], lab["direction"], lab["reason"]) for lab, v in actions if v}
    assert counted == {("chat-salad", "down", "rebalance"), ("chat-a100", "up", "rebalance")}
    # Its pools have the two rebalance counters besides the nine every pool has.
    assert len([1 for lab, _ in actions if lab["deployment"] == "chat-salad"]) == 11


def test_a_resize_is_fallback_only_once_the_fallback_sets_the_size(telemetry: Telemetry) -> None:
    """Through the real engine: ttft fails at every poll while the backlog (30, target 10) asks for 3
    replicas. The first scale-up (one failure of three) is the backlog's; the third failure in a row
    trips the static fallback (4 replicas), and only that resize counts as `fallback`."""
    chat = workload(
        "chat",
        (A100,),
        triggers=CHAT.triggers,
        fallback=FallbackSpec(failure_threshold=3, behavior=FallbackBehavior.STATIC, replicas=4),
    )
    state = EngineState()
    replicas = 0
    ups: list[dict[str, float]] = []
    for now in (0.0, 1.0, 2.0):
        readings = {"chat": {"backlog": read(30.0, at=now), "ttft": read(None, at=now)}}
        snapshot = ClusterSnapshot({A100.key: PoolStatus(replicas, ready=replicas)})
        plan, state = reconcile([chat], snapshot, readings, state, LIMITS, now)
        observe(telemetry, workloads=[chat], snapshot=snapshot, readings=readings, plan=plan, now=now)
        replicas = next((a.to_replicas for a in plan.actions), replicas)
        ups.append(
            {
                lab["reason"]: v
                for lab, v in samples(telemetry)["autoscaler_scale_actions_total"]
                if lab["direction"] == "up"
            }
        )
    assert replicas == 4
    assert (ups[0]["scale_up"], ups[0]["fallback"]) == (1.0, 0.0)
    assert (ups[-1]["scale_up"], ups[-1]["fallback"]) == (1.0, 1.0)


def test_actions_count_by_what_became_of_them(telemetry: Telemetry) -> None:
    """The scale-down was refused by the API server and the scale-up held back after it: nothing was
    scaled, and the counters say so, by outcome (a label with a fixed set of values)."""
    down, up = PLAN.actions
    telemetry.observe(
        Reconciled(
            now=100.0,
            workloads=(CHAT,),
            limits=LIMITS,
            snapshot=SNAPSHOT,
            readings=READINGS,
            plan=PLAN,
            duration_seconds=0.004,
            outcomes=(
                ActionResult(down, Outcome.FAILED, "API error 403 Forbidden", writes=1),
                ActionResult(up, Outcome.SKIPPED, "scale-down of ns/chat-salad did not happen"),
            ),
        )
    )
    actions = samples(telemetry)["autoscaler_scale_actions_total"]
    assert {lab["outcome"] for lab, _ in actions} <= {str(o) for o in Outcome}
    counted = {(lab["deployment"], lab["direction"], lab["outcome"]): v for lab, v in actions if v}
    assert counted == {("chat-salad", "down", "failed"): 1.0, ("chat-a100", "up", "skipped"): 1.0}
    # Only the landed writes' counters start at zero: nine per pool, whatever the outcomes.
    zeros = [lab for lab, v in actions if lab["deployment"] == "chat-a100" and not v]
    assert len(zeros) == 9 and {lab["outcome"] for lab in zeros} == {"scaled"}


def test_health_leader_duration_and_timestamp(telemetry: Telemetry) -> None:
    observe(telemetry)
    telemetry.set_leader(False)
    assert value(telemetry, "autoscaler_leader") == 0
    telemetry.set_leader(True)
    assert value(telemetry, "autoscaler_leader") == 1
    observe(telemetry, now=1_700_000_000.0)
    # The engine's clock, the one the decision was made at: no second clock to drift from it.
    assert value(telemetry, "autoscaler_last_reconcile_timestamp_seconds") == 1_700_000_000.0
    assert value(telemetry, "autoscaler_reconciles_total") == 2
    assert value(telemetry, "autoscaler_reconcile_duration_seconds_count") == 2
    assert value(telemetry, "autoscaler_reconcile_duration_seconds_bucket", le="0.005") == 2
    assert value(telemetry, "autoscaler_build_info")  # the version is a label


def test_a_replica_that_loses_the_lease_stops_exporting_fleet_gauges(telemetry: Telemetry) -> None:
    telemetry.set_leader(True)
    observe(telemetry)
    telemetry.set_leader(False)
    found = samples(telemetry)
    assert "autoscaler_pool_desired_replicas" not in found
    assert "autoscaler_gpus_in_use" not in found
    assert value(telemetry, "autoscaler_reconciles_total") == 1  # counters stay: they are its history


def test_a_workload_removed_by_a_reload_disappears(telemetry: Telemetry) -> None:
    observe(telemetry)
    telemetry.observe(
        Reconciled(
            now=101.0,
            workloads=[],
            limits=LIMITS,
            snapshot=ClusterSnapshot({}),
            readings={},
            plan=Plan((), {}),
            duration_seconds=0.001,
        )
    )
    found = samples(telemetry)
    assert "autoscaler_pool_desired_replicas" not in found
    assert "autoscaler_trigger_value" not in found


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_endpoints(telemetry: Telemetry) -> None:
    port = telemetry.serve()
    assert port > 0
    base = f"http://127.0.0.1:{port}"
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/readyz")[0] == 503
    telemetry.set_ready(True)
    assert _get(f"{base}/readyz")[0] == 200
    observe(telemetry)
    status, body = _get(f"{base}/metrics")
    assert status == 200
    assert "autoscaler_pool_desired_replicas{" in body
    assert _get(f"{base}/nope")[0] == 404


def test_async_start_and_stop() -> None:
    t = Telemetry(port=0, host="127.0.0.1")

    async def main() -> None:
        await t.start()
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{t.port}/healthz"))[0] == 200
        await t.stop()

    asyncio.run(main())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{t.port}/healthz", timeout=2)


def test_promtool_finds_no_problem_in_the_metrics(telemetry: Telemetry) -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is missing (apt-get install -y prometheus)")
    telemetry.set_leader(True)
    observe(telemetry)
    body, _ = telemetry.metrics_text()
    done = subprocess.run(
        ["promtool", "check", "metrics"], check=False, input=body, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_a_span_per_reconcile_and_per_workload_with_the_steps() -> None:
    exporter = InMemorySpanExporter()
    t = Telemetry(port=0, span_exporter=exporter)
    observe(t, now=1_700_000_000.0)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"reconcile", "decide chat"}
    root, child = spans["reconcile"], spans["decide chat"]
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert root.attributes is not None and child.attributes is not None
    assert root.attributes["autoscaler.actions"] == 2
    assert root.end_time is not None and root.start_time is not None
    # The reconcile's 4 ms, from the engine's `now` on.
    assert (root.start_time, root.end_time) == (1_700_000_000_000_000_000, 1_700_000_000_004_000_000)
    assert list(child.attributes["autoscaler.steps"]) == list(DECISION.steps)  # type: ignore[arg-type]
    assert list(child.attributes["autoscaler.reason_kinds"]) == ["cap", "cap"]  # type: ignore[arg-type]
    assert child.attributes["autoscaler.granted_units"] == 6.0
    t.close()


def test_no_exporter_no_spans() -> None:
    t = Telemetry(port=0, environ={})
    observe(t)  # nothing to assert but that it costs no span: the tracer has no processor
    assert t._tracing is False
    t.close()


class _Receiver(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_otlp_export_when_the_endpoint_is_set() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    try:
        with pytest.MonkeyPatch.context() as mp:  # the exporters read their endpoint from the environment
            mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            t = Telemetry(port=0, environ=env)
            observe(t)
            t.close()  # flushes the batch of spans and the last metrics
    finally:
        server.shutdown()
        server.server_close()
    assert "/v1/traces" in _Receiver.paths
    assert "/v1/metrics" in _Receiver.paths


def test_a_big_fleet_is_exported_whole(telemetry: Telemetry) -> None:
    """Beyond the SDK's default 2,000 series per metric (300 workloads x 2 pools x 9 action counters
    = 5,400): nothing folds into an overflow point."""
    fleet = [
        workload(f"w{i}", (pool(f"w{i}-a100"), pool(f"w{i}-salad", virtual=True, gpu="RTX4090")))
        for i in range(300)
    ]
    telemetry.observe(
        Reconciled(
            now=10.0,
            workloads=fleet,
            limits=LIMITS,
            snapshot=ClusterSnapshot({}),
            readings={},
            plan=Plan((), {}),
            duration_seconds=0.01,
        )
    )
    body, _ = telemetry.metrics_text()
    assert b"overflow" not in body
    found = samples(telemetry)
    assert len(found["autoscaler_scale_actions_total"]) == 300 * 2 * 9
    assert len(found["autoscaler_pool_current_replicas"]) == 600


def test_each_managed_cluster_reports_up_and_sync_age_and_readyz_names_the_one_down() -> None:
    from autoscaler.kube.fleet import ClusterHealth

    t = Telemetry(port=0, host="127.0.0.1")
    # A replica reports its own connections, leader or not.
    t.set_leader(False)
    assert "autoscaler_cluster_up" not in samples(t)  # nothing reported: no series
    clusters = [ClusterHealth("home", None, 1.5), ClusterHealth("vks-2", 1_767_225_600.0, None)]
    t.report_clusters(lambda: clusters)
    try:
        assert value(t, "autoscaler_cluster_up", cluster="home") == 1.0
        assert value(t, "autoscaler_cluster_up", cluster="vks-2") == 0.0
        assert value(t, "autoscaler_cluster_last_sync_age_seconds", cluster="home") == 1.5
        # Never heard from: absent, not zero.
        assert [lab for lab, _ in samples(t)["autoscaler_cluster_last_sync_age_seconds"]] == [
            {"cluster": "home"}
        ]
        port = t.serve()
        t.set_ready(True)
        # Ready: one cluster out does not stop the others being decided; the detail says which.
        assert _get(f"http://127.0.0.1:{port}/readyz") == (
            200,
            "ready\ncluster home: up\ncluster vks-2: unreachable since 2026-01-01T00:00:00Z\n",
        )
    finally:
        t.close()
