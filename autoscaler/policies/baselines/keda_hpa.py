"""`keda-hpa`: KEDA's RabbitMQ QueueLength trigger driving a Kubernetes HPA, both with their defaults.

The baseline of the simulator's comparison (`sim.presets`), written from ../shared/REFERENCE.md. It
emulates two controllers that run side by side, each on its own period:

- KEDA polls the trigger every `pollingIntervalSeconds` (30 s) and keeps the value it read: that is
  the metric the HPA sees until the next poll. KEDA itself does 0 <-> 1: at a poll it scales a
  Deployment at zero to one when the value is above `activation`, and one with replicas to zero when
  the trigger was last active more than `cooldownSeconds` (300 s) ago (strictly more, as KEDA's
  `lastActiveTime + cooldownPeriod < now`; a workload never seen active goes at the first poll, as
  KEDA ignores the cooldown without a `lastActiveTime`). Only with minReplicaCount 0.
- The HPA syncs every `syncPeriodSeconds` (15 s) while the Deployment has replicas: AverageValue,
  desired = ceil(usage / target) unless usage / (target * current) is within `tolerance` of 1. KEDA
  creates the HPA without `spec.behavior`, so the HPA takes its older path: scale-down only to the
  highest recommendation of the last `downscaleStabilizationSeconds` (300 s), scale-up per sync to at
  most max(2 x current, 4) (`engine.behavior.legacy_hpa_scale_up_limit`), then [max(min, 1), max].

Between polls and syncs the answer stays what the last one decided, so the engine's behavior stage
is told to pass it through (`owns_behavior`). When poll and sync fall on the same second, KEDA acts
first and the HPA sees the Deployment as it was (at zero it does nothing): a 0 -> 1 is followed by the
first 1 -> N one sync later, as in a cluster. `current` is `ctx.current_units` rounded up: the HPA
reads the Deployment's spec replicas, which is what the engine last granted. A missing reading gives
no recommendation (the engine holds) and leaves the clocks as they are, so the overdue poll or sync
happens at the first call with data. Callers: the engine through `policies.registry`; `sim.presets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.behavior import legacy_hpa_scale_up_limit
from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.statecodec import as_float, as_int, as_object, as_optional_float, as_pairs, as_str
from autoscaler.engine.types import WorkloadSpec
from autoscaler.policies.baselines._trigger import read_trigger, trigger_problems, trigger_read

# usage / target such as 3.0000000000000004 (float noise) must mean 3 replicas, not 4.
_CEIL_SLACK = 1e-9


class KedaHpaOptions(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    trigger: str | None = Field(None, description="the queue-length trigger KEDA reads; default: the first")
    target_per_replica: float | None = Field(
        None,
        ge=1e-6,
        le=1e12,
        alias="targetPerReplica",
        description="KEDA `value`, 1e-6 to 1e12; default: the trigger's target",
    )
    activation: float | None = Field(
        None,
        ge=0,
        le=1e12,
        description="KEDA `activationValue`, 0 to 1e12; default: the trigger's activation",
    )
    # Periods of at least 0.1 s: the clocks step by whole periods, and a tinier one overflows that step.
    polling_interval_seconds: float = Field(30.0, ge=0.1, le=86_400, alias="pollingIntervalSeconds")
    sync_period_seconds: float = Field(15.0, ge=0.1, le=86_400, alias="syncPeriodSeconds")
    tolerance: float = Field(0.1, ge=0, lt=1, description="HPA tolerance around the target")
    cooldown_seconds: float = Field(
        300.0, ge=0, le=604_800, alias="cooldownSeconds", description="KEDA cooldownPeriod, at most a week"
    )
    downscale_stabilization_seconds: float = Field(
        300.0, ge=0, le=604_800, alias="downscaleStabilizationSeconds", description="at most a week"
    )


@dataclass(frozen=True, slots=True)
class KedaHpaMemory:
    """What KEDA and the HPA remember between calls (kept in `Recommendation.memory`)."""

    next_poll: float
    next_sync: float
    # The value KEDA read at its last poll: the metric the HPA sees. None before the first poll.
    metric: float | None
    # KEDA's `lastActiveTime`: the last poll that found the trigger active.
    last_active: float | None
    # What KEDA or the HPA last set the Deployment to; the answer between polls and syncs.
    replicas: int
    # (sync time, raw recommendation) within the scale-down stabilization window, oldest first.
    recommendations: tuple[tuple[float, int], ...]
    reason: str


def _next(due: float, period: float, now: float) -> float:
    """The first time after `now` on the grid due + k * period (a late call does not shift the phase)."""
    return due + period * (math.floor((now - due) / period) + 1)


class KedaHpaPolicy:
    name: ClassVar[str] = "keda-hpa"
    Options: ClassVar[type[BaseModel]] = KedaHpaOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(self, options: KedaHpaOptions) -> None:
        self.options = options

    def check(self, workload: WorkloadSpec) -> list[tuple[str, str]]:
        """Cross-checks against the workload, for `autoscaler validate`."""
        return trigger_problems(workload, self.options.trigger)

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        return trigger_read(workload, self.options.trigger)

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        memory = ctx.memory if isinstance(ctx.memory, KedaHpaMemory) else None
        read = read_trigger(ctx, o.trigger, "keda-hpa", memory)
        if isinstance(read, Recommendation):
            return read
        trigger, value = read
        now = ctx.now
        if memory is not None and now < memory.next_poll and now < memory.next_sync:
            return Recommendation(memory.replicas, memory.reason, memory)

        wl = ctx.workload
        current = max(math.ceil(ctx.current_units - _CEIL_SLACK), 0)
        if memory is None:
            # Both controllers start with the first call, and find the Deployment as it is.
            memory = KedaHpaMemory(now, now, None, None, current, (), "")
        replicas = memory.replicas
        metric = memory.metric
        last_active = memory.last_active
        next_poll = memory.next_poll
        recommendations = memory.recommendations
        reason = memory.reason
        keda_scaled = False

        if now >= next_poll:
            next_poll = _next(next_poll, o.polling_interval_seconds, now)
            metric = value
            activation = o.activation if o.activation is not None else trigger.activation
            active = value > activation
            if active:
                last_active = now
            if active and current == 0 and wl.max_replicas > 0:
                replicas = max(wl.min_replicas, 1)
                keda_scaled = True
                reason = (
                    f"keda-hpa: KEDA poll: {trigger.name}={value:g} > activation {activation:g}:"
                    f" 0 -> {replicas}"
                )
            elif (
                not active
                and current > 0
                and wl.min_replicas == 0
                and (last_active is None or last_active + o.cooldown_seconds < now)
            ):
                replicas = 0
                keda_scaled = True
                idle = "never active" if last_active is None else f"inactive since t={last_active:g}s"
                reason = (
                    f"keda-hpa: KEDA poll: {trigger.name}={value:g} <= activation {activation:g},"
                    f" {idle} (cooldown {o.cooldown_seconds:g}s): {current} -> 0"
                )

        next_sync = memory.next_sync
        if now >= next_sync:
            next_sync = _next(next_sync, o.sync_period_seconds, now)
            # The HPA leaves a Deployment at zero alone, and sees KEDA's change of this instant at its
            # next sync.
            if current > 0 and not keda_scaled and metric is not None:
                replicas, recommendations, reason = self._hpa_sync(
                    ctx, trigger.name, trigger.target, metric, current, recommendations, now
                )

        memory = KedaHpaMemory(next_poll, next_sync, metric, last_active, replicas, recommendations, reason)
        return Recommendation(replicas, reason, memory)

    # The memory codec (see `engine.policy`), so that a new leader keeps KEDA's and the HPA's clocks.

    def dump_memory(self, memory: object) -> object:
        if not isinstance(memory, KedaHpaMemory):
            return None
        m = memory
        return {
            "nextPoll": m.next_poll,
            "nextSync": m.next_sync,
            "metric": m.metric,
            "lastActive": m.last_active,
            "replicas": m.replicas,
            "recommendations": [list(r) for r in m.recommendations],
            "reason": m.reason,
        }

    def load_memory(self, data: object) -> object:
        if data is None:
            return None
        d = as_object(data)
        return KedaHpaMemory(
            as_float(d["nextPoll"]),
            as_float(d["nextSync"]),
            as_optional_float(d["metric"]),
            as_optional_float(d["lastActive"]),
            as_int(d["replicas"]),
            as_pairs(d["recommendations"], as_int),
            as_str(d["reason"]),
        )

    def _hpa_sync(
        self,
        ctx: PolicyContext,
        trigger_name: str,
        trigger_target: float,
        usage: float,
        current: int,
        recommendations: tuple[tuple[float, int], ...],
        now: float,
    ) -> tuple[int, tuple[tuple[float, int], ...], str]:
        """One HPA sync on its pre-`behavior` path: (replicas, recommendations, reason)."""
        o = self.options
        wl = ctx.workload
        target = o.target_per_replica if o.target_per_replica is not None else trigger_target
        ratio = usage / (target * current)
        if abs(ratio - 1.0) <= o.tolerance:
            raw = current
            why = f"within tolerance {o.tolerance:g} (ratio {ratio:.2f}): {current}"
        else:
            raw = max(math.ceil(usage / target - _CEIL_SLACK), 0)
            why = f"ceil({usage:g}/{target:g}) = {raw}"

        cut = now - o.downscale_stabilization_seconds
        if not recommendations:
            # The HPA's recordInitialRecommendation: the replicas found count as a recommendation,
            # so a fresh controller does not scale down at its first sync.
            recommendations = ((now, current),)
        kept = [entry for entry in recommendations if entry[0] > cut]
        stabilized = raw
        for _, value in kept:
            stabilized = max(stabilized, value)
        kept.append((now, raw))

        low = max(wl.min_replicas, 1)
        up_limit = legacy_hpa_scale_up_limit(current)
        high = min(wl.max_replicas, up_limit)
        # The window holds raw recommendations, before the caps below, as the HPA's does: after a
        # capped scale-up it may still ask for more once the load has gone.
        bound = (
            f", highest of the last {o.downscale_stabilization_seconds:g}s: {stabilized}"
            if stabilized > raw
            else ""
        )
        desired = stabilized
        if desired < low:
            desired = low
            bound += f", minReplicas {low}"
        elif desired > high:
            desired = high
            bound += (
                f", scale-up limited to {high} (max(2 x {current}, 4))"
                if up_limit < wl.max_replicas
                else f", maxReplicas {high}"
            )
        reason = (
            f"keda-hpa: HPA sync: {trigger_name}={usage:g} (KEDA's last poll), {why}{bound}:"
            f" {current} -> {desired}"
        )
        return desired, tuple(kept), reason
