"""`queue-sla`: size capacity so that queued work waits at most `maxWaitSeconds`, and no more.

The need, in replica units, is what serves the arrival rate and drains the backlog within the SLA:

    need = (arrivals + backlog / maxWait) / serviceRatePerReplica * (1 + headroom)

Four refinements make it cheaper than a queue-length target at the same waits:

- The arrival rate is smoothed over about one SLA window (an exponential average with a time
  constant of maxWait / 2). A spike shorter than the SLA is absorbed by the queue within the SLA,
  so chasing it with replicas that arrive minutes later only burns GPU-hours.
- Cold starts: a replica ordered now serves only after the startup time S of the pool it will land
  on, so the policy sizes for the rate expected S ahead (bounded by `lookaheadSeconds`): a damped
  trend (Holt's linear method) on the smoothed rate, only when climbing, never less than now.
  `projectBacklog` also sizes for the backlog a shortfall would build up over S; it is off by
  default because on bursty traffic (the Azure code trace) it ordered hundreds of replicas for
  bursts that were over before they started (benchmarks/quality.py).
- Scale-in is gentle: the recommendation is the highest need of the last `holdSeconds` (300 s),
  so capacity that the next burst of a bursty stream needs is still there. Holding only one startup
  time (the ski-rental rule) measured worse on the Azure code trace: half the requests missed the
  SLA, as every burst met released capacity (benchmarks/quality.py).

The policy owns its behavior (`owns_behavior`): the HPA's rate limits (4 pods per 15 s) would delay
exactly the scale-up it computed, and its 300 s window would undo the hold rule. Missing data is
never zero: without a backlog reading it gives no recommendation, and without a rate reading it
sizes for the backlog alone while the engine refuses to scale down on partial data.
Registered in `policies.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import WorkloadSpec

# The hold memory keeps the highest need per bucket of this many seconds: bounded state whatever
# the call rate, and a hold accurate to one bucket.
_BUCKET_SECONDS = 5.0
# How much of the trend survives per second of look-ahead (damped trend: a burst's slope must not
# be extrapolated for minutes).
_TREND_DAMPING_PER_SECOND = 0.97


class QueueSlaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_wait_seconds: float = Field(30.0, gt=0, alias="maxWaitSeconds")
    backlog_trigger: str = Field(
        "backlog", alias="backlogTrigger", description="trigger reading queue length"
    )
    rate_trigger: str | None = Field(
        None, alias="rateTrigger", description="trigger reading the arrival rate (messages/s)"
    )
    service_rate_per_replica: float = Field(
        ..., gt=0, alias="serviceRatePerReplica", description="requests/s one replica unit completes"
    )
    headroom: float = Field(0.1, ge=0, le=5, description="extra capacity as a fraction of the need")
    lookahead: bool = Field(True, description="forecast the arrival rate one startup time ahead")
    project_backlog: bool = Field(
        False,
        alias="projectBacklog",
        description="also size for the backlog a shortfall would build up over the startup time",
    )
    lookahead_seconds: float = Field(
        120.0, ge=0, alias="lookaheadSeconds", description="longest look-ahead, whatever the startup time"
    )
    hold_seconds: float = Field(
        300.0, ge=0, alias="holdSeconds", description="keep the highest need this long before scaling in"
    )


@dataclass(frozen=True, slots=True)
class _Memory:
    at: float
    rate: float  # smoothed arrival rate, requests/s
    trend: float  # its slope, requests/s per second
    # (bucket start, highest need in it), oldest first, only buckets inside the hold window.
    needs: tuple[tuple[float, float], ...]


class QueueSlaPolicy:
    name: ClassVar[str] = "queue-sla"
    Options: ClassVar[type[BaseModel]] = QueueSlaOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(self, options: QueueSlaOptions) -> None:
        self.options = options

    @property
    def max_wait_seconds(self) -> float:
        return self.options.max_wait_seconds

    def check(self, workload: WorkloadSpec) -> list[tuple[str, str]]:
        """Cross-checks against the workload, for `autoscaler validate`."""
        names = {t.name for t in workload.triggers}
        problems = []
        if self.options.backlog_trigger not in names:
            problems.append(("backlogTrigger", f"no trigger named '{self.options.backlog_trigger}'"))
        if self.options.rate_trigger is not None and self.options.rate_trigger not in names:
            problems.append(("rateTrigger", f"no trigger named '{self.options.rate_trigger}'"))
        return problems

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        memory = ctx.memory if isinstance(ctx.memory, _Memory) else None
        backlog = ctx.values.get(o.backlog_trigger)
        if backlog is None:
            return Recommendation(
                None, f"queue-sla: backlog trigger '{o.backlog_trigger}' has no reading", memory
            )
        measured = ctx.values.get(o.rate_trigger) if o.rate_trigger else None
        wait = o.max_wait_seconds
        now = ctx.now

        # Smoothed rate and trend (Holt). A missing rate reading keeps the last estimate but adds
        # nothing to it; with no estimate at all, the backlog alone sizes the need.
        if memory is None or now <= memory.at:
            rate = measured if measured is not None else 0.0
            trend = 0.0
        elif measured is None:
            rate, trend = memory.rate, memory.trend
        else:
            dt = now - memory.at
            alpha = 1.0 - math.exp(-dt / (wait / 2.0))
            predicted = memory.rate + memory.trend * dt
            rate = max(0.0, predicted + alpha * (measured - predicted))
            beta = 1.0 - math.exp(-dt / (10.0 * wait))  # the trend of minutes, not of one burst
            trend = memory.trend + beta * ((rate - memory.rate) / dt - memory.trend)

        mu = o.service_rate_per_replica
        horizon = min(ctx.startup_seconds, o.lookahead_seconds) if o.lookahead else 0.0
        # Sum of the damped trend over the horizon: trend * sum(phi^k), only when climbing.
        phi = _TREND_DAMPING_PER_SECOND
        rise = trend * phi * (1.0 - phi**horizon) / (1.0 - phi) if trend > 0 and horizon > 0 else 0.0
        ahead_rate = rate + rise
        projected = (
            max(0.0, backlog + (rate - mu * ctx.current_units) * horizon) if o.project_backlog else backlog
        )
        need_now = (rate + backlog / wait) / mu
        need_ahead = (ahead_rate + projected / wait) / mu
        need = max(need_now, need_ahead) * (1.0 + o.headroom)

        # Hold the highest need of the hold window (in buckets), then let go.
        hold = o.hold_seconds
        bucket = math.floor(now / _BUCKET_SECONDS) * _BUCKET_SECONDS
        if memory is None:
            # First sight (or a restart): count what runs now as a need of this moment, as the HPA
            # records its initial recommendation, so a warm workload is not cut before any data.
            previous: tuple[tuple[float, float], ...] = ((bucket, ctx.current_units),)
        else:
            previous = memory.needs
        kept = tuple(b for b in previous if b[0] > now - hold - _BUCKET_SECONDS)
        if kept and kept[-1][0] == bucket:
            kept = (*kept[:-1], (bucket, max(kept[-1][1], need)))
        else:
            kept = (*kept, (bucket, need))
        held = max(n for _, n in kept)

        rate_text = f"{rate:.2f}/s" if measured is not None else f"{rate:.2f}/s (no fresh reading)"
        reason = (
            f"queue-sla: backlog {backlog:g}, arrivals ~{rate_text}, {mu:g}/s per replica -> "
            f"{need:.2f} units for waits <= {wait:g}s"
        )
        if need_ahead > need_now:
            reason += f" (looking {horizon:.0f}s ahead: backlog ~{projected:.0f}, rate ~{ahead_rate:.2f}/s)"
        if held > need + 1e-9:
            reason += f"; holding {held:.2f} units, the highest need of the last {hold:.0f}s"
        return Recommendation(held, reason, _Memory(now, rate, trend, kept))
