"""`keda-hpa`: a KEDA 2.2x ScaledObject driving a Kubernetes HPA, as KEDA and the HPA behave.

The baseline of the simulator's comparison (`sim.presets`), written from ../shared/REFERENCE.md. It
emulates two controllers that run side by side, each on its own period, both counting PODS (a
half-throughput virtual pod is one pod to them, `_pods`):

- KEDA polls its triggers every `pollingIntervalSeconds` (30 s) and does 0 <-> 1 itself: at a poll it
  scales a Deployment at zero to max(minReplicaCount, 1) when some trigger is above its activation
  value, one below minReplicaCount up to it, and one with pods to zero when no trigger is active, none
  failed, and the last active poll was more than `cooldownSeconds` (300 s) ago (strictly, as KEDA's
  `lastActiveTime + cooldownPeriod < now`; a workload never seen active goes at the first poll, as
  KEDA ignores the cooldown without a `lastActiveTime`). Zero only with minReplicaCount 0.
- The HPA syncs every `syncPeriodSeconds` (15 s) while the Deployment has pods, one external metric
  per trigger of the ScaledObject (`triggers`). Each metric reads the source at the sync (KEDA's
  default `useCachedMetrics: false`: the HPA asks KEDA's metrics server, which queries the source
  then); a trigger with `useCachedMetrics: true` gives the value of KEDA's last poll instead. Per
  metric: AverageValue, desired = ceil(usage / value); Value, ceil(usage / value x ready pods); none
  when usage / target is within `tolerance` of 1. The HPA takes the largest; when some metric is
  invalid (a failed reading) and the largest would scale down, or all are invalid, it does nothing
  (and records nothing).
- Then one of the HPA's two paths. With `advanced.horizontalPodAutoscalerConfig.behavior` (KEDA's
  YAML, pasted as is): stabilization windows for up and down and rate policies over their periods,
  selectPolicy, the autoscaling/v2 defaults for whatever is left out, exactly the semantics of
  `engine.behavior` (its `stabilize`, `scale_up_limit`, `scale_down_limit`, applied to pods). Without
  it, the older path KEDA's HPA takes by default: down only to the highest recommendation of the last
  `downscaleStabilizationSeconds` (300 s), up per sync to at most max(2 x current, 4)
  (`engine.behavior.legacy_hpa_scale_up_limit`). Both end within [max(minReplicaCount, 1),
  maxReplicaCount], in pods; by default the workload's minReplicas and maxReplicas read as pods.

Triggers: `triggers` lists the ScaledObject's triggers by name (a string, or an object that may
override KEDA's `value`, `activationValue`, `metricType` and set `useCachedMetrics`); without it the
workload's first trigger, or the one `trigger` names, with `targetPerReplica` and `activation` as
its overrides (the older, one-trigger form). Not all of the workload's triggers by default: they
serve the workload's own policy too (an arrival rate whose target is a service rate, a TTFT query
for dashboards), and an old file must not turn into a several-metric HPA by itself.

Between polls and syncs the answer stays what the last one decided, so the engine's behavior stage
is told to pass it through (`owns_behavior`). When poll and sync fall on the same second, KEDA acts
first and the HPA sees the Deployment as it was (at zero it does nothing): a 0 -> 1 is followed by the
first 1 -> N one sync later, as in a cluster. The HPA's "current" is the pods the engine asks the
pools for now. Callers: the engine through `policies.registry`; `sim.presets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaler.engine.behavior import (
    legacy_hpa_scale_up_limit,
    scale_down_limit,
    scale_up_limit,
    stabilize,
)
from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.statecodec import (
    StateFormatError,
    as_float,
    as_int,
    as_object,
    as_optional_float,
    as_pairs,
    as_str,
)
from autoscaler.engine.types import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    MetricType,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.policies.baselines._pods import pods_now, ready_pods, units_for

# usage / target such as 3.0000000000000004 (float noise) must mean 3 replicas, not 4.
_CEIL_SLACK = 1e-9
# The most pods a KEDA count or an HPA rate policy may name here: bounds of ours, far past any fleet.
_MAX_PODS = 100_000


class _Strict(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class KedaTriggerOptions(_Strict):
    """One trigger of the ScaledObject: one external metric of the HPA."""

    name: str = Field(..., min_length=1, description="a trigger of the workload")
    value: float | None = Field(
        None, ge=1e-6, le=1e12, description="KEDA `value`, 1e-6 to 1e12; default: the trigger's target"
    )
    activation_value: float | None = Field(
        None,
        ge=0,
        le=1e12,
        alias="activationValue",
        description="KEDA `activationValue`, 0 to 1e12; default: the trigger's activation",
    )
    metric_type: Literal["AverageValue", "Value"] | None = Field(
        None, alias="metricType", description="default: the trigger's"
    )
    use_cached_metrics: bool = Field(
        False,
        alias="useCachedMetrics",
        description="the HPA sees KEDA's last poll instead of a fresh read at each sync",
    )


class HpaRatePolicyOptions(_Strict):
    type: Literal["Pods", "Percent"]
    value: int = Field(..., ge=1, le=_MAX_PODS)
    # Kubernetes validates 0 < periodSeconds <= 1800.
    period_seconds: int = Field(..., ge=1, le=1800, alias="periodSeconds")


class HpaScalingRulesOptions(_Strict):
    """One direction of `spec.behavior`; what is left out takes the autoscaling/v2 default."""

    stabilization_window_seconds: int | None = Field(None, ge=0, le=3600, alias="stabilizationWindowSeconds")
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(None, alias="selectPolicy")
    policies: list[HpaRatePolicyOptions] | None = Field(None, min_length=1)


class HpaBehaviorOptions(_Strict):
    scale_up: HpaScalingRulesOptions | None = Field(None, alias="scaleUp")
    scale_down: HpaScalingRulesOptions | None = Field(None, alias="scaleDown")


class HpaConfigOptions(_Strict):
    behavior: HpaBehaviorOptions | None = None


class AdvancedOptions(_Strict):
    horizontal_pod_autoscaler_config: HpaConfigOptions | None = Field(
        None, alias="horizontalPodAutoscalerConfig"
    )


class KedaHpaOptions(_Strict):
    trigger: str | None = Field(
        None, description="the one trigger KEDA reads (older form of `triggers`); default: the first"
    )
    triggers: list[KedaTriggerOptions] | None = Field(
        None,
        min_length=1,
        description="the ScaledObject's triggers, names or objects; default: `trigger`, else the first",
    )
    target_per_replica: float | None = Field(
        None,
        ge=1e-6,
        le=1e12,
        alias="targetPerReplica",
        description="KEDA `value` of `trigger`, 1e-6 to 1e12; default: the trigger's target",
    )
    activation: float | None = Field(
        None,
        ge=0,
        le=1e12,
        description="KEDA `activationValue` of `trigger`, 0 to 1e12; default: the trigger's activation",
    )
    # Periods of at least 0.1 s: the clocks step by whole periods, and a tinier one overflows that step.
    polling_interval_seconds: float = Field(30.0, ge=0.1, le=86_400, alias="pollingIntervalSeconds")
    sync_period_seconds: float = Field(15.0, ge=0.1, le=86_400, alias="syncPeriodSeconds")
    tolerance: float = Field(0.1, ge=0, lt=1, description="HPA tolerance around the target")
    cooldown_seconds: float = Field(
        300.0, ge=0, le=604_800, alias="cooldownSeconds", description="KEDA cooldownPeriod, at most a week"
    )
    downscale_stabilization_seconds: float = Field(
        300.0,
        ge=0,
        le=604_800,
        alias="downscaleStabilizationSeconds",
        description="the HPA controller's window when there is no behavior; at most a week",
    )
    min_replica_count: int | None = Field(
        None,
        ge=0,
        le=_MAX_PODS,
        alias="minReplicaCount",
        description="KEDA minReplicaCount, in pods; default: the workload's minReplicas",
    )
    max_replica_count: int | None = Field(
        None,
        ge=1,
        le=_MAX_PODS,
        alias="maxReplicaCount",
        description="KEDA maxReplicaCount, in pods; default: the workload's maxReplicas",
    )
    advanced: AdvancedOptions | None = Field(
        None, description="KEDA's `advanced`: horizontalPodAutoscalerConfig.behavior is passed to the HPA"
    )

    @field_validator("triggers", mode="before")
    @classmethod
    def _names_are_triggers(cls, value: object) -> object:
        # `triggers: [backlog, arrivals]` is short for `[{name: backlog}, {name: arrivals}]`.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_form(self) -> KedaHpaOptions:
        if self.triggers is not None:
            older = [
                alias
                for alias, given in (
                    ("trigger", self.trigger),
                    ("targetPerReplica", self.target_per_replica),
                    ("activation", self.activation),
                )
                if given is not None
            ]
            if older:
                raise ValueError(
                    f"{', '.join(older)} and triggers both given: set value and activationValue on"
                    " each entry of triggers instead"
                )
            names = [t.name for t in self.triggers]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"triggers names {', '.join(twice)} more than once")
        low, high = self.min_replica_count, self.max_replica_count
        if low is not None and high is not None and low > high:
            raise ValueError(f"minReplicaCount {low} is above maxReplicaCount {high}")
        return self


@dataclass(frozen=True, slots=True)
class _Metric:
    """One trigger as the ScaledObject sets it; None: the trigger's own value."""

    trigger: str | None  # None: the workload's first trigger
    value: float | None
    activation: float | None
    metric_type: MetricType | None
    cached: bool


@dataclass(frozen=True, slots=True)
class _Behavior:
    up: ScalingRules
    down: ScalingRules


@dataclass(frozen=True, slots=True)
class KedaHpaMemory:
    """What KEDA and the HPA remember between calls (kept in `Recommendation.memory`)."""

    next_poll: float
    next_sync: float
    # Per metric, in the order of the options: the value KEDA read at its last poll (what a cached
    # metric gives the HPA); None before the first poll or when that read failed.
    polled: tuple[float | None, ...]
    # KEDA's `lastActiveTime`: the last poll that found some trigger active.
    last_active: float | None
    # Pods KEDA or the HPA last set the Deployment to; the answer between polls and syncs.
    replicas: int
    # (sync time, raw recommendation in pods) for the stabilization windows, oldest first.
    recommendations: tuple[tuple[float, int], ...]
    # (sync time, change in pods) of the HPA's own scale events, for the behavior's rate policies.
    events: tuple[tuple[float, int], ...]
    reason: str


def _next(due: float, period: float, now: float) -> float:
    """The first time after `now` on the grid due + k * period (a late call does not shift the phase)."""
    return due + period * (math.floor((now - due) / period) + 1)


def _rules(given: HpaScalingRulesOptions | None, default: ScalingRules) -> ScalingRules:
    """autoscaling/v2 defaulting, field by field (GenerateHPAScaleUpRules / ...ScaleDownRules)."""
    if given is None:
        return default
    policies = default.policies
    if given.policies is not None:
        policies = tuple(
            RatePolicy(RateKind(p.type), p.value, float(p.period_seconds)) for p in given.policies
        )
    window = given.stabilization_window_seconds
    return ScalingRules(
        default.stabilization_seconds if window is None else float(window),
        policies,
        SelectPolicy(given.select_policy) if given.select_policy is not None else default.select,
    )


def _ceil(x: float) -> int:
    return max(math.ceil(x - _CEIL_SLACK), 0)


class KedaHpaPolicy:
    name: ClassVar[str] = "keda-hpa"
    Options: ClassVar[type[BaseModel]] = KedaHpaOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(self, options: KedaHpaOptions) -> None:
        self.options = o = options
        if o.triggers is not None:
            self.metrics = tuple(
                _Metric(
                    t.name,
                    t.value,
                    t.activation_value,
                    None if t.metric_type is None else MetricType(t.metric_type),
                    t.use_cached_metrics,
                )
                for t in o.triggers
            )
        else:
            self.metrics = (_Metric(o.trigger, o.target_per_replica, o.activation, None, False),)
        hpa = o.advanced.horizontal_pod_autoscaler_config if o.advanced else None
        given = hpa.behavior if hpa else None
        self.behavior = (
            None
            if given is None
            else _Behavior(
                _rules(given.scale_up, DEFAULT_SCALE_UP), _rules(given.scale_down, DEFAULT_SCALE_DOWN)
            )
        )

    # ------------------------------------------------------------------------------------------
    # Which triggers

    def _trigger(self, workload: WorkloadSpec, metric: _Metric) -> TriggerSpec | None:
        if metric.trigger is None:
            return workload.triggers[0] if workload.triggers else None
        for t in workload.triggers:
            if t.name == metric.trigger:
                return t
        return None

    def check(self, workload: WorkloadSpec) -> list[tuple[str, str]]:
        """Cross-checks against the workload, for `autoscaler validate`."""
        field = "trigger" if self.options.triggers is None else "triggers"
        known = ", ".join(t.name for t in workload.triggers) or "none"
        problems = []
        for m in self.metrics:
            if self._trigger(workload, m) is not None:
                continue
            if m.trigger is None:
                problems.append((field, "the workload has no trigger to read"))
            else:
                problems.append((field, f"no trigger named '{m.trigger}' (triggers: {known})"))
        return problems

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        found = (self._trigger(workload, m) for m in self.metrics)
        return frozenset(t.name for t in found if t is not None)

    # ------------------------------------------------------------------------------------------
    # The two controllers

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        now = ctx.now
        memory = ctx.memory if isinstance(ctx.memory, KedaHpaMemory) else None
        if memory is not None and len(memory.polled) != len(self.metrics):
            memory = None  # another ScaledObject's memory (the options changed): start afresh
        if memory is not None and now < memory.next_poll and now < memory.next_sync:
            return Recommendation(units_for(ctx, memory.replicas), memory.reason, memory)

        wl = ctx.workload
        triggers = tuple(self._trigger(wl, m) for m in self.metrics)
        if all(t is None for t in triggers):
            return Recommendation(None, "keda-hpa: the workload has no such trigger", memory)
        current = pods_now(ctx)
        low = o.min_replica_count if o.min_replica_count is not None else wl.min_replicas
        high = o.max_replica_count if o.max_replica_count is not None else wl.max_replicas
        fresh = tuple(None if t is None else ctx.values.get(t.name) for t in triggers)
        if memory is None:
            # Both controllers start with the first call, and find the Deployment as it is.
            memory = KedaHpaMemory(now, now, (None,) * len(self.metrics), None, current, (), (), "")
        replicas = memory.replicas
        polled = memory.polled
        last_active = memory.last_active
        next_poll = memory.next_poll
        reason = memory.reason
        keda_scaled = False

        if now >= next_poll:
            next_poll = _next(next_poll, o.polling_interval_seconds, now)
            polled = fresh
            active_names = []
            for m, t, v in zip(self.metrics, triggers, fresh, strict=True):
                if t is not None and v is not None:
                    activation = m.activation if m.activation is not None else t.activation
                    if v > activation:
                        active_names.append(f"{t.name}={v:g} > activation {activation:g}")
            failed = [
                self._label(m, t) for m, t, v in zip(self.metrics, triggers, fresh, strict=True) if v is None
            ]
            if active_names:
                last_active = now
            floor = max(low, 1) if active_names else low
            if current < floor and high > 0:
                replicas = min(floor, high)
                keda_scaled = True
                why = "; ".join(active_names) if current == 0 and active_names else f"minReplicaCount {low}"
                reason = f"keda-hpa: KEDA poll: {why}: {current} -> {replicas} pods"
            elif (
                not active_names
                and not failed
                and current > 0
                and low == 0
                and (last_active is None or last_active + o.cooldown_seconds < now)
            ):
                replicas = 0
                keda_scaled = True
                idle = "never active" if last_active is None else f"inactive since t={last_active:g}s"
                reason = (
                    f"keda-hpa: KEDA poll: no trigger above its activation, {idle}"
                    f" (cooldown {o.cooldown_seconds:g}s): {current} -> 0 pods"
                )

        next_sync = memory.next_sync
        recommendations = memory.recommendations
        events = memory.events
        if now >= next_sync:
            next_sync = _next(next_sync, o.sync_period_seconds, now)
            # The HPA leaves a Deployment at zero alone, and sees KEDA's change of this instant at its
            # next sync.
            if current > 0 and not keda_scaled:
                usages = tuple(
                    p if m.cached else f for m, p, f in zip(self.metrics, polled, fresh, strict=True)
                )
                synced = self._hpa_sync(ctx, triggers, usages, current, low, high, recommendations, events)
                if synced is not None:
                    replicas, recommendations, events, reason = synced

        memory = KedaHpaMemory(
            next_poll, next_sync, polled, last_active, replicas, recommendations, events, reason
        )
        return Recommendation(units_for(ctx, replicas), reason, memory)

    def _label(self, metric: _Metric, trigger: TriggerSpec | None) -> str:
        return trigger.name if trigger is not None else str(metric.trigger)

    def _proposal(
        self, metric: _Metric, trigger: TriggerSpec, usage: float, current: int, ready: int
    ) -> tuple[int, str]:
        """One metric's desired pods, as the HPA's replica calculator gives it, and why."""
        target = metric.value if metric.value is not None else trigger.target
        kind = metric.metric_type if metric.metric_type is not None else trigger.metric_type
        tol = self.options.tolerance
        if kind is MetricType.VALUE:
            ratio = usage / target
            if abs(ratio - 1.0) <= tol:
                return current, f"{trigger.name}={usage:g} within tolerance of Value {target:g}: {current}"
            want = _ceil(ratio * ready)
            return want, f"{trigger.name}={usage:g} / Value {target:g} x {ready} ready = {want}"
        ratio = usage / (target * current)
        if abs(ratio - 1.0) <= tol:
            return (
                current,
                f"{trigger.name}={usage:g} within tolerance {tol:g} (ratio {ratio:.2f}): {current}",
            )
        want = _ceil(usage / target)
        return want, f"{trigger.name}: ceil({usage:g}/{target:g}) = {want}"

    def _hpa_sync(
        self,
        ctx: PolicyContext,
        triggers: tuple[TriggerSpec | None, ...],
        usages: tuple[float | None, ...],
        current: int,
        low: int,
        high: int,
        recommendations: tuple[tuple[float, int], ...],
        events: tuple[tuple[float, int], ...],
    ) -> tuple[int, tuple[tuple[float, int], ...], tuple[tuple[float, int], ...], str] | None:
        """One HPA sync: (pods, recommendations, events, reason), or None when it does nothing."""
        now = ctx.now
        hpa_min = max(low, 1)  # an HPA's minReplicas is at least 1; KEDA does 1 -> 0
        if current > high:
            return (
                high,
                recommendations,
                events,
                f"keda-hpa: HPA sync: above maxReplicaCount: {current} -> {high}",
            )
        if current < hpa_min:
            return (
                hpa_min,
                recommendations,
                events,
                (f"keda-hpa: HPA sync: below minReplicaCount: {current} -> {hpa_min}"),
            )
        ready = ready_pods(ctx)
        proposals: list[tuple[int, str]] = []
        invalid: list[str] = []
        for m, t, usage in zip(self.metrics, triggers, usages, strict=True):
            if t is None or usage is None:
                invalid.append(self._label(m, t))
            else:
                proposals.append(self._proposal(m, t, usage, current, ready))
        if not proposals:
            return None
        raw, why = max(proposals, key=lambda p: p[0])
        if invalid and raw < current:
            # The HPA's rule: with a metric invalid it may scale up on the others, never down.
            return None
        source = "fresh" if not any(m.cached for m in self.metrics) else "as KEDA serves them"
        head = f"keda-hpa: HPA sync ({source}): {why}" + (
            f" (largest of {len(proposals)} metrics)" if len(proposals) > 1 else ""
        )
        if invalid:
            head += f"; {', '.join(invalid)} invalid"
        if not recommendations:
            # The HPA's recordInitialRecommendation: the pods found count as a recommendation, so a
            # fresh controller does not scale down at its first sync.
            recommendations = ((now, current),)
        if self.behavior is None:
            pods, recommendations, reason = self._legacy(
                raw, head, current, hpa_min, high, recommendations, now
            )
            return pods, recommendations, events, reason
        return self._with_behavior(raw, head, current, hpa_min, high, recommendations, events, now)

    def _legacy(
        self,
        raw: int,
        head: str,
        current: int,
        low: int,
        high: int,
        recommendations: tuple[tuple[float, int], ...],
        now: float,
    ) -> tuple[int, tuple[tuple[float, int], ...], str]:
        """The path of an HPA without `spec.behavior`: (pods, recommendations, reason)."""
        window = self.options.downscale_stabilization_seconds
        # No scale-up window: the highest raw recommendation of the scale-down window, this one
        # included, is what this path scales to (stabilizeRecommendation).
        kept, _, stabilized = stabilize(recommendations, now, raw, 0.0, window)
        bound = f", highest of the last {window:g}s: {stabilized}" if stabilized > raw else ""
        up_limit = legacy_hpa_scale_up_limit(current)
        ceiling = min(high, up_limit)
        desired = stabilized
        if desired < low:
            desired = low
            bound += f", minReplicaCount {low}"
        elif desired > ceiling:
            desired = ceiling
            bound += (
                f", scale-up limited to {ceiling} (max(2 x {current}, 4))"
                if up_limit < high
                else f", maxReplicaCount {ceiling}"
            )
        # The window holds raw recommendations, before the caps, as the HPA's does: after a capped
        # scale-up it may still ask for more once the load has gone.
        return desired, kept, f"{head}{bound}: {current} -> {desired} pods"

    def _with_behavior(
        self,
        raw: int,
        head: str,
        current: int,
        low: int,
        high: int,
        recommendations: tuple[tuple[float, int], ...],
        events: tuple[tuple[float, int], ...],
        now: float,
    ) -> tuple[int, tuple[tuple[float, int], ...], tuple[tuple[float, int], ...], str]:
        """The `spec.behavior` path (normalizeDesiredReplicasWithBehaviors), with the engine's rules."""
        assert self.behavior is not None
        up, down = self.behavior.up, self.behavior.down
        kept, up_rec, down_rec = stabilize(
            recommendations, now, raw, up.stabilization_seconds, down.stabilization_seconds
        )
        desired = min(max(current, up_rec), down_rec)
        steps = []
        if desired > raw:
            steps.append(f"scale-down window {down.stabilization_seconds:g}s holds {desired}")
        elif desired < raw:
            steps.append(f"scale-up window {up.stabilization_seconds:g}s holds {desired}")
        if desired > current:
            limit, why = scale_up_limit(up, events, current, now)
            if desired > min(high, limit):
                desired = min(high, limit)
                steps.append(f"scale-up {why}" if limit < high else f"maxReplicaCount {high}")
        elif desired < current:
            limit, why = scale_down_limit(down, events, current, now)
            if desired < max(low, limit):
                desired = max(low, limit)
                steps.append(f"scale-down {why}" if limit > low else f"minReplicaCount {low}")
        if desired != current:
            longest = max((p.period_seconds for p in (*up.policies, *down.policies)), default=0.0)
            events = (*(e for e in events if e[0] > now - longest), (now, desired - current))
        bound = "".join(f", {s}" for s in steps)
        return desired, kept, events, f"{head}{bound}: {current} -> {desired} pods"

    # ------------------------------------------------------------------------------------------
    # The memory codec (see `engine.policy`), so that a new leader keeps KEDA's and the HPA's clocks.

    def dump_memory(self, memory: object) -> object:
        if not isinstance(memory, KedaHpaMemory):
            return None
        m = memory
        return {
            "nextPoll": m.next_poll,
            "nextSync": m.next_sync,
            "polled": list(m.polled),
            "lastActive": m.last_active,
            "replicas": m.replicas,
            "recommendations": [list(r) for r in m.recommendations],
            "events": [list(e) for e in m.events],
            "reason": m.reason,
        }

    def load_memory(self, data: object) -> object:
        if data is None:
            return None
        d = as_object(data)
        polled = d["polled"]
        if not isinstance(polled, list):
            raise StateFormatError(f"{polled!r} is not a list")
        return KedaHpaMemory(
            as_float(d["nextPoll"]),
            as_float(d["nextSync"]),
            tuple(as_optional_float(v) for v in polled),
            as_optional_float(d["lastActive"]),
            as_int(d["replicas"]),
            as_pairs(d["recommendations"], as_int),
            as_pairs(d["events"], as_int),
            as_str(d["reason"]),
        )
