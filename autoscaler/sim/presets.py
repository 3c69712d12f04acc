"""Policy presets: the same simulation with every workload's policy swapped for a named one.

    apply_policy(sim, name, knob) -> Simulation
    describe(sim, name, knob) -> str          # the report title: name and each workload's knob
    apply_keda(sim, KedaKnobs(...)) -> Simulation   # any KEDA ScaledObject, for the benchmark's grid
    cheapest_first(sim) -> Simulation         # pools listed cheapest per unit of throughput first
    rebalanced(sim) -> Simulation             # every workload rebalances toward its preferred pools
    keda_grid(**axes) -> list[KedaKnobs]      # the grid issue 10 asks for (KEDA_GRID_AXES)

`autoscaler simulate --policy NAME[=KNOB]` and the scaling-quality benchmark compare policies this
way. Only the decision logic changes: pools, spill-over, caps, min/max, fallback, traces, the seed
and the report's SLA stay as the scenario has them, and so does the workload's behavior block (the
engine's behavior stage ignores it for a policy that emulates a controller of its own,
`owns_behavior`). Presets and their knob (None: the default named below):

    queue-sla     maxWaitSeconds    the workload's own queue-sla options if it has them (the knob only
                                    replaces maxWaitSeconds); otherwise the report's SLA, with
                                    serviceRatePerReplica derived from the service model
    target        targetPerReplica  of the backlog trigger; default: the trigger's own
    keda-expert   targetPerReplica  KEDA `value` of an http QueueLength (waiting + in service);
                                    default: the workload's concurrency. The ScaledObject an expert
                                    deploys (`EXPERT_KEDA`): a MessageRate trigger at 0.85 x the
                                    per-replica service rate beside it, a 10-s poll, fresh metrics,
                                    the HPA behavior of REFERENCE.md (scale-down window 300 s)
    keda-hpa      targetPerReplica  KEDA's defaults (`KEDA_DEFAULTS`): amqp QueueLength alone, a 30-s
                                    poll, no HPA behavior; KEDA `value`, default: the backlog
                                    trigger's target
    knative-kpa   targetUtilization default 0.7; containerConcurrency is the workload's concurrency
    static-peak   replicas          default: the trace's peak 60-s arrival rate / per-replica
                                    service rate, rounded up
    clairvoyant   slaSeconds (W)    default: the workload's report SLA (30 s unless the scenario or
                                    its policy says otherwise): an offline reference at that SLA, not a bound

"Per-replica service rate" is concurrency / mean service seconds over the trace, for a replica of
relative throughput 1.0. "Backlog trigger" is the workload's rabbitmq QueueLength trigger that
counts waiting requests (protocol amqp, or http with excludeUnacknowledged).

Triggers added where a workload lacks what a preset reads (the simulated sources read them like any
other, `sim.sources`), named so they cannot be mistaken for the scenario's own:
  - `preset-backlog`: QueueLength, amqp (requests waiting), for queue-sla, target and keda-hpa;
  - `preset-arrivals`: MessageRate, http (arrivals/s), for queue-sla's arrival rate and KEDA's
    MessageRate trigger;
  - `preset-in-flight`: QueueLength, http (waiting + in service), Knative's observed concurrency and
    the expert KEDA's QueueLength.
The KEDA presets set each trigger's `value` in the ScaledObject (keda-hpa's options), not on the
trigger, and count replicas in pods as KEDA does: minReplicaCount / maxReplicaCount default to the
workload's minReplicas / maxReplicas read as pods.
Callers: `sim.cli` (`autoscaler simulate --policy`), benchmarks, the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import product
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from autoscaler.config.compile import trigger_options
from autoscaler.config.models import DEFAULT_QUEUE_LENGTH_TARGET, RabbitMQOptions
from autoscaler.engine.policy import Policy
from autoscaler.engine.types import TriggerSpec, WorkloadSpec
from autoscaler.policies.baselines import (
    KedaHpaOptions,
    KedaHpaPolicy,
    KnativeKpaOptions,
    KnativeKpaPolicy,
    StaticOptions,
    StaticPolicy,
)
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from autoscaler.policies.target import TargetOptions, TargetPolicy
from autoscaler.sim.clairvoyant import ClairvoyantPolicy
from autoscaler.sim.cluster import WorkloadModel
from autoscaler.sim.runner import DEFAULT_SLA_SECONDS, Simulation

# The window of the "peak arrival rate" that static-peak is sized for.
PEAK_WINDOW_SECONDS = 60.0

BACKLOG_TRIGGER = "preset-backlog"
ARRIVALS_TRIGGER = "preset-arrivals"
IN_FLIGHT_TRIGGER = "preset-in-flight"


class PresetError(ValueError):
    """An unknown preset or a knob it cannot take; the message names both and the fix."""


@dataclass(frozen=True, slots=True)
class _Workload:
    """One workload as a preset sees it: its spec, its simulated model and its report SLA."""

    spec: WorkloadSpec
    model: WorkloadModel
    sla: float


@dataclass(frozen=True, slots=True)
class Preset:
    knob: str
    # The knob's value for one workload (None: the preset's default for it).
    value: Callable[[_Workload, float | None], float]
    build: Callable[[_Workload, float], WorkloadSpec]


# ----------------------------------------------------------------------------------------------
# What the presets derive from the simulation


def service_rate_per_replica(model: WorkloadModel) -> float:
    """Requests/s one replica of relative throughput 1.0 completes: concurrency / mean service time."""
    trace = model.trace
    if len(trace) == 0:
        return float(model.concurrency)
    mean = float(np.mean(model.service.seconds(trace.context_tokens, trace.generated_tokens)))
    return model.concurrency / mean if mean > 0 else math.inf


def peak_arrival_rate(model: WorkloadModel, window: float = PEAK_WINDOW_SECONDS) -> float:
    """The most requests/s over any `window` seconds of the trace."""
    arrivals = model.trace.arrival
    if arrivals.size == 0:
        return 0.0
    # The busiest window starts at some arrival.
    ends = np.searchsorted(arrivals, arrivals + window, side="left")
    return float(np.max(ends - np.arange(arrivals.size))) / window


def _rabbitmq(t: TriggerSpec) -> RabbitMQOptions | None:
    return trigger_options(t, RabbitMQOptions) if t.type == "rabbitmq" else None


def _is_queue_length(t: TriggerSpec) -> bool:
    options = _rabbitmq(t)
    return options is not None and options.mode == "QueueLength"


def _counts_in_flight(t: TriggerSpec) -> bool:
    options = _rabbitmq(t)
    return options is not None and options.protocol == "http" and not options.exclude_unacknowledged


def _queue_of(spec: WorkloadSpec) -> str:
    for t in spec.triggers:
        options = _rabbitmq(t)
        if options is not None and options.queue:
            return options.queue
    return spec.name


def _with_trigger(
    spec: WorkloadSpec, match: Callable[[TriggerSpec], bool], make: Callable[[WorkloadSpec], TriggerSpec]
) -> tuple[WorkloadSpec, TriggerSpec]:
    """The workload's first trigger that `match`es, or the workload with `make`'s trigger added."""
    for t in spec.triggers:
        if match(t):
            return spec, t
    added = make(spec)
    return replace(spec, triggers=(*spec.triggers, added)), added


def _backlog(spec: WorkloadSpec) -> tuple[WorkloadSpec, TriggerSpec]:
    return _with_trigger(
        spec,
        lambda t: _is_queue_length(t) and not _counts_in_flight(t),
        lambda s: TriggerSpec(
            BACKLOG_TRIGGER,
            "rabbitmq",
            DEFAULT_QUEUE_LENGTH_TARGET,
            options=RabbitMQOptions(queue=_queue_of(s)),
        ),
    )


def _arrivals(spec: WorkloadSpec, rate: float) -> tuple[WorkloadSpec, TriggerSpec]:
    return _with_trigger(
        spec,
        lambda t: (options := _rabbitmq(t)) is not None and options.mode == "MessageRate",
        lambda s: TriggerSpec(
            ARRIVALS_TRIGGER,
            "rabbitmq",
            rate,
            options=RabbitMQOptions(queue=_queue_of(s), mode="MessageRate", protocol="http"),
        ),
    )


def _in_flight(spec: WorkloadSpec, target: float) -> tuple[WorkloadSpec, TriggerSpec]:
    return _with_trigger(
        spec,
        lambda t: _is_queue_length(t) and _counts_in_flight(t),
        lambda s: TriggerSpec(
            IN_FLIGHT_TRIGGER,
            "rabbitmq",
            target,
            options=RabbitMQOptions(queue=_queue_of(s), protocol="http"),
        ),
    )


def _with_policy(spec: WorkloadSpec, policy: Policy) -> WorkloadSpec:
    # The behavior block stays: the engine passes an `owns_behavior` policy through by itself.
    return replace(spec, policy=policy)


def _options(model: type[BaseModel], values: Mapping[str, Any], what: str) -> Any:
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PresetError(f"{what}: {field}: {first['msg']}") from exc


# ----------------------------------------------------------------------------------------------
# The presets


def _queue_sla_value(w: _Workload, knob: float | None) -> float:
    if knob is not None:
        return knob
    if isinstance(w.spec.policy, QueueSlaPolicy):
        return w.spec.policy.max_wait_seconds
    return w.sla


def _queue_sla(w: _Workload, max_wait: float) -> WorkloadSpec:
    what = f"queue-sla for {w.spec.name}"
    if isinstance(w.spec.policy, QueueSlaPolicy):
        # Keep the workload's own tuning; its triggers are already there (validated with the file).
        values = w.spec.policy.options.model_dump() | {"max_wait_seconds": max_wait}
        return _with_policy(w.spec, QueueSlaPolicy(_options(QueueSlaOptions, values, what)))
    rate = service_rate_per_replica(w.model)
    spec, backlog = _backlog(w.spec)
    spec, arrivals = _arrivals(spec, rate)
    options = _options(
        QueueSlaOptions,
        {
            "max_wait_seconds": max_wait,
            "backlog_trigger": backlog.name,
            "rate_trigger": arrivals.name,
            "service_rate_per_replica": rate,
        },
        what,
    )
    return _with_policy(spec, QueueSlaPolicy(options))


def _backlog_target(w: _Workload, knob: float | None) -> float:
    return knob if knob is not None else _backlog(w.spec)[1].target


def _target(w: _Workload, target: float) -> WorkloadSpec:
    spec, backlog = _backlog(w.spec)
    if target <= 0:
        raise PresetError(f"target for {spec.name}: targetPerReplica must be > 0, not {target:g}")
    triggers = tuple(replace(t, target=target) if t.name == backlog.name else t for t in spec.triggers)
    # A workload already on `target` keeps its tolerance; only the target per replica moves.
    tolerance = w.spec.policy.tolerance if isinstance(w.spec.policy, TargetPolicy) else 0.1
    options = _options(TargetOptions, {"tolerance": tolerance}, f"target for {spec.name}")
    return _with_policy(replace(spec, triggers=triggers), TargetPolicy(options))


@dataclass(frozen=True, slots=True)
class KedaKnobs:
    """One KEDA ScaledObject (+ its HPA) for every workload of a simulation, as the knobs a KEDA
    user turns; `apply_keda` builds it. The defaults are the expert's deployment for an LLM fed by
    RabbitMQ (../shared/REFERENCE.md, issue 10); `KEDA_DEFAULTS` is KEDA's own defaults.

    Counts are pods (a half-throughput virtual pod is one pod to KEDA and the HPA). Rates are per
    replica of relative throughput 1.0.
    """

    # QueueLength over amqp counts requests waiting; over http (the management API) waiting + in
    # service.
    protocol: Literal["amqp", "http"] = "http"
    # QueueLength `value` per replica; None: over http the workload's concurrency (requests one
    # replica serves at once), over amqp the backlog trigger's own target (KEDA's 20 where the preset
    # adds that trigger).
    value: float | None = None
    # A MessageRate trigger beside it, at `message_rate_share` x the per-replica service rate
    # (concurrency / mean service time over the trace: the same constant queue-sla is given).
    message_rate: bool = True
    message_rate_share: float = 0.85
    polling_interval: float = 10.0
    use_cached_metrics: bool = False
    # advanced.horizontalPodAutoscalerConfig.behavior: scaleUp without stabilization, 100 % and
    # 4 pods per 15 s, selectPolicy Max; scaleDown `scale_down_stabilization` s, 100 % per 15 s.
    # False: no behavior, the HPA's older path (its scale-down window is the controller's 300 s, a
    # cluster-wide flag a KEDA user does not set, so `scale_down_stabilization` does not apply).
    behavior: bool = True
    scale_down_stabilization: int = 300
    # minReplicaCount / maxReplicaCount in pods; None: the workload's minReplicas / maxReplicas.
    min_replicas: int | None = None
    max_replicas: int | None = None

    def label(self) -> str:
        """A short row name: `keda http v8 +rate poll10 down300 min2 max90`."""
        parts = ["keda", self.protocol, "v" + ("=conc" if self.value is None else f"{self.value:g}")]
        if self.message_rate:
            parts.append(f"+rate{self.message_rate_share:g}")
        parts.append(f"poll{self.polling_interval:g}")
        if self.use_cached_metrics:
            parts.append("cached")
        parts.append(f"down{self.scale_down_stabilization}" if self.behavior else "legacy")
        if self.min_replicas is not None:
            parts.append(f"min{self.min_replicas}")
        if self.max_replicas is not None:
            parts.append(f"max{self.max_replicas}")
        return " ".join(parts)


EXPERT_KEDA = KedaKnobs()
# KEDA's defaults: amqp QueueLength alone, a 30-s poll, no behavior (the `keda-hpa` preset).
KEDA_DEFAULTS = KedaKnobs(protocol="amqp", message_rate=False, polling_interval=30.0, behavior=False)

# The axes issue 10 asks the benchmark to sweep; every other knob comes from the base knobs.
KEDA_GRID_AXES: Mapping[str, tuple[Any, ...]] = {
    "protocol": ("amqp", "http"),
    "message_rate": (False, True),
    "polling_interval": (10.0, 30.0),
    "scale_down_stabilization": (60, 300, 600),
}


def keda_grid(base: KedaKnobs = EXPERT_KEDA, **axes: Sequence[Any]) -> list[KedaKnobs]:
    """Every combination of `KEDA_GRID_AXES` over `base`, any axis replaced or added by the caller,
    e.g. `keda_grid(value=(4, 8, 16), max_replicas=(60, 90))`. Raises PresetError for a name that
    is not a knob."""
    known = [f.name for f in fields(KedaKnobs)]
    unknown = sorted(set(axes) - set(known))
    if unknown:
        raise PresetError(f"keda grid: no knob {', '.join(unknown)} (knobs: {', '.join(known)})")
    grid = {**KEDA_GRID_AXES, **{k: tuple(v) for k, v in axes.items()}}
    names = list(grid)
    return [
        replace(base, **dict(zip(names, combo, strict=True))) for combo in product(*(grid[n] for n in names))
    ]


def _expert_behavior(stabilization: int) -> dict[str, Any]:
    every_15s = {"periodSeconds": 15}
    return {
        "horizontalPodAutoscalerConfig": {
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 100, **every_15s},
                        {"type": "Pods", "value": 4, **every_15s},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": stabilization,
                    "policies": [{"type": "Percent", "value": 100, **every_15s}],
                },
            }
        }
    }


def _keda(w: _Workload, knobs: KedaKnobs, what: str) -> WorkloadSpec:
    """The workload on the ScaledObject `knobs` describes (see KedaKnobs)."""
    if knobs.protocol not in ("amqp", "http"):
        raise PresetError(f"{what}: protocol must be amqp or http, not {knobs.protocol!r}")
    if knobs.protocol == "http":
        value = knobs.value if knobs.value is not None else float(w.model.concurrency)
        spec, queue = _in_flight(w.spec, value)
    else:
        spec, queue = _backlog(w.spec)
        value = knobs.value if knobs.value is not None else queue.target
    triggers: list[dict[str, Any]] = [{"name": queue.name, "value": value}]
    if knobs.message_rate:
        rate = knobs.message_rate_share * service_rate_per_replica(w.model)
        spec, arrivals = _arrivals(spec, rate)
        triggers.append({"name": arrivals.name, "value": rate})
    for t in triggers:
        t["useCachedMetrics"] = knobs.use_cached_metrics
    options: dict[str, Any] = {"triggers": triggers, "pollingIntervalSeconds": knobs.polling_interval}
    if knobs.min_replicas is not None:
        options["minReplicaCount"] = knobs.min_replicas
    if knobs.max_replicas is not None:
        options["maxReplicaCount"] = knobs.max_replicas
    if knobs.behavior:
        options["advanced"] = _expert_behavior(knobs.scale_down_stabilization)
    return _with_policy(spec, KedaHpaPolicy(_options(KedaHpaOptions, options, what)))


def _keda_hpa(w: _Workload, target: float) -> WorkloadSpec:
    return _keda(w, replace(KEDA_DEFAULTS, value=target), f"keda-hpa for {w.spec.name}")


def _concurrency(w: _Workload, knob: float | None) -> float:
    return knob if knob is not None else float(w.model.concurrency)


def _keda_expert(w: _Workload, value: float) -> WorkloadSpec:
    return _keda(w, replace(EXPERT_KEDA, value=value), f"keda-expert for {w.spec.name}")


def _knative_value(w: _Workload, knob: float | None) -> float:
    return knob if knob is not None else float(KnativeKpaOptions().target_utilization)


def _knative_kpa(w: _Workload, utilization: float) -> WorkloadSpec:
    what = f"knative-kpa for {w.spec.name}"
    options = _options(
        KnativeKpaOptions,
        {"container_concurrency": w.model.concurrency, "target_utilization": utilization},
        what,
    )
    spec, in_flight = _in_flight(w.spec, options.container_concurrency * options.target_utilization)
    options = options.model_copy(update={"trigger": in_flight.name})
    return _with_policy(spec, KnativeKpaPolicy(options))


def _static_value(w: _Workload, knob: float | None) -> float:
    if knob is not None:
        return knob
    return float(math.ceil(peak_arrival_rate(w.model) / service_rate_per_replica(w.model) - 1e-9))


def _static_peak(w: _Workload, replicas: float) -> WorkloadSpec:
    if replicas != int(replicas):
        raise PresetError(f"static-peak for {w.spec.name}: replicas must be a whole number, not {replicas:g}")
    options = _options(StaticOptions, {"replicas": int(replicas)}, f"static-peak for {w.spec.name}")
    return _with_policy(w.spec, StaticPolicy(options))


def _clairvoyant_value(w: _Workload, knob: float | None) -> float:
    return knob if knob is not None else w.sla


def _clairvoyant(w: _Workload, sla: float) -> WorkloadSpec:
    if sla <= 0:
        raise PresetError(f"clairvoyant for {w.spec.name}: slaSeconds must be > 0, not {sla:g}")
    startup = w.spec.pools[0].startup_seconds if w.spec.pools else 0.0
    return _with_policy(w.spec, ClairvoyantPolicy.for_workload(w.model, sla, startup))


PRESETS: Mapping[str, Preset] = {
    "clairvoyant": Preset("slaSeconds", _clairvoyant_value, _clairvoyant),
    "keda-expert": Preset("targetPerReplica", _concurrency, _keda_expert),
    "keda-hpa": Preset("targetPerReplica", _backlog_target, _keda_hpa),
    "knative-kpa": Preset("targetUtilization", _knative_value, _knative_kpa),
    "queue-sla": Preset("maxWaitSeconds", _queue_sla_value, _queue_sla),
    "static-peak": Preset("replicas", _static_value, _static_peak),
    "target": Preset("targetPerReplica", _backlog_target, _target),
}


# ----------------------------------------------------------------------------------------------
# The API


def _preset(name: str) -> Preset:
    preset = PRESETS.get(name)
    if preset is None:
        raise PresetError(f"unknown policy '{name}' (known: {', '.join(PRESETS)})")
    return preset


def _workloads(sim: Simulation) -> list[_Workload]:
    models = {m.name: m for m in sim.models}
    return [
        _Workload(spec, models[spec.name], sim.sla_seconds.get(spec.name, DEFAULT_SLA_SECONDS))
        for spec in sim.workloads
    ]


def knob_values(sim: Simulation, name: str, knob: float | None) -> dict[str, float]:
    """The knob each workload gets under preset `name`: `knob` itself, or the preset's default."""
    preset = _preset(name)
    return {w.spec.name: preset.value(w, knob) for w in _workloads(sim)}


def apply_policy(sim: Simulation, name: str, knob: float | None = None) -> Simulation:
    """`sim` with every workload's policy replaced by preset `name` (see the module docstring).
    Raises PresetError for an unknown name or a knob the policy's options refuse."""
    preset = _preset(name)
    if knob is not None and not math.isfinite(knob):
        raise PresetError(f"{name}: {preset.knob} must be a finite number, not {knob}")
    workloads = tuple(preset.build(w, preset.value(w, knob)) for w in _workloads(sim))
    return replace(sim, workloads=workloads)


def apply_keda(sim: Simulation, knobs: KedaKnobs) -> Simulation:
    """`sim` with every workload on the KEDA ScaledObject `knobs` describes (the benchmark's grid).
    Raises PresetError for knobs KEDA's options refuse, naming the workload and the option."""
    workloads = tuple(_keda(w, knobs, f"{knobs.label()} for {w.spec.name}") for w in _workloads(sim))
    return replace(sim, workloads=workloads)


def cheapest_first(sim: Simulation) -> Simulation:
    """`sim` with every workload's pools listed cheapest per unit of throughput first (ties keep the
    file's order): the cost-first operating point of the same policy. Placement fills pools in the
    order listed and scales in from the last, so this is what an operator gets by writing the pools
    in that order: a standing fleet on the cheap pool, the costliest given back first. Nothing else
    changes; replicas already running stay where they are (placement moves none)."""
    workloads = tuple(
        replace(w, pools=tuple(sorted(w.pools, key=lambda p: p.cost_per_unit_hour))) for w in sim.workloads
    )
    return replace(sim, workloads=workloads)


def rebalanced(sim: Simulation) -> Simulation:
    """`sim` with every workload's rebalance on (`spec.placement.rebalance` in a policy file):
    running replicas move to an earlier pool in the order when it has room, a step at a time."""
    return replace(sim, workloads=tuple(replace(w, rebalance=True) for w in sim.workloads))


def describe(sim: Simulation, name: str, knob: float | None = None) -> str:
    """`keda-hpa (targetPerReplica 8)`, or one value per workload where they differ."""
    preset = _preset(name)
    values = knob_values(sim, name, knob)
    distinct = set(values.values())
    if len(distinct) == 1:
        shown = f"{distinct.pop():g}"
    else:
        shown = ", ".join(f"{w} {v:g}" for w, v in values.items())
    source = "" if knob is not None else ", default"
    return f"{name} ({preset.knob} {shown}{source})"
