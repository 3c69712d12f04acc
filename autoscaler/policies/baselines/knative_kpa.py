"""`knative-kpa`: Knative's Pod Autoscaler (KPA), concurrency-based, with its defaults.

A baseline of the simulator's comparison (`sim.presets`), written from ../shared/REFERENCE.md and the
KPA's documented algorithm. The trigger it reads is the observed concurrency: requests waiting plus
in service (a rabbitmq QueueLength trigger with protocol http counts both; `sim.presets` adds one
where a workload lacks it). Every call records an observation (once a second in the simulator);
every `tickSeconds` (2 s) the KPA decides:

- stable average over `stableWindowSeconds` (60 s), panic average over `panicWindowPercentage` of it
  (10 % -> 6 s); target per pod = containerConcurrency x targetUtilization;
  desiredStable = ceil(stable / target), desiredPanic = ceil(panic / target);
- both are kept within [floor(ready / maxScaleDownRate), ceil(maxScaleUpRate x ready)], ready being
  the ready pods and at least 1, as Knative counts it;
- panic starts when desiredPanic / ready >= `panicThresholdPercentage` / 100 (200 %), is extended by
  every tick still over it, and ends only once a whole stable window has passed without one; in
  panic the answer is max(desiredStable, desiredPanic) and never below the highest panic answer;
- zero only when the stable window saw no concurrency at all, and only after
  `scaleToZeroGracePeriodSeconds` (30 s) of that; until then one replica stays.

A workload at zero is decided at once when work shows up rather than at the next tick: Knative's
activator reports a cold-start request to the autoscaler immediately. Knative counts PODS: ready is
the ready pods, the answer is pods within [`minScale`, `maxScale`] (Knative's min-scale / max-scale;
by default the workload's minReplicas and maxReplicas read as pods), and a slower virtual pod holds
its in-flight requests as a full one would; `_pods` turns the answer into the units the engine
takes. A missing reading gives no recommendation (the engine holds) and records nothing. Callers:
the engine through `policies.registry`; `sim.presets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.statecodec import as_float, as_int, as_object, as_optional_float, as_pairs, as_str
from autoscaler.engine.types import WorkloadSpec
from autoscaler.policies.baselines._pods import pods_now, ready_pods, units_for
from autoscaler.policies.baselines._trigger import read_trigger, trigger_problems, trigger_read

# stable / target such as 3.0000000000000004 (float noise) must mean 3 pods, not 4.
_CEIL_SLACK = 1e-9


class KnativeKpaOptions(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    trigger: str | None = Field(
        None, description="trigger reading requests waiting + in service; default: the first"
    )
    # Ranges as Knative validates them (a concurrency limit of at most 1000 by default, a target
    # utilization of 1 to 100 %).
    container_concurrency: int = Field(8, ge=1, le=1000, alias="containerConcurrency")
    target_utilization: float = Field(0.7, ge=0.01, le=1, alias="targetUtilization")
    stable_window_seconds: float = Field(60.0, ge=6, le=3600, alias="stableWindowSeconds")
    panic_window_percentage: float = Field(10.0, ge=1, le=100, alias="panicWindowPercentage")
    panic_threshold_percentage: float = Field(200.0, ge=110, le=1000, alias="panicThresholdPercentage")
    # Rates up to 1e6, ticks of 0.1 s to an hour, a grace period of at most a week: bounds of ours.
    max_scale_up_rate: float = Field(1000.0, gt=1, le=1e6, alias="maxScaleUpRate")
    max_scale_down_rate: float = Field(2.0, gt=1, le=1e6, alias="maxScaleDownRate")
    tick_seconds: float = Field(2.0, ge=0.1, le=3600, alias="tickSeconds")
    scale_to_zero_grace_period_seconds: float = Field(
        30.0, ge=0, le=604_800, alias="scaleToZeroGracePeriodSeconds"
    )
    min_scale: int | None = Field(
        None, ge=0, le=100_000, alias="minScale", description="pods; default: the workload's minReplicas"
    )
    max_scale: int | None = Field(
        None, ge=1, le=100_000, alias="maxScale", description="pods; default: the workload's maxReplicas"
    )


@dataclass(frozen=True, slots=True)
class KnativeKpaMemory:
    """What the KPA remembers between calls (kept in `Recommendation.memory`)."""

    # (time, observed concurrency) within the stable window, oldest first.
    observations: tuple[tuple[float, float], ...]
    next_tick: float
    # Knative's panicTime: the last tick over the panic threshold; None when not panicking.
    panic_at: float | None
    # The highest answer given during this panic (never scale down in panic), in pods.
    max_panic: int
    # The last answer in pods, None before the first tick.
    desired: int | None
    # When the KPA first wanted zero in a row, for the grace period; None while it wants more.
    zero_since: float | None
    reason: str


class KnativeKpaPolicy:
    name: ClassVar[str] = "knative-kpa"
    Options: ClassVar[type[BaseModel]] = KnativeKpaOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(self, options: KnativeKpaOptions) -> None:
        self.options = options
        self.target = options.container_concurrency * options.target_utilization
        self.panic_window = options.stable_window_seconds * options.panic_window_percentage / 100.0
        self.panic_threshold = options.panic_threshold_percentage / 100.0

    def check(self, workload: WorkloadSpec) -> list[tuple[str, str]]:
        """Cross-checks against the workload, for `autoscaler validate`."""
        return trigger_problems(workload, self.options.trigger)

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        return trigger_read(workload, self.options.trigger)

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        memory = ctx.memory if isinstance(ctx.memory, KnativeKpaMemory) else None
        read = read_trigger(ctx, o.trigger, "knative-kpa", memory)
        if isinstance(read, Recommendation):
            return read
        _, value = read
        now = ctx.now

        cut = now - o.stable_window_seconds
        if memory is None:
            observations: tuple[tuple[float, float], ...] = ((now, value),)
            next_tick = now
        else:
            observations = (*memory.observations, (now, value))
            first = 0
            while observations[first][0] <= cut:
                first += 1
            if first:
                observations = observations[first:]
            next_tick = memory.next_tick
            cold_start = memory.desired == 0 and value > 0
            if now < next_tick and not cold_start:
                return Recommendation(
                    None if memory.desired is None else units_for(ctx, memory.desired),
                    memory.reason,
                    KnativeKpaMemory(
                        observations,
                        next_tick,
                        memory.panic_at,
                        memory.max_panic,
                        memory.desired,
                        memory.zero_since,
                        memory.reason,
                    ),
                )
        next_tick = now + o.tick_seconds if now >= next_tick else next_tick
        return self._tick(ctx, observations, next_tick, memory)

    # The memory codec (see `engine.policy`), so that a new leader keeps the KPA's windows and panic.

    def dump_memory(self, memory: object) -> object:
        if not isinstance(memory, KnativeKpaMemory):
            return None
        m = memory
        return {
            "observations": [list(o) for o in m.observations],
            "nextTick": m.next_tick,
            "panicAt": m.panic_at,
            "maxPanic": m.max_panic,
            "desired": m.desired,
            "zeroSince": m.zero_since,
            "reason": m.reason,
        }

    def load_memory(self, data: object) -> object:
        if data is None:
            return None
        d = as_object(data)
        desired = d["desired"]
        return KnativeKpaMemory(
            as_pairs(d["observations"], as_float),
            as_float(d["nextTick"]),
            as_optional_float(d["panicAt"]),
            as_int(d["maxPanic"]),
            None if desired is None else as_int(desired),
            as_optional_float(d["zeroSince"]),
            as_str(d["reason"]),
        )

    def _tick(
        self,
        ctx: PolicyContext,
        observations: tuple[tuple[float, float], ...],
        next_tick: float,
        memory: KnativeKpaMemory | None,
    ) -> Recommendation:
        o = self.options
        now = ctx.now
        stable_sum = 0.0
        for _, v in observations:
            stable_sum += v
        stable = stable_sum / len(observations)
        panic_cut = now - self.panic_window
        panic_sum = 0.0
        panic_n = 0
        for i in range(len(observations) - 1, -1, -1):
            t, v = observations[i]
            if t <= panic_cut:
                break
            panic_sum += v
            panic_n += 1
        panic = panic_sum / panic_n

        ready = max(1, ready_pods(ctx))
        max_up = math.ceil(o.max_scale_up_rate * ready)
        max_down = math.floor(ready / o.max_scale_down_rate)
        want_stable = max(math.ceil(stable / self.target - _CEIL_SLACK), 0)
        want_panic = max(math.ceil(panic / self.target - _CEIL_SLACK), 0)
        desired_stable = min(max(want_stable, max_down), max_up)
        desired_panic = min(max(want_panic, max_down), max_up)

        panic_at = memory.panic_at if memory is not None else None
        max_panic = memory.max_panic if memory is not None else 0
        over = want_panic / ready >= self.panic_threshold
        if over:
            panic_at = now
        elif panic_at is not None and panic_at + o.stable_window_seconds < now:
            # The surge has made its way into the stable average.
            panic_at = None
            max_panic = 0

        desired = desired_stable
        if panic_at is not None:
            desired = max(desired, desired_panic)
            if desired < max_panic:
                desired = max_panic
            else:
                max_panic = desired
            mode = f"panic (since the last tick over {100 * self.panic_threshold:g}% at t={panic_at:g}s)"
        else:
            mode = "stable"
        why = (
            f"knative-kpa: {mode}: concurrency {stable:.1f} over {o.stable_window_seconds:g}s,"
            f" {panic:.1f} over {self.panic_window:g}s, target {self.target:g} per replica,"
            f" ready {ready_pods(ctx)} pods, rates [{max_down}, {max_up}] -> {desired} pods"
        )
        wl = ctx.workload
        low = o.min_scale if o.min_scale is not None else wl.min_replicas
        high = o.max_scale if o.max_scale is not None else wl.max_replicas
        if desired > high:
            desired = high
            why += f"; maxScale {high}"
        elif desired < low:
            desired = low
            why += f"; minScale {low}"

        zero_since = memory.zero_since if memory is not None else None
        if desired == 0:
            zero_since = now if zero_since is None else zero_since
            waited = now - zero_since
            if pods_now(ctx) > 0 and waited < o.scale_to_zero_grace_period_seconds:
                desired = 1
                grace = o.scale_to_zero_grace_period_seconds
                why += f"; keeping 1 for the scale-to-zero grace period ({waited:g}s of {grace:g}s)"
        else:
            zero_since = None

        new_memory = KnativeKpaMemory(observations, next_tick, panic_at, max_panic, desired, zero_since, why)
        return Recommendation(units_for(ctx, desired), why, new_memory)
