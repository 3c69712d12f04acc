"""Telemetry: the autoscaler's metrics, traces and health endpoints.

Role: the observability edge. After every reconcile the live controller hands `Telemetry.observe`
what the engine saw and decided (workloads, limits, snapshot, readings, plan, how long it took);
this module turns that into metrics, exposed for Prometheus on `/metrics` (and OTLP), and into a
span per reconcile with a child span per workload decision. The same HTTP server answers `/healthz`
(the process is alive) and `/readyz` (`set_ready`). Callers: the live controller (`autoscaler run`),
the telemetry tests, which feed it from a simulation, and nothing in the engine or the policies (the
import-linter contracts forbid it: decision code stays free of I/O).

    telemetry = Telemetry.from_settings(settings)
    await telemetry.start()             # or telemetry.serve() from synchronous code
    telemetry.set_ready(True)
    telemetry.set_leader(elector.is_leader)
    ... after each reconcile:
    telemetry.observe(Reconciled(now, workloads, limits, snapshot, readings, plan, duration, outcomes))
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

Series per workload and per pool (the cardinality is the fleet's, bounded by it; no label carries
free text, a number or a time):
- per pool (workload, namespace, deployment, node_class, gpu_type, cluster, provider): the six
  `autoscaler_pool_*` gauges, and `autoscaler_scale_actions_total` with direction x reason x outcome
  (9 `scaled` series from the start, the other outcomes as they happen: at most 9 x 9 per pool);
- per workload (workload, namespace): the three `autoscaler_workload_*_units` gauges;
- per trigger (workload, namespace, trigger, type): the four `autoscaler_trigger_*` gauges and
  `autoscaler_trigger_failures_total`;
- per cap scope (scope, cluster, gpu_type, provider): the three cap gauges; and the process-wide
  ones, without labels but `version`.
So a fleet of n workloads with 2 pools and 2 triggers each exports about 43 n series: 10,000
workloads, 430,000 series and some 60 MB per scrape, most of them the zeroed action counters.

`/metrics` is written here (with `promtext`), not by the OpenTelemetry SDK's Prometheus exporter,
which converted every series at every scrape (1.8 s of CPU at 1,000 workloads; a timeout at 10,000).
`observe` keeps the reconcile's arguments by reference in one "frame", swapped in as one reference
(a scrape from the server thread never sees half a reconcile, and a pool, trigger or workload that
disappears, by a hot reload or a failed reading, disappears from `/metrics` with it), and updates the
counters, each of which keeps its series' rendered lines. The first scrape of a frame renders it,
re-formatting only the workloads whose pools, decision or readings changed since the frame before
(plus every reading's age, which moves with `now`); later scrapes of the same frame reuse the text.
A replica that loses leadership clears its frame (`set_leader(False)`), so only the leader exports
fleet gauges and dashboards can sum across replicas. benchmarks/scrape.py measures the cost.

Traces: spans are made only when an exporter exists: OTLP over HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and the `otlp` extra is installed,
or one given by a test. Without one, observe builds no spans at all, so a big fleet pays nothing
for tracing it does not use. The same variables (`..._METRICS_ENDPOINT`) add an OTLP metric exporter
next to `/metrics`, whose instruments read the same frame and counters at the exporter's pace.
Spans are recorded after the fact with the reconcile's measured start and end, since the engine
(pure, synchronous) cannot open spans itself.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
)
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from autoscaler import __version__, promtext
from autoscaler.engine.types import (
    ActionKind,
    ActionResult,
    ClusterSnapshot,
    Decision,
    Outcome,
    Plan,
    PoolSpec,
    PoolStatus,
    Reading,
    Reconciled,
    ScaleAction,
    WorkloadSpec,
)
from autoscaler.promtext import Family

if TYPE_CHECKING:
    from autoscaler.settings import Settings

log = logging.getLogger("autoscaler.telemetry")

Attributes = Mapping[str, str]

# Reconcile durations: the engine decides a small fleet in well under a millisecond and a thousand
# workloads in tens of milliseconds (benchmarks/engine.py); a stuck one shows in the top buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Series per metric before the OTLP exporter's SDK folds the rest into one `otel_metric_overflow`
# point. Its default (2,000) is a few hundred pools' action counters; the real bound is the fleet
# (9 action series per pool, up to 9 outcomes each, a handful of gauges per pool and per trigger), so
# this only guards against a runaway label.
SERIES_LIMIT = 200_000
_LIMITS: dict[type, int] = {
    Counter: SERIES_LIMIT,
    ObservableCounter: SERIES_LIMIT,
    ObservableGauge: SERIES_LIMIT,
    Histogram: SERIES_LIMIT,
}
_ABSENT = PoolStatus(0)
_NO_READINGS: Mapping[str, Reading] = {}
_NOT_READ = object()  # a trigger with no reading yet, in a workload's cache key


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
# Only for workloads that rebalance (`WorkloadSpec.rebalance`): the others never make them.
REBALANCE_KINDS: tuple[tuple[str, ActionKind], ...] = (
    ("up", ActionKind.REBALANCE),
    ("down", ActionKind.REBALANCE),
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


def _gauge(name: str, help_text: str) -> Family:
    return Family(name, "gauge", help_text)


# The frame's gauges, drawn from the last observed reconcile. Units are in the names (Prometheus
# style). First those of each workload (its pools', its own, its triggers'), in this order in a
# workload's cached lines; then the reading ages (they move with every reconcile's `now`), the caps
# and the timestamp.
_ROW_FAMILIES: tuple[Family, ...] = (
    _gauge("autoscaler_pool_desired_replicas", "Replicas the last plan gives the pool"),
    _gauge("autoscaler_pool_current_replicas", "Replicas the pool's Deployment asks for now (spec.replicas)"),
    _gauge("autoscaler_pool_ready_replicas", "Replicas of the pool whose containers run and are Ready"),
    _gauge("autoscaler_pool_pending_replicas", "Pods of the pool not yet bound to a node (Pending)"),
    _gauge(
        "autoscaler_pool_gpus", "GPUs the pool holds: spec plus terminating replicas times GPUs per replica"
    ),
    _gauge(
        "autoscaler_pool_cost_dollars_per_hour", "Pool cost rate: spec replicas x GPUs x cost per GPU-hour"
    ),
    _gauge(
        "autoscaler_workload_recommended_units",
        "The policy's recommendation in replica units (absent if none)",
    ),
    _gauge("autoscaler_workload_desired_units", "Replica units after the behavior stage"),
    _gauge("autoscaler_workload_granted_units", "Replica units the limits stage granted"),
    _gauge("autoscaler_trigger_value", "Last valid reading of the trigger (absent while the trigger fails)"),
    _gauge("autoscaler_trigger_target", "The trigger's target value"),
    _gauge(
        "autoscaler_trigger_failing", "1 while the trigger's last read failed or it has not been read yet"
    ),
)
_ROW_INDEX = {family.name: i for i, family in enumerate(_ROW_FAMILIES)}
_AGE = _gauge("autoscaler_trigger_reading_age_seconds", "Age of the trigger's last reading at the reconcile")
_CAP_FAMILIES: tuple[Family, ...] = (
    _gauge("autoscaler_gpu_cap", "A GPU cap of the parallelism limits (absent when unlimited)"),
    _gauge("autoscaler_gpus_in_use", "GPUs held now under a cap scope (spec plus terminating replicas)"),
    _gauge("autoscaler_gpus_granted", "GPUs the last plan gives under a cap scope"),
)
_TIMESTAMP = _gauge("autoscaler_last_reconcile_timestamp_seconds", "Unix time of the last observed reconcile")
_FRAME_FAMILIES = (*_ROW_FAMILIES, _AGE, *_CAP_FAMILIES, _TIMESTAMP)
_LEADER = _gauge("autoscaler_leader", "1 while this replica holds the leader lease")
_READY = _gauge("autoscaler_ready", "1 while /readyz answers 200")
_BUILD_INFO = _gauge("autoscaler_build_info", "Always 1; the version is a label")
_BUILD_LABELS = {"version": __version__}
_CLUSTER_UP = _gauge(
    "autoscaler_cluster_up", "1 while the cluster's API server is watched, 0 while it cannot be reached"
)
_CLUSTER_AGE = _gauge(
    "autoscaler_cluster_last_sync_age_seconds",
    "Seconds since the cluster's API server was last heard on every watched collection",
)


@dataclass(frozen=True, slots=True)
class _LabelSet:
    attributes: dict[str, str]
    text: str  # as the exposition writes it: `{a="1",b="2"}`

    @classmethod
    def of(cls, attributes: dict[str, str]) -> _LabelSet:
        return cls(attributes, promtext.label_text(attributes))


@dataclass(frozen=True, slots=True)
class _Labels:
    """The label sets of one workload's series: per pool, its own, per trigger."""

    pools: tuple[_LabelSet, ...]
    workload: _LabelSet
    triggers: tuple[_LabelSet, ...]

    @classmethod
    def of(cls, wl: WorkloadSpec) -> _Labels:
        own = {"workload": wl.name, "namespace": wl.namespace}
        return cls(
            tuple(_LabelSet.of(pool_attributes(wl, p)) for p in wl.pools),
            _LabelSet.of(own),
            tuple(_LabelSet.of({**own, "trigger": t.name, "type": t.type}) for t in wl.triggers),
        )


Sample = tuple[str, _LabelSet, float]


def _workload_samples(
    wl: WorkloadSpec,
    labels: _Labels,
    statuses: Sequence[PoolStatus],
    decision: Decision | None,
    got: Mapping[str, Reading],
) -> Iterator[Sample]:
    """The gauges of one workload but its readings' ages: (metric, labels, value)."""
    targets = decision.targets if decision is not None else {}
    for pool, status, attrs in zip(wl.pools, statuses, labels.pools, strict=True):
        yield "autoscaler_pool_desired_replicas", attrs, targets.get(pool.key, status.spec_replicas)
        yield "autoscaler_pool_current_replicas", attrs, status.spec_replicas
        yield "autoscaler_pool_ready_replicas", attrs, status.ready
        yield "autoscaler_pool_pending_replicas", attrs, len(status.pending_since)
        held = (status.spec_replicas + status.terminating) * pool.gpus_per_replica
        yield "autoscaler_pool_gpus", attrs, held
        cost = status.spec_replicas * pool.gpus_per_replica * pool.cost_per_gpu_hour
        yield "autoscaler_pool_cost_dollars_per_hour", attrs, cost

    if decision is not None:
        if decision.recommended_units is not None and math.isfinite(decision.recommended_units):
            yield "autoscaler_workload_recommended_units", labels.workload, decision.recommended_units
        yield "autoscaler_workload_desired_units", labels.workload, decision.desired_units
        yield "autoscaler_workload_granted_units", labels.workload, decision.granted_units

    for trig, attrs in zip(wl.triggers, labels.triggers, strict=True):
        reading = got.get(trig.name)
        valid = reading is not None and reading.value is not None and math.isfinite(reading.value)
        yield "autoscaler_trigger_target", attrs, trig.target
        yield "autoscaler_trigger_failing", attrs, 0.0 if valid else 1.0
        if valid:
            assert reading is not None and reading.value is not None
            yield "autoscaler_trigger_value", attrs, reading.value


def _reading_times(
    wl: WorkloadSpec, labels: _Labels, got: Mapping[str, Reading]
) -> Iterator[tuple[_LabelSet, float]]:
    """(labels, reading time) of each trigger read at least once: its age is `now` minus that."""
    for trig, attrs in zip(wl.triggers, labels.triggers, strict=True):
        reading = got.get(trig.name)
        if reading is not None:
            yield attrs, reading.at


def _age(now: float, at: float) -> float:
    return max(0.0, now - at)


def _cap_samples(plan: Plan) -> Iterator[Sample]:
    """GPUs held and granted under every dimension, next to its cap, as the engine's limits stage
    counted them (`Plan.usage`): the dashboard cannot disagree with the decision. Dimensions without
    a cap are exported too (per-type usage is worth a panel even where the type is unlimited)."""
    for dim, use in plan.usage.items():
        attrs = _LabelSet.of(_scope_attributes(dim))
        yield "autoscaler_gpus_in_use", attrs, use.held
        yield "autoscaler_gpus_granted", attrs, use.granted
        if use.cap is not None:
            yield "autoscaler_gpu_cap", attrs, use.cap


@dataclass(slots=True)
class _Row:
    """One workload's rendered gauge lines, reused by every scrape while `key` (what they are drawn
    from) stays the same; its readings' ages, which move with every `now`, are rendered per frame
    from `ages`."""

    spec: WorkloadSpec
    labels: _Labels
    key: tuple[Any, ...]
    lines: tuple[str, ...]  # one (possibly empty, possibly multi-line) text per `_ROW_FAMILIES`
    ages: tuple[tuple[str, str], ...]  # (trigger, its age's line up to the value)


def _row(
    wl: WorkloadSpec,
    labels: _Labels,
    key: tuple[Any, ...],
    statuses: Sequence[PoolStatus],
    decision: Decision | None,
    got: Mapping[str, Reading],
) -> _Row:
    texts: list[list[str]] = [[] for _ in _ROW_FAMILIES]
    for name, attrs, value in _workload_samples(wl, labels, statuses, decision, got):
        texts[_ROW_INDEX[name]].append(f"{name}{attrs.text} {promtext.fmt(value)}\n")
    ages = tuple(
        (t.name, f"{_AGE.name}{attrs.text} ") for t, attrs in zip(wl.triggers, labels.triggers, strict=True)
    )
    return _Row(wl, labels, key, tuple("".join(t) for t in texts), ages)


class _Frame:
    """One observed reconcile, kept as the references `observe` got (nothing is copied or converted
    on the reconcile's path) and rendered by the first scrape that wants it. Replaced whole by each
    `observe`, so a scrape from the server thread never sees half a reconcile."""

    __slots__ = ("now", "observations", "plan", "readings", "rendered", "snapshot", "workloads")

    def __init__(
        self,
        workloads: Sequence[WorkloadSpec],
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        plan: Plan,
        now: float | None,
    ) -> None:
        self.workloads = workloads
        self.snapshot = snapshot
        self.readings = readings
        self.plan = plan
        self.now = now
        self.rendered: list[tuple[Family, bytes]] | None = None
        self.observations: dict[str, list[Observation]] | None = None

    def samples(self) -> Iterator[Sample]:
        """Every gauge of the frame, uncached (the OTLP exporter's view, once a minute or so)."""
        if self.now is None:
            return
        for wl in self.workloads:
            labels = _Labels.of(wl)
            got = self.readings.get(wl.name, _NO_READINGS)
            statuses = [self.snapshot.pools.get(p.key, _ABSENT) for p in wl.pools]
            yield from _workload_samples(wl, labels, statuses, self.plan.decisions.get(wl.name), got)
            for attrs, at in _reading_times(wl, labels, got):
                yield _AGE.name, attrs, _age(self.now, at)
        yield from _cap_samples(self.plan)
        yield _TIMESTAMP.name, _LabelSet.of({}), self.now


_EMPTY_FRAME = _Frame((), ClusterSnapshot({}), {}, Plan((), {}), None)


class Telemetry:
    """Metrics, tracer and the `/metrics` `/healthz` `/readyz` server of one process; the live
    controller's `Observer` (`autoscaler.controller`).

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
        # The rows of the last rendered frame, by workload; one scrape renders at a time.
        self._rows: dict[str, _Row] = {}
        self._render_lock = threading.Lock()
        self._failure_seen: dict[tuple[str, str], float] = {}
        # Pools and triggers whose counters exist (at zero if need be): they stay for good.
        self._counted_pools: set[tuple[str, str, bool]] = set()
        self._counted_triggers: set[tuple[str, str]] = set()
        # The last `workloads` observed, and its triggers by workload name: a new sequence is
        # searched for new pools and triggers, the same one (the controller's tuple, until a
        # reload) is not searched again.
        self._workloads: Sequence[WorkloadSpec] | None = None
        self._triggers: dict[str, tuple[WorkloadSpec, dict[str, str]]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clusters: Callable[[], Sequence[ClusterReport]] = _no_clusters

        self._actions = promtext.Counter(
            Family(
                "autoscaler_scale_actions",
                "counter",
                "Planned pool resizes by direction, reason kind and what became of them",
            )
        )
        self._failures = promtext.Counter(
            Family("autoscaler_trigger_failures", "counter", "Failed trigger reads (each failed poll once)")
        )
        self._reconciles = promtext.Counter(Family("autoscaler_reconciles", "counter", "Reconciles observed"))
        self._reconciles.add(0, {})  # exported from the start: rate() needs the zero before the first one
        self._duration = promtext.Histogram(
            Family(
                "autoscaler_reconcile_duration_seconds", "histogram", "Wall time of one reconcile", "seconds"
            ),
            DURATION_BUCKETS,
        )
        # process_* (memory, CPU, open files) for the health dashboard; nothing on non-Linux.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)

        resource = _resource(env)
        self._meter_provider, self._otlp_duration = self._otlp_metrics(env, resource)

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

    def _otlp_metrics(
        self, env: Mapping[str, str], resource: Resource
    ) -> tuple[MeterProvider | None, otel_metrics.Histogram | None]:
        """The same metrics as OpenTelemetry instruments for an OTLP exporter, when one is set: they
        read the stores `/metrics` is written from, at the exporter's own pace."""
        reader = _otlp_metric_reader(env)
        if reader is None:
            return None, None
        provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = provider.get_meter("autoscaler", __version__)
        for family in _FRAME_FAMILIES:
            meter.create_observable_gauge(
                family.name, callbacks=[self._frame_callback(family.name)], description=family.help
            )
        own: tuple[tuple[Family, Callable[[], tuple[float, dict[str, str]]]], ...] = (
            (_LEADER, lambda: (1.0 if self._leader else 0.0, {})),
            (_READY, lambda: (1.0 if self._ready else 0.0, {})),
            (_BUILD_INFO, lambda: (1.0, _BUILD_LABELS)),
        )
        for family, read in own:
            meter.create_observable_gauge(
                family.name, callbacks=[_observe_one(read)], description=family.help
            )
        for family in (_CLUSTER_UP, _CLUSTER_AGE):
            meter.create_observable_gauge(
                family.name, callbacks=[self._cluster_callback(family)], description=family.help
            )
        for counter in (self._actions, self._failures, self._reconciles):
            meter.create_observable_counter(
                counter.family.name, callbacks=[_counter_callback(counter)], description=counter.family.help
            )
        duration = meter.create_histogram(
            self._duration.family.name,
            unit="s",
            description=self._duration.family.help,
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        return provider, duration

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

    def observe(self, reconciled: Reconciled) -> None:
        """Record one reconcile: what it got, the plan it returned and its wall time; the
        `outcomes` are what `autoscaler_scale_actions_total` counts, by outcome.

        `now` is the engine's clock (the one `Reading.at` and `PoolStatus.pending_since` use). Call it
        for the reconciles whose plans are acted on (the leader's). The gauges keep `workloads`,
        `snapshot`, `readings` and `plan` by reference until the next call and are drawn from them
        at the next scrape: the caller must not change them afterwards (the controller hands over a
        copy of its readings). Cheap: counters only, O(actions + triggers)."""
        r = reconciled
        now, workloads, snapshot, readings, plan = r.now, r.workloads, r.snapshot, r.readings, r.plan
        duration_seconds, outcomes = r.duration_seconds, r.outcomes
        if self._leader:
            # Only the leader's plans are acted on: a follower's fleet gauges and action counts would
            # double every sum across replicas (it still reports its reconciles and their duration).
            self._frame = _Frame(workloads, snapshot, readings, plan, now)
            if workloads is not self._workloads:
                self._count_new_series(workloads)
                self._triggers = {wl.name: (wl, {t.name: t.type for t in wl.triggers}) for wl in workloads}
                self._workloads = workloads
            self._count_failures(readings)
            by_name = {wl.name: wl for wl in workloads} if plan.actions else {}
            if outcomes is None:
                outcomes = [ActionResult(action, Outcome.SCALED) for action in plan.actions]
            for result in outcomes:
                action = result.action
                self._count_action(result, by_name.get(action.workload))
        self._prune_failures(workloads)
        self._reconciles.add(1, {})
        self._duration.record(max(0.0, duration_seconds))
        if self._otlp_duration is not None:
            self._otlp_duration.record(max(0.0, duration_seconds))
        if self._tracing:
            self._trace(duration_seconds, workloads, plan, snapshot, now)

    def _count_new_series(self, workloads: Sequence[WorkloadSpec]) -> None:
        """Counters at zero for pools and triggers seen for the first time, so that rate() and
        increase() see each counter before its first event."""
        for wl in workloads:
            for pool in wl.pools:
                if (wl.name, pool.key, wl.rebalance) not in self._counted_pools:
                    self._counted_pools.add((wl.name, pool.key, wl.rebalance))
                    kinds = ACTION_KINDS + REBALANCE_KINDS if wl.rebalance else ACTION_KINDS
                    for direction, kind in kinds:
                        landed = _action_attributes(wl.name, pool.key, pool, direction, kind, Outcome.SCALED)
                        self._actions.add(0, landed)
            for trig in wl.triggers:
                if (wl.name, trig.name) not in self._counted_triggers:
                    self._counted_triggers.add((wl.name, trig.name))
                    self._failures.add(0, _trigger_attributes(wl, trig.name, trig.type))

    def _count_failures(self, readings: Mapping[str, Mapping[str, Reading]]) -> None:
        for name, got in readings.items():
            for trigger, reading in got.items():
                if reading.value is not None and math.isfinite(reading.value):
                    continue
                wl, types = self._triggers.get(name, (None, {}))
                type_ = types.get(trigger)
                # Reconciles outnumber polls: one failed poll seen by three reconciles is one failure.
                if (
                    wl is not None
                    and type_ is not None
                    and self._failure_seen.get((name, trigger)) != reading.at
                ):
                    self._failure_seen[(name, trigger)] = reading.at
                    self._failures.add(1, _trigger_attributes(wl, trigger, type_))

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
            frame = self._frame
            if frame.observations is None:
                observations: dict[str, list[Observation]] = {}
                for metric, attrs, value in frame.samples():
                    observations.setdefault(metric, []).append(Observation(value, attrs.attributes))
                frame.observations = observations
            return frame.observations.get(name, ())

        return callback

    # ------------------------------------------------------------------------------------------
    # HTTP server

    def metrics_text(self, accept: str | None = None) -> tuple[bytes, str]:
        """The `/metrics` body and content type for an `Accept` header (OpenMetrics when asked).
        The last frame is rendered once, by the first scrape after its reconcile, and only the
        workloads whose inputs changed since the frame before are formatted anew."""
        encoder, content_type = choose_encoder(accept or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        families: list[tuple[Family, bytes]] = [
            (self._reconciles.family, self._reconciles.text()),
            (self._actions.family, self._actions.text()),
            (self._failures.family, self._failures.text()),
            (self._duration.family, self._duration.text()),
            *self._rendered(self._frame),
            (_LEADER, f"{_LEADER.name} {promtext.fmt(1.0 if self._leader else 0.0)}\n".encode()),
            (_READY, f"{_READY.name} {promtext.fmt(1.0 if self._ready else 0.0)}\n".encode()),
            (_BUILD_INFO, f"{_BUILD_INFO.name}{promtext.label_text(_BUILD_LABELS)} 1.0\n".encode()),
            *(
                (
                    family,
                    "".join(
                        f"{family.name}{promtext.label_text(labels)} {promtext.fmt(v)}\n"
                        for v, labels in self._cluster_values(family)
                    ).encode(),
                )
                for family in (_CLUSTER_UP, _CLUSTER_AGE)
            ),
        ]
        return promtext.exposition(encoder(self.registry), families, openmetrics), content_type

    def _cluster_values(self, family: Family) -> list[tuple[float, dict[str, str]]]:
        """Each managed cluster's up flag or sync age (left out before its first contact, not 0).
        Every replica reports its own connections, leader or not; a few clusters, read per scrape."""
        if family is _CLUSTER_UP:
            return [(float(c.down_since is None), {"cluster": c.name}) for c in self._clusters()]
        return [(c.age_seconds, {"cluster": c.name}) for c in self._clusters() if c.age_seconds is not None]

    def _cluster_callback(self, family: Family) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, labels) for v, labels in self._cluster_values(family)]

        return callback

    def _rendered(self, frame: _Frame) -> list[tuple[Family, bytes]]:
        with self._render_lock:
            if frame.rendered is None:
                frame.rendered = self._render(frame)
            return frame.rendered

    def _render(self, frame: _Frame) -> list[tuple[Family, bytes]]:
        if frame.now is None:
            return []
        now = frame.now
        pools = frame.snapshot.pools
        decisions = frame.plan.decisions
        previous = self._rows
        rows: list[_Row] = []
        ages: list[str] = []
        for wl in frame.workloads:
            got = frame.readings.get(wl.name, _NO_READINGS)
            statuses = tuple(pools.get(p.key, _ABSENT) for p in wl.pools)
            decision = decisions.get(wl.name)
            key = (
                statuses,
                None
                if decision is None
                else (
                    decision.recommended_units,
                    decision.desired_units,
                    decision.granted_units,
                    decision.targets,
                ),
                # Values, not reading times: a new poll of the same value changes only the age.
                tuple(_NOT_READ if (r := got.get(t.name)) is None else r.value for t in wl.triggers),
            )
            row = previous.get(wl.name)
            if row is None or row.spec is not wl or row.key != key:
                labels = row.labels if row is not None and row.spec is wl else _Labels.of(wl)
                row = _row(wl, labels, key, statuses, decision, got)
            rows.append(row)
            for trigger, prefix in row.ages:
                if (reading := got.get(trigger)) is not None:
                    ages.append(f"{prefix}{promtext.fmt(_age(now, reading.at))}\n")
        self._rows = {row.spec.name: row for row in rows}

        columns = list(zip(*(row.lines for row in rows), strict=True)) or [()] * len(_ROW_FAMILIES)
        out = [
            (family, "".join(column).encode()) for family, column in zip(_ROW_FAMILIES, columns, strict=True)
        ]
        out.append((_AGE, "".join(ages).encode()))
        caps: dict[str, list[str]] = {family.name: [] for family in _CAP_FAMILIES}
        for name, attrs, value in _cap_samples(frame.plan):
            caps[name].append(f"{name}{attrs.text} {promtext.fmt(value)}\n")
        out.extend((family, "".join(caps[family.name]).encode()) for family in _CAP_FAMILIES)
        out.append((_TIMESTAMP, f"{_TIMESTAMP.name} {promtext.fmt(now)}\n".encode()))
        return out

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
        if self._meter_provider is not None:
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


def _trigger_attributes(wl: WorkloadSpec, trigger: str, type_: str) -> dict[str, str]:
    return {"workload": wl.name, "namespace": wl.namespace, "trigger": trigger, "type": type_}


def _observe_one(
    read: Callable[[], tuple[float, dict[str, str]]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        value, attributes = read()
        return [Observation(value, attributes)]

    return callback


def _counter_callback(counter: promtext.Counter) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for attributes, value in counter.series()]

    return callback


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
