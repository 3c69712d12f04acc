"""Telemetry: the autoscaler's metrics, traces and health endpoints.

Role: the observability edge. After every reconcile the live controller hands `Telemetry.observe`
what the engine saw and decided (workloads, limits, snapshot, readings, plan, how long it took);
this module turns that into OpenTelemetry metrics, exposed for Prometheus on `/metrics`, and into a
span per reconcile with a child span per workload decision. The same HTTP server answers `/healthz`
(the process is alive) and `/readyz` (`set_ready`). Callers: the live controller (`autoscaler run`),
the telemetry tests, which feed it from a simulation, and nothing in the engine or the policies (the
import-linter contracts forbid it: decision code stays free of I/O).

    telemetry = Telemetry.from_settings(settings)
    await telemetry.start()             # or telemetry.serve() from synchronous code
    telemetry.set_ready(True)
    telemetry.set_leader(elector.is_leader)
    ... after each reconcile:
    telemetry.observe(now=now, workloads=..., limits=..., snapshot=..., readings=..., plan=...,
                      duration_seconds=..., outcomes=...)
    await telemetry.stop()              # or telemetry.close()

Metrics (Prometheus names; all gauges describe the last observed reconcile):
- per pool, labels workload, namespace, deployment, node_class, gpu_type, cluster, provider:
  `autoscaler_pool_{desired,current,ready,pending}_replicas`, `autoscaler_pool_gpus` (GPUs held:
  spec plus terminating replicas times GPUs per replica), `autoscaler_pool_cost_dollars_per_hour`
  (spec replicas x GPUs per replica x cost per GPU-hour);
- per workload: `autoscaler_workload_{recommended,desired,granted}_units`;
- per trigger, labels workload, namespace, trigger, type: `autoscaler_trigger_value` only for a
  valid reading (a failed reading is absent, never 0: a dashboard must not show an outage as an
  empty queue), `autoscaler_trigger_target`, `autoscaler_trigger_failing` (1 failed or not read yet,
  0 ok), `autoscaler_trigger_reading_age_seconds`, `autoscaler_trigger_failures_total` (each failed
  poll once, however many reconciles see it);
- per cap, label scope = company | cluster_gpu_type | provider (plus cluster, gpu_type, provider):
  `autoscaler_gpu_cap` (absent when unlimited), `autoscaler_gpus_in_use` (held now, terminating
  included, as the limits stage counts them), `autoscaler_gpus_granted` (what the plan gives);
- `autoscaler_scale_actions_total{workload,namespace,deployment,node_class,direction,reason,outcome}`
  where reason is a `ActionKind`, never the engine's free text, and outcome the actuator's `Outcome`
  (`scaled` for a write that landed, `failed`, `conflict`, `stale`, `not-leader`, ... for the
  others; bounded cardinality): what was done with each planned action, not just what was planned;
- per cluster (`report_clusters`; every replica reports its own connections, leader or not):
  `autoscaler_cluster_up{cluster}` (1 while its watches work, 0 while it cannot be reached) and
  `autoscaler_cluster_last_sync_age_seconds{cluster}` (since its API server was last heard on every
  collection; absent before the first word); /readyz lists each cluster's state under its status;
- `autoscaler_reconcile_duration_seconds` (histogram), `autoscaler_reconciles_total`,
  `autoscaler_last_reconcile_timestamp_seconds` (Unix time), `autoscaler_leader`, `autoscaler_ready`,
  `autoscaler_build_info{version}`; and prometheus_client's `process_*` metrics.

Gauges are observable instruments whose callbacks read the last "frame" that `observe` built and
swapped in as one reference, so a scrape from the server thread never sees half a reconcile, and a
pool, trigger or workload that disappears (hot reload, a failed reading) disappears from `/metrics`
with it. A replica that loses leadership clears its frame (`set_leader(False)`), so only the leader
exports fleet gauges and dashboards can sum across replicas.

Traces: spans are made only when an exporter exists: OTLP over HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and the `otlp` extra is installed,
or one given by a test. Without one, observe builds no spans at all, so a big fleet pays nothing
for tracing it does not use. The same variables (`..._METRICS_ENDPOINT`) add an OTLP metric exporter
next to `/metrics`. Spans are recorded after the fact with the reconcile's measured start and end,
since the engine (pure, synchronous) cannot open spans itself.

Structured logs are `controller.configure_logging`'s job, not this module's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableGauge
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from autoscaler import __version__
from autoscaler.engine.types import (
    ActionKind,
    ActionResult,
    ClusterSnapshot,
    Decision,
    Limits,
    Outcome,
    Plan,
    PoolSpec,
    PoolStatus,
    Reading,
    ScaleAction,
    WorkloadSpec,
)

if TYPE_CHECKING:
    from autoscaler.settings import Settings

log = logging.getLogger("autoscaler.telemetry")

Attributes = Mapping[str, str]

# Reconcile durations: the engine decides a small fleet in well under a millisecond and a thousand
# workloads in tens of milliseconds (benchmarks/engine.py); a stuck one shows in the top buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Series per metric before the SDK folds the rest into one `otel_metric_overflow` point. Its default
# (2,000) is a few hundred pools' action counters; the real bound is the fleet (9 action series per
# pool, up to 9 outcomes each, a handful of gauges per pool and per trigger), so this only guards
# against a runaway label.
SERIES_LIMIT = 200_000
_LIMITS: dict[type, int] = {Counter: SERIES_LIMIT, ObservableGauge: SERIES_LIMIT, Histogram: SERIES_LIMIT}
_ABSENT = PoolStatus(0)
_NO_READINGS: Mapping[str, Reading] = {}


# The (direction, reason) pairs the engine's `ActionKind`s make; each pool's counters of landed writes
# (outcome `scaled`) start at zero for all of them, so that the first resize after a restart is an
# increase a dashboard can see (a counter series that appears at 1 has no increase for `increase()`
# to find). The other outcomes appear when they first happen: nine times as many zeros per pool
# would be a high price for the first failure's increase.
ACTION_KINDS: tuple[tuple[str, ActionKind], ...] = (
    ("up", ActionKind.SCALE_UP),
    ("up", ActionKind.SPILL),
    ("up", ActionKind.CAP),
    ("up", ActionKind.FALLBACK),
    ("down", ActionKind.SCALE_DOWN),
    ("down", ActionKind.SPILL),
    ("down", ActionKind.CAP),
    ("down", ActionKind.COOLDOWN),
    ("down", ActionKind.FALLBACK),
)


def action_kind(action: ScaleAction) -> ActionKind:
    """The engine's kind of `action`; an action built outside the engine has only its direction."""
    if action.kind is not None:
        return action.kind
    return ActionKind.SCALE_DOWN if action.is_scale_down else ActionKind.SCALE_UP


def pool_attributes(workload: WorkloadSpec, pool: PoolSpec) -> dict[str, str]:
    return {
        "workload": workload.name,
        "namespace": pool.namespace,
        "deployment": pool.deployment,
        "node_class": str(pool.node_class),
        "gpu_type": pool.gpu_type,
        "cluster": pool.cluster,
        # Empty for regular pools: Prometheus treats an empty label as absent.
        "provider": pool.provider or "",
    }


class ClusterReport(Protocol):
    """One managed cluster's reachability (`kube.fleet.ClusterHealth` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def down_since(self) -> float | None: ...

    @property
    def age_seconds(self) -> float | None: ...


def _no_clusters() -> Sequence[ClusterReport]:
    return ()


@dataclass(frozen=True, slots=True)
class _Frame:
    """The gauge values of one reconcile, by metric name; replaced whole by each `observe`."""

    series: Mapping[str, tuple[Observation, ...]]
    timestamp: float | None


_EMPTY_FRAME = _Frame({}, None)


class _Series:
    """Collects observations per metric while `observe` builds a frame."""

    def __init__(self) -> None:
        self.items: dict[str, list[Observation]] = {}

    def add(self, name: str, value: float, attributes: Attributes) -> None:
        self.items.setdefault(name, []).append(Observation(value, dict(attributes)))

    def frozen(self) -> dict[str, tuple[Observation, ...]]:
        return {name: tuple(obs) for name, obs in self.items.items()}


# Observable gauges fed from the frame: name -> help text. Units are in the names (Prometheus style);
# the OTel unit is left empty so the exporter adds no second suffix.
_FRAME_GAUGES: dict[str, str] = {
    "autoscaler_pool_desired_replicas": "Replicas the last plan gives the pool",
    "autoscaler_pool_current_replicas": "Replicas the pool's Deployment asks for now (spec.replicas)",
    "autoscaler_pool_ready_replicas": "Ready replicas of the pool",
    "autoscaler_pool_pending_replicas": "Pods of the pool not yet bound to a node (Pending)",
    "autoscaler_pool_gpus": "GPUs the pool holds: spec plus terminating replicas times GPUs per replica",
    "autoscaler_pool_cost_dollars_per_hour": "Pool cost rate: spec replicas x GPUs x cost per GPU-hour",
    "autoscaler_workload_recommended_units": "The policy's recommendation in replica units (absent if none)",
    "autoscaler_workload_desired_units": "Replica units after the behavior stage",
    "autoscaler_workload_granted_units": "Replica units the limits stage granted",
    "autoscaler_trigger_value": "Last valid reading of the trigger (absent while the trigger fails)",
    "autoscaler_trigger_target": "The trigger's target value",
    "autoscaler_trigger_failing": "1 while the trigger's last read failed or it has not been read yet",
    "autoscaler_trigger_reading_age_seconds": "Age of the trigger's last reading at the reconcile",
    "autoscaler_gpu_cap": "A GPU cap of the parallelism limits (absent when unlimited)",
    "autoscaler_gpus_in_use": "GPUs held now under a cap scope (spec plus terminating replicas)",
    "autoscaler_gpus_granted": "GPUs the last plan gives under a cap scope",
    "autoscaler_last_reconcile_timestamp_seconds": "Unix time of the last observed reconcile",
}


class Telemetry:
    """Metrics registry, tracer and the `/metrics` `/healthz` `/readyz` server of one process; the
    live controller's `Observer` (`autoscaler.controller`).

    `port` 0 picks a free port (tests); `port` is the bound one after `serve()`. Times come from the
    engine's clock alone, the `now` each reconcile is observed with (one clock: live it is the Unix
    time, in the simulator the replay's): `autoscaler_last_reconcile_timestamp_seconds` and span ends.
    `span_exporter` replaces the exporter the environment would choose (tests); `environ` is read
    for the `OTEL_EXPORTER_OTLP_*` variables.
    """

    def __init__(
        self,
        *,
        port: int = 9102,
        host: str = "0.0.0.0",  # in a pod: Prometheus and the kubelet's probes come from outside
        span_exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
        liveness_seconds: float = 5.0,
        read_timeout_seconds: float = 5.0,
        max_connections: int = 32,
    ) -> None:
        env = os.environ if environ is None else environ
        self.host = host
        self.port = port
        # /healthz fails once the event loop has not ticked for `liveness_seconds` (the heartbeat
        # task `start()` runs on it); a connection idle or unfinished for `read_timeout_seconds` is
        # closed, and at most `max_connections` are served at once: a probe or a scrape is one short
        # request, and a slow client must not hold a thread each for good.
        self.liveness_seconds = liveness_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.max_connections = max_connections
        self._beat: float | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._leader = False
        self._ready = False
        self._frame = _EMPTY_FRAME
        self._failure_seen: dict[tuple[str, str], float] = {}
        # Pools and triggers whose counters exist (at zero if need be): the SDK keeps them for good.
        self._counted_pools: set[tuple[str, str]] = set()
        self._counted_triggers: set[tuple[str, str]] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clusters: Callable[[], Sequence[ClusterReport]] = _no_clusters

        resource = _resource(env)
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* (memory, CPU, open files) for the health dashboard; nothing on non-Linux.
        ProcessCollector(registry=self.registry)
        readers: list[MetricReader] = [
            PrometheusMetricReader(
                disable_target_info=True,
                scope_info_enabled=False,
                registry=self.registry,
                cardinality_limits=_LIMITS,
            )
        ]
        otlp_metrics = _otlp_metric_reader(env)
        if otlp_metrics is not None:
            readers.append(otlp_metrics)
        self._meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = self._meter_provider.get_meter("autoscaler", __version__)

        for name, help_text in _FRAME_GAUGES.items():
            meter.create_observable_gauge(name, callbacks=[self._frame_callback(name)], description=help_text)
        meter.create_observable_gauge(
            "autoscaler_leader",
            callbacks=[lambda _o: [Observation(1.0 if self._leader else 0.0)]],
            description="1 while this replica holds the leader lease",
        )
        meter.create_observable_gauge(
            "autoscaler_ready",
            callbacks=[lambda _o: [Observation(1.0 if self._ready else 0.0)]],
            description="1 while /readyz answers 200",
        )
        meter.create_observable_gauge(
            "autoscaler_build_info",
            callbacks=[lambda _o: [Observation(1.0, {"version": __version__})]],
            description="Always 1; the version is a label",
        )
        meter.create_observable_gauge(
            "autoscaler_cluster_up",
            callbacks=[
                lambda _o: [
                    Observation(float(c.down_since is None), {"cluster": c.name}) for c in self._clusters()
                ]
            ],
            description="1 while the cluster's API server is watched, 0 while it cannot be reached",
        )
        meter.create_observable_gauge(
            "autoscaler_cluster_last_sync_age_seconds",
            callbacks=[
                lambda _o: [
                    Observation(c.age_seconds, {"cluster": c.name})
                    for c in self._clusters()
                    if c.age_seconds is not None
                ]
            ],
            description="Seconds since the cluster's API server was last heard on every watched collection",
        )
        self._actions = meter.create_counter(
            "autoscaler_scale_actions",
            description="Planned pool resizes by direction, reason kind and what became of them",
        )
        self._failures = meter.create_counter(
            "autoscaler_trigger_failures", description="Failed trigger reads (each failed poll once)"
        )
        self._reconciles = meter.create_counter("autoscaler_reconciles", description="Reconciles observed")
        self._reconciles.add(0)  # exported from the start: rate() needs the zero before the first one
        self._duration = meter.create_histogram(
            "autoscaler_reconcile_duration_seconds",
            unit="s",
            description="Wall time of one reconcile",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

        exporter = span_exporter if span_exporter is not None else _otlp_span_exporter(env)
        self._tracer_provider = TracerProvider(resource=resource)
        self._tracing = exporter is not None
        if exporter is not None:
            # A test's in-memory exporter wants spans at once; a network exporter wants batches.
            processor = (
                SimpleSpanProcessor(exporter) if span_exporter is not None else BatchSpanProcessor(exporter)
            )
            self._tracer_provider.add_span_processor(processor)
        self._tracer = self._tracer_provider.get_tracer("autoscaler", __version__)

    @classmethod
    def from_settings(cls, settings: Settings) -> Telemetry:
        """Listen where `AUTOSCALER_METRICS_BIND_ADDRESS` and `AUTOSCALER_METRICS_PORT` say."""
        return cls(port=settings.metrics_port, host=str(settings.metrics_bind_address))

    # ------------------------------------------------------------------------------------------
    # State the controller reports

    def set_leader(self, leader: bool) -> None:
        """A follower exports no fleet gauges: its last frame would double every sum across replicas."""
        self._leader = leader
        if not leader:
            self._frame = _EMPTY_FRAME

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready

    def report_clusters(self, clusters: Callable[[], Sequence[ClusterReport]]) -> None:
        """Where the managed clusters' reachability comes from: called at each scrape and /readyz,
        from the server's thread, so it must only read."""
        self._clusters = clusters

    def readiness_detail(self) -> str:
        """One line per managed cluster for /readyz: up, or unreachable since when."""
        lines = []
        for c in self._clusters():
            if c.down_since is None:
                lines.append(f"cluster {c.name}: up\n")
            else:
                since = datetime.fromtimestamp(c.down_since, UTC).isoformat(timespec="seconds")
                lines.append(f"cluster {c.name}: unreachable since {since.replace('+00:00', 'Z')}\n")
        return "".join(lines)

    def observe(
        self,
        *,
        now: float,
        workloads: Sequence[WorkloadSpec],
        limits: Limits,
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        plan: Plan,
        duration_seconds: float,
        outcomes: Sequence[ActionResult] | None = None,
    ) -> None:
        """Record one reconcile: the arguments it got, the plan it returned and its wall time.
        `outcomes`: what the actuator did with each action, which `autoscaler_scale_actions_total`
        counts by outcome (None: every action was written, as in the simulator, whose cluster obeys
        every plan).

        `now` is the engine's clock (the one `Reading.at` and `PoolStatus.pending_since` use). Call it
        for the reconciles whose plans are acted on (the leader's); cheap: O(pools + triggers)."""
        if self._leader:
            # Only the leader's plans are acted on: a follower's fleet gauges and action counts would
            # double every sum across replicas (it still reports its reconciles and their duration).
            series = _Series()
            statuses: dict[str, PoolStatus] = {}
            for wl in workloads:
                self._observe_workload(
                    series, wl, snapshot, readings.get(wl.name, _NO_READINGS), plan, now, statuses
                )
            _observe_caps(series, plan)
            series.add("autoscaler_last_reconcile_timestamp_seconds", now, {})
            self._frame = _Frame(series.frozen(), now)

            by_name = {wl.name: wl for wl in workloads}
            if outcomes is None:
                outcomes = [ActionResult(action, Outcome.SCALED) for action in plan.actions]
            for result in outcomes:
                action = result.action
                self._count_action(result, by_name.get(action.workload))
        self._prune_failures(workloads)
        self._reconciles.add(1)
        self._duration.record(max(0.0, duration_seconds))
        if self._tracing:
            self._trace(duration_seconds, workloads, plan, snapshot, now)

    def _observe_workload(
        self,
        series: _Series,
        wl: WorkloadSpec,
        snapshot: ClusterSnapshot,
        got: Mapping[str, Reading],
        plan: Plan,
        now: float,
        statuses: dict[str, PoolStatus],
    ) -> None:
        decision = plan.decisions.get(wl.name)
        targets = decision.targets if decision is not None else {}
        for pool in wl.pools:
            status = snapshot.pools.get(pool.key, _ABSENT)
            statuses[pool.key] = status
            attrs = pool_attributes(wl, pool)
            if (wl.name, pool.key) not in self._counted_pools:
                self._counted_pools.add((wl.name, pool.key))
                for direction, kind in ACTION_KINDS:
                    landed = _action_attributes(wl.name, pool.key, pool, direction, kind, Outcome.SCALED)
                    self._actions.add(0, landed)
            series.add("autoscaler_pool_desired_replicas", targets.get(pool.key, status.spec_replicas), attrs)
            series.add("autoscaler_pool_current_replicas", status.spec_replicas, attrs)
            series.add("autoscaler_pool_ready_replicas", status.ready, attrs)
            series.add("autoscaler_pool_pending_replicas", len(status.pending_since), attrs)
            held = (status.spec_replicas + status.terminating) * pool.gpus_per_replica
            series.add("autoscaler_pool_gpus", held, attrs)
            cost = status.spec_replicas * pool.gpus_per_replica * pool.cost_per_gpu_hour
            series.add("autoscaler_pool_cost_dollars_per_hour", cost, attrs)

        wl_attrs = {"workload": wl.name, "namespace": wl.namespace}
        if decision is not None:
            if decision.recommended_units is not None and math.isfinite(decision.recommended_units):
                series.add("autoscaler_workload_recommended_units", decision.recommended_units, wl_attrs)
            series.add("autoscaler_workload_desired_units", decision.desired_units, wl_attrs)
            series.add("autoscaler_workload_granted_units", decision.granted_units, wl_attrs)

        for trig in wl.triggers:
            attrs = {**wl_attrs, "trigger": trig.name, "type": trig.type}
            reading = got.get(trig.name)
            valid = reading is not None and reading.value is not None and math.isfinite(reading.value)
            series.add("autoscaler_trigger_target", trig.target, attrs)
            series.add("autoscaler_trigger_failing", 0.0 if valid else 1.0, attrs)
            if (wl.name, trig.name) not in self._counted_triggers:
                # Zero now, so that rate() and increase() see the counter before its first failure.
                self._counted_triggers.add((wl.name, trig.name))
                self._failures.add(0, attrs)
            if reading is None:
                continue
            series.add("autoscaler_trigger_reading_age_seconds", max(0.0, now - reading.at), attrs)
            if valid:
                assert reading.value is not None
                series.add("autoscaler_trigger_value", reading.value, attrs)
            elif self._failure_seen.get((wl.name, trig.name)) != reading.at:
                # Reconciles outnumber polls: one failed poll seen by three reconciles is one failure.
                self._failure_seen[(wl.name, trig.name)] = reading.at
                self._failures.add(1, attrs)

    def _count_action(self, result: ActionResult, wl: WorkloadSpec | None) -> None:
        action = result.action
        kind = action_kind(action)
        pool = next((p for p in wl.pools if p.key == action.pool), None) if wl is not None else None
        direction = "down" if action.is_scale_down else "up"
        attrs = _action_attributes(action.workload, action.pool, pool, direction, kind, result.outcome)
        self._actions.add(1, attrs)

    def _prune_failures(self, workloads: Sequence[WorkloadSpec]) -> None:
        if len(self._failure_seen) > sum(len(w.triggers) for w in workloads):
            live = {(w.name, t.name) for w in workloads for t in w.triggers}
            self._failure_seen = {k: v for k, v in self._failure_seen.items() if k in live}

    def _trace(
        self,
        duration_seconds: float,
        workloads: Sequence[WorkloadSpec],
        plan: Plan,
        snapshot: ClusterSnapshot,
        now: float,
    ) -> None:
        # The reconcile starts at the engine's `now` (its readings and decisions are of that moment)
        # and lasts the decision and the writes.
        start_ns = int(now * 1e9)
        end_ns = start_ns + int(max(0.0, duration_seconds) * 1e9)
        root = self._tracer.start_span(
            "reconcile",
            start_time=start_ns,
            attributes={
                "autoscaler.workloads": len(workloads),
                "autoscaler.actions": len(plan.actions),
                "autoscaler.leader": self._leader,
                "autoscaler.now": now,
            },
        )
        ctx = trace.set_span_in_context(root)
        by_workload: dict[str, list[ScaleAction]] = {}
        for action in plan.actions:
            by_workload.setdefault(action.workload, []).append(action)
        for wl in workloads:
            decision = plan.decisions.get(wl.name)
            attrs: dict[str, Any] = {"autoscaler.workload": wl.name, "autoscaler.namespace": wl.namespace}
            if decision is not None:
                attrs.update(_decision_attributes(decision))
            acts = by_workload.get(wl.name, [])
            if acts:
                attrs["autoscaler.scale_actions"] = [
                    f"{a.pool}: {a.from_replicas} -> {a.to_replicas}" for a in acts
                ]
                attrs["autoscaler.reason_kinds"] = [str(action_kind(a)) for a in acts]
            span = self._tracer.start_span(
                f"decide {wl.name}", context=ctx, start_time=start_ns, attributes=attrs
            )
            span.end(end_time=end_ns)
        root.end(end_time=end_ns)

    def _frame_callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return self._frame.series.get(name, ())

        return callback

    # ------------------------------------------------------------------------------------------
    # HTTP server

    def metrics_text(self, accept: str | None = None) -> tuple[bytes, str]:
        """The `/metrics` body and content type for an `Accept` header (OpenMetrics when asked)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def serve(self) -> int:
        """Bind and serve in a daemon thread; returns the bound port. Raises OSError if the port is
        taken, at once rather than in the thread. Synchronous and quick: fine in async code too."""
        if self._server is not None:
            return self.port
        server_class = _IPv6Server if ":" in self.host else _Server
        server = server_class((self.host, self.port), _handler(self))
        server.daemon_threads = True
        server.slots = threading.BoundedSemaphore(self.max_connections)
        self._server = server
        self.port = int(server.server_address[1])
        # A short poll interval so close() (which waits for the loop to notice) returns quickly.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="telemetry-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    @property
    def bound_address(self) -> tuple[str, int]:
        """(address, port) the server's socket is bound to; only after `serve()`."""
        if self._server is None:
            raise RuntimeError("Telemetry.bound_address before serve()")
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop the server and flush the exporters (pending spans, the last OTLP metrics)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown()

    async def start(self) -> None:
        """`serve()` for the controller's event loop, and the heartbeat /healthz watches on it."""
        self.serve()
        if self._heartbeat is None:
            self._beat = time.monotonic()
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="telemetry-heartbeat")

    async def stop(self) -> None:
        """`close()` off the event loop: shutting the server down and flushing exporters block."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat, self._beat = None, None
        await asyncio.to_thread(self.close)

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(min(1.0, self.liveness_seconds / 4))

    @property
    def alive(self) -> bool:
        """The event loop ticked within `liveness_seconds` (always true before `start()`: nothing
        runs on a loop to watch then)."""
        beat = self._beat
        return beat is None or time.monotonic() - beat <= self.liveness_seconds


def _observe_caps(series: _Series, plan: Plan) -> None:
    """GPUs held and granted under every dimension, next to its cap, as the engine's limits stage
    counted them (`Plan.usage`): the dashboard cannot disagree with the decision. Dimensions without
    a cap are exported too (per-type usage is worth a panel even where the type is unlimited)."""
    for dim, use in plan.usage.items():
        attrs = _scope_attributes(dim)
        series.add("autoscaler_gpus_in_use", use.held, attrs)
        series.add("autoscaler_gpus_granted", use.granted, attrs)
        if use.cap is not None:
            series.add("autoscaler_gpu_cap", use.cap, attrs)


def _action_attributes(
    workload: str, key: str, pool: PoolSpec | None, direction: str, kind: ActionKind, outcome: Outcome
) -> dict[str, str]:
    namespace, _, deployment = key.partition("/")
    return {
        "workload": workload,
        "namespace": namespace,
        "deployment": deployment,
        "node_class": str(pool.node_class) if pool is not None else "",
        "direction": direction,
        "reason": str(kind),
        "outcome": str(outcome),
    }


def _scope_attributes(scope: tuple[str, ...]) -> dict[str, str]:
    # One label set for every scope, blanks where a scope has no such dimension: a metric whose
    # series differ in label names is awkward to aggregate.
    kind = scope[0]
    per_type = kind == "type"  # the engine's name; the metric's scope label says what it is
    return {
        "scope": "cluster_gpu_type" if per_type else kind,
        "cluster": scope[1] if per_type else "",
        "gpu_type": scope[2] if per_type else "",
        "provider": scope[1] if kind == "provider" else "",
    }


def _decision_attributes(decision: Decision) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "autoscaler.desired_units": decision.desired_units,
        "autoscaler.granted_units": decision.granted_units,
        "autoscaler.steps": list(decision.steps),
        "autoscaler.targets": [f"{k}={v}" for k, v in decision.targets.items()],
    }
    if decision.recommended_units is not None:
        attrs["autoscaler.recommended_units"] = decision.recommended_units
    if decision.failed_triggers:
        attrs["autoscaler.failed_triggers"] = list(decision.failed_triggers)
    if decision.fallback:
        attrs["autoscaler.fallback"] = True
    return attrs


def _resource(env: Mapping[str, str]) -> Resource:
    attributes: dict[str, str] = {"service.version": __version__}
    # OTEL_SERVICE_NAME, when set, names the service (Resource.create reads it); ours is the default.
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "gpu-autoscaler"
    return Resource.create(attributes)


def _otlp_configured(env: Mapping[str, str], signal: str) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def _otlp_span_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    if not _otlp_configured(env, "TRACES"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otlp extra is not installed: no traces")
        return None
    # The exporter reads its endpoint, headers and timeout from the same OTEL_* variables.
    return OTLPSpanExporter()


def _otlp_metric_reader(env: Mapping[str, str]) -> MetricReader | None:
    if not _otlp_configured(env, "METRICS"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otlp extra is not installed: no OTLP metrics")
        return None
    return PeriodicExportingMetricReader(OTLPMetricExporter(), cardinality_limits=_LIMITS)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `slots` of them: a connection over the bound is closed at
    once rather than queued behind idle ones."""

    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _IPv6Server(_Server):
    """`AUTOSCALER_METRICS_BIND_ADDRESS` may be an IPv6 address (`::` on an IPv6-only cluster)."""

    address_family = socket.AF_INET6


def _handler(telemetry: Telemetry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A socket timeout: an idle keep-alive connection, or a request sent too slowly, is closed.
        timeout = telemetry.read_timeout_seconds

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = telemetry.metrics_text(self.headers.get("Accept"))
                self._reply(200, body, content_type)
            elif path == "/healthz":
                # Alive: the event loop ticks (this thread answering proves nothing about it). The
                # kubelet restarts the pod when this fails.
                if telemetry.alive:
                    self._reply(200, b"ok\n")
                else:
                    self._reply(503, b"event loop stalled\n")
            elif path == "/readyz":
                # A member cluster that cannot be reached does not make the hub unready: it goes on
                # deciding for the others. The detail says which one is out.
                detail = telemetry.readiness_detail().encode()
                if telemetry.ready:
                    self._reply(200, b"ready\n" + detail)
                else:
                    self._reply(503, b"not ready\n" + detail)
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def send_response(self, code: int, message: str | None = None) -> None:
            # The base class adds `Server: BaseHTTP/x Python/y`: no version banner for scanners.
            self.log_request(code)
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes and scrapes every few seconds would drown the structured log.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
