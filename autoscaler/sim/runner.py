"""The simulation loop: readings -> decide -> apply the plan -> advance the virtual clock, every tick.

`run` drives the same pure `engine.reconcile` the live controller calls (or any function of the same
shape, so tests can script decisions) against `sim.cluster`, keeps the engine state between ticks,
records what a dashboard would show per tick, and returns everything as a `SimResult`. It applies
every action at once: a simulated API server has no latency and no conflicts, which keeps the
comparison about the decisions. The decision log (JSON lines) is written and read here too.
Callers: `sim.cli` (`autoscaler simulate`, `autoscaler explain`), `sim.report`, `sim.plot`, tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ClusterSnapshot,
    Decision,
    EngineState,
    Limits,
    NodeClass,
    Plan,
    Reading,
    WorkloadSpec,
)
from autoscaler.sim.cluster import PoolCounts, ProviderModel, SimCluster, WorkloadModel
from autoscaler.sim.sources import TriggerOutage, build_sources
from autoscaler.sim.trace import FloatArray, IntArray

DecideFn = Callable[
    [
        Sequence[WorkloadSpec],
        ClusterSnapshot,
        Mapping[str, Mapping[str, Reading]],
        EngineState,
        Limits,
        float,
    ],
    tuple[Plan, EngineState],
]
Progress = Callable[[float, float], None]

# Dashboards show a p95 queue wait over the last minute; so do the plot and the tick series.
P95_WINDOW_SECONDS = 60.0
DEFAULT_SLA_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Simulation:
    """Everything one run needs; `sim.scenario` builds it from a scenario file."""

    workloads: tuple[WorkloadSpec, ...]
    models: tuple[WorkloadModel, ...]  # one per workload, same names
    limits: Limits
    node_groups: Mapping[tuple[str, str], int]
    providers: Mapping[str, ProviderModel] = field(default_factory=dict)
    outages: tuple[TriggerOutage, ...] = ()
    # Pool key -> replicas already running and ready at t=0 (a cluster in steady state, not cold).
    initial_replicas: Mapping[str, int] = field(default_factory=dict)
    sla_seconds: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    tick: float = 1.0
    # How long past the last arrival the run may go on to serve what is left.
    max_drain_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class PoolResult:
    key: str
    node_class: NodeClass
    gpus_per_replica: int
    spec: IntArray  # per tick
    ready: IntArray
    starting: IntArray  # scheduled or provisioning, not ready
    unscheduled: IntArray
    gpu_hours: float
    cost: float
    interruptions: int
    pods_created: int


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    name: str
    sla_seconds: float
    arrival: FloatArray  # per request
    start: FloatArray  # per request; NaN if never served
    finish: FloatArray
    attempts: IntArray
    arrival_rate: FloatArray  # per tick, requests/s over the tick
    waiting: IntArray  # per tick
    in_service: IntArray
    gpus: IntArray
    p95_wait: FloatArray  # per tick, over requests started in the last P95_WINDOW_SECONDS; NaN if none
    pools: tuple[PoolResult, ...]
    scale_actions: int

    @property
    def served(self) -> npt.NDArray[np.bool_]:
        return np.asarray(~np.isnan(self.finish))

    @property
    def wait(self) -> FloatArray:
        """Queue wait of each served request: start of the service that completed minus arrival."""
        served = self.served
        return np.asarray(self.start[served] - self.arrival[served], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SimResult:
    times: FloatArray
    workloads: tuple[WorkloadResult, ...]
    total_gpus: IntArray
    company_cap: int | None
    end: float
    decisions: tuple[dict[str, Any], ...]
    seed: int
    tick: float


def run(sim: Simulation, decide: DecideFn = reconcile, progress: Progress | None = None) -> SimResult:
    """Replay the simulation; `progress(now, horizon)` is called once per tick."""
    cluster = SimCluster(sim.models, sim.node_groups, sim.providers, sim.seed)
    for key, replicas in sim.initial_replicas.items():
        cluster.start_ready(key, replicas, 0.0)
    sources = build_sources(sim.workloads, {m.name: m.trace.arrival for m in sim.models}, sim.outages)
    horizon = max((m.trace.span for m in sim.models), default=0.0)
    names = [w.name for w in sim.workloads]
    pool_keys = [p.key for w in sim.workloads for p in w.pools]

    times: list[float] = []
    waiting: dict[str, list[int]] = {n: [] for n in names}
    in_service: dict[str, list[int]] = {n: [] for n in names}
    gpus: dict[str, list[int]] = {n: [] for n in names}
    pool_counts: dict[str, list[PoolCounts]] = {key: [] for key in pool_keys}
    actions = dict.fromkeys(names, 0)
    log = _DecisionLog()

    state = EngineState()
    step = 0
    now = 0.0
    cluster.advance(now)
    while True:
        plan, state = decide(
            sim.workloads, cluster.snapshot(), sources.read(cluster, now), state, sim.limits, now
        )
        acted: set[str] = set()
        for action in plan.actions:
            if action.pool not in pool_counts:
                raise RuntimeError(
                    f"the engine scaled {action.pool}, which no workload of the simulation has"
                )
            cluster.set_replicas(action.pool, action.to_replicas, now)
            actions[action.workload] += 1
            acted.add(action.workload)
        log.add(plan.decisions.values(), acted)

        times.append(now)
        for n in names:
            waiting[n].append(cluster.waiting(n))
            in_service[n].append(cluster.in_service(n))
            gpus[n].append(cluster.gpus_in_use(n))
        for key in pool_keys:
            pool_counts[key].append(cluster.pool_counts(key))
        if progress is not None:
            progress(now, horizon)
        if now >= horizon and (cluster.idle() or now >= horizon + sim.max_drain_seconds):
            break
        step += 1
        now = step * sim.tick  # not a running sum: no drift over thousands of ticks
        cluster.advance(now)

    t = np.asarray(times)
    results = []
    for spec, model in zip(sim.workloads, sim.models, strict=True):
        start, finish, attempts = cluster.requests(spec.name)
        pools = tuple(
            PoolResult(
                key=p.key,
                node_class=p.node_class,
                gpus_per_replica=p.gpus_per_replica,
                spec=np.asarray([c.spec for c in pool_counts[p.key]]),
                ready=np.asarray([c.ready for c in pool_counts[p.key]]),
                starting=np.asarray([c.starting for c in pool_counts[p.key]]),
                unscheduled=np.asarray([c.unscheduled for c in pool_counts[p.key]]),
                gpu_hours=cluster.gpu_seconds(p.key, now) / 3600.0,
                cost=cluster.cost(p.key, now),
                interruptions=cluster.interruptions(p.key),
                pods_created=cluster.pods_created(p.key),
            )
            for p in spec.pools
        )
        arrival = model.trace.arrival
        results.append(
            WorkloadResult(
                name=spec.name,
                sla_seconds=sim.sla_seconds.get(spec.name, DEFAULT_SLA_SECONDS),
                arrival=arrival,
                start=start.copy(),
                finish=finish.copy(),
                attempts=attempts.copy(),
                arrival_rate=_rate_per_tick(arrival, t, sim.tick),
                waiting=np.asarray(waiting[spec.name]),
                in_service=np.asarray(in_service[spec.name]),
                gpus=np.asarray(gpus[spec.name]),
                p95_wait=_trailing_p95(arrival, start, finish, t, P95_WINDOW_SECONDS),
                pools=pools,
                scale_actions=actions[spec.name],
            )
        )
    total = np.sum([r.gpus for r in results], axis=0) if results else np.zeros(len(t), dtype=np.int64)
    return SimResult(
        times=t,
        workloads=tuple(results),
        total_gpus=np.asarray(total),
        company_cap=sim.limits.company_max_gpus,
        end=now,
        decisions=tuple(log.finish()),
        seed=sim.seed,
        tick=sim.tick,
    )


def _rate_per_tick(arrival: FloatArray, times: FloatArray, tick: float) -> FloatArray:
    """Arrivals in (t - tick, t] per second, for each tick t."""
    upto = np.searchsorted(arrival, times, side="right")
    before = np.searchsorted(arrival, times - tick, side="right")
    return np.asarray((upto - before) / tick, dtype=np.float64)


def _trailing_p95(
    arrival: FloatArray, start: FloatArray, finish: FloatArray, times: FloatArray, window: float
) -> FloatArray:
    served = ~np.isnan(finish)
    order = np.argsort(start[served], kind="stable")
    s = start[served][order]
    w = (start[served] - arrival[served])[order]
    hi = np.searchsorted(s, times, side="right")
    lo = np.searchsorted(s, times - window, side="right")
    out = np.full(times.size, np.nan)
    for i in np.flatnonzero(hi > lo):
        out[i] = np.percentile(w[lo[i] : hi[i]], 95)
    return out


# ----------------------------------------------------------------------------------------------
# Decision log


class _DecisionLog:
    """Keeps a decision when its targets changed or it came with actions, plus each workload's last
    one, so `autoscaler explain` can answer "why now" without a line per tick."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._targets: dict[str, dict[str, int]] = {}
        self._last: dict[str, Decision] = {}
        self._last_kept: dict[str, Decision] = {}

    def add(self, decisions: Iterable[Decision], acted: set[str]) -> None:
        for d in decisions:
            targets = dict(d.targets)
            if d.workload in acted or targets != self._targets.get(d.workload):
                self._records.append(decision_record(d))
                self._last_kept[d.workload] = d
            self._targets[d.workload] = targets
            self._last[d.workload] = d

    def finish(self) -> list[dict[str, Any]]:
        tail = [decision_record(d) for name, d in self._last.items() if self._last_kept.get(name) is not d]
        return self._records + tail


def decision_record(d: Decision) -> dict[str, Any]:
    return {
        "workload": d.workload,
        "at": d.at,
        "recommended_units": d.recommended_units,
        "desired_units": d.desired_units,
        "granted_units": d.granted_units,
        "targets": dict(d.targets),
        "steps": list(d.steps),
        "failed_triggers": list(d.failed_triggers),
    }


def decision_from_record(r: Mapping[str, Any]) -> Decision:
    return Decision(
        workload=str(r["workload"]),
        at=float(r["at"]),
        recommended_units=None if r.get("recommended_units") is None else float(r["recommended_units"]),
        desired_units=int(r["desired_units"]),
        granted_units=float(r["granted_units"]),
        targets={str(k): int(v) for k, v in dict(r["targets"]).items()},
        steps=tuple(str(s) for s in r.get("steps", ())),
        failed_triggers=tuple(str(s) for s in r.get("failed_triggers", ())),
    )


def write_decision_log(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=False) + "\n")


def read_decision_log(path: Path) -> list[dict[str, Any]]:
    """Raises OSError if the file cannot be read and ValueError (naming the line) if a line is not JSON."""
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON decision record: {exc.msg}") from exc
    return records
