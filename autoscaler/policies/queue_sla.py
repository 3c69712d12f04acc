"""`queue-sla`: size capacity so that queued work waits at most `maxWaitSeconds`, and no more.

A replica ordered now serves only after the startup time S of the pool it will land on, so the
policy sizes for the moment it arrives: serve the arrival rate expected then and drain, within the
SLA, the queue it will find then.

    queue_S = max(0, backlog + (rate_S - serviceRate * capacity_now) * S)
    need    = (rate_S + trend rise over S + queue_S / maxWait) / serviceRatePerReplica * (1 + headroom)

- rate_S is the arrival rate averaged over about one startup time (an exponential average with a
  time constant of max(S, maxWait)): the rate the next replicas will meet. The instant rate of a
  burst is not it: on the Azure code trace bursts end before a replica can start, and sizing for
  them bought hundreds of replicas that arrived to an empty queue (benchmarks/quality.py).
- capacity_now counts replicas still starting, so an order already placed is not placed again.
- A damped trend (Holt's linear method on the rate over about one SLA window, slope smoothed over
  ten) adds the climb expected over S when load rises steadily, never a fall.
- Scale-in is gentle: the recommendation is the highest need of the last `holdSeconds` (600 s), so
  the capacity the next burst of a bursty stream needs is still there. On the code trace a 300 s
  hold missed 6 points more of the SLA for 13 % fewer GPU-hours; 900 s gained nothing on the
  steady conversation trace and cost 14 % more.

The policy owns its behavior (`owns_behavior`): the HPA's rate limits (4 pods per 15 s) would delay
exactly the scale-up it computed, and its 300 s window would stack on the hold. At first sight it
counts what runs as a need, as the HPA records its initial recommendation, so a restarted autoscaler
does not cut a warm workload. Missing data is never zero: without a backlog reading it gives no
recommendation; without a rate reading it keeps its last estimate of the rate, and the engine
refuses to scale down on partial data. Registered in `policies.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.statecodec import as_float, as_object, as_optional_float, as_pairs
from autoscaler.engine.types import WorkloadSpec

# The hold memory keeps the highest need per bucket of this many seconds: bounded state whatever
# the call rate, and a hold accurate to one bucket.
_BUCKET_SECONDS = 5.0
# How much of the trend survives per second of look-ahead (damped trend: a burst's slope must not
# be extrapolated for minutes).
_TREND_DAMPING_PER_SECOND = 0.97
# Time constant of the learned service rate: long against the 10 s rate window of the broker, short
# against a deployment's life.
_MU_TAU_SECONDS = 120.0
# The window RabbitMQ's management API averages its rates over (`deliver_get_details.rate`).
_DELIVERY_WINDOW_SECONDS = 10.0


class QueueSlaOptions(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    max_wait_seconds: float = Field(
        30.0, ge=0.01, le=86_400, alias="maxWaitSeconds", description="0.01 s to a day"
    )
    backlog_trigger: str = Field(
        "backlog", alias="backlogTrigger", description="trigger reading queue length"
    )
    rate_trigger: str | None = Field(
        None, alias="rateTrigger", description="trigger reading the arrival rate (messages/s)"
    )
    service_rate_per_replica: float | None = Field(
        None,
        ge=1e-6,
        le=1e6,
        alias="serviceRatePerReplica",
        description="requests/s one replica unit completes (profiled), 1e-6 to 1e6; with "
        "deliveryTrigger only the first guess, until the rate is learned",
    )
    delivery_trigger: str | None = Field(
        None,
        alias="deliveryTrigger",
        description="a RabbitMQ DeliverGetRate trigger: the service rate is learned from it",
    )
    headroom: float = Field(0.1, ge=0, le=5, description="extra capacity as a fraction of the need")
    lookahead: bool = Field(True, description="size for the rate and queue one startup time ahead")
    lookahead_seconds: float = Field(
        120.0,
        ge=0,
        le=86_400,
        alias="lookaheadSeconds",
        description="longest look-ahead, whatever the startup time; at most a day",
    )
    # At most a day: the hold memory keeps one entry per 5 s bucket of it.
    hold_seconds: float = Field(
        600.0,
        ge=0,
        le=86_400,
        alias="holdSeconds",
        description="keep the highest need this long before scaling in; at most a day",
    )

    @model_validator(mode="after")
    def _knows_a_service_rate(self) -> QueueSlaOptions:
        if self.service_rate_per_replica is None and self.delivery_trigger is None:
            raise ValueError(
                "give serviceRatePerReplica (requests/s one replica completes, from profiling) or "
                "deliveryTrigger (a DeliverGetRate trigger to learn it from), or both"
            )
        return self


@dataclass(frozen=True, slots=True)
class _Memory:
    at: float
    rate: float  # smoothed arrival rate, requests/s
    slow: float  # the same over about one startup time: the rate the next replicas will meet
    trend: float  # its slope, requests/s per second
    # (bucket start, highest need in it), oldest first, only buckets inside the hold window and only
    # those above every later one: a need that a later, higher one outlasts can never be the highest.
    needs: tuple[tuple[float, float], ...]
    # Service rate of one replica unit learned from deliveries (requests/s); None: not yet.
    mu: float | None = None
    # Since when requests have waited without the ready capacity growing (None: not now), and that
    # capacity: deliveries over a window all of whose replicas were busy measure the service rate.
    busy_since: float | None = None
    ready: float = 0.0


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
        if self.options.delivery_trigger is not None and self.options.delivery_trigger not in names:
            problems.append(("deliveryTrigger", f"no trigger named '{self.options.delivery_trigger}'"))
        return problems

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        o = self.options
        return frozenset(n for n in (o.backlog_trigger, o.rate_trigger, o.delivery_trigger) if n is not None)

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
        slow_tau = max(ctx.startup_seconds, wait)
        if memory is None or now <= memory.at:
            rate = measured if measured is not None else 0.0
            slow = rate
            trend = 0.0
        elif measured is None:
            rate, slow, trend = memory.rate, memory.slow, memory.trend
        else:
            slow = memory.slow + (1.0 - math.exp(-(now - memory.at) / slow_tau)) * (measured - memory.slow)
            dt = now - memory.at
            alpha = 1.0 - math.exp(-dt / (wait / 2.0))
            predicted = memory.rate + memory.trend * dt
            rate = max(0.0, predicted + alpha * (measured - predicted))
            beta = 1.0 - math.exp(-dt / (10.0 * wait))  # the trend of minutes, not of one burst
            trend = memory.trend + beta * ((rate - memory.rate) / dt - memory.trend)

        busy_since = _busy_since(memory, backlog, ctx.ready_units, now)
        learned = _learn_service_rate(
            memory,
            ctx.values.get(o.delivery_trigger) if o.delivery_trigger else None,
            busy_since is not None and now - busy_since >= _DELIVERY_WINDOW_SECONDS,
            ctx.ready_units,
            now,
        )
        mu_or_none = learned if learned is not None else o.service_rate_per_replica
        if mu_or_none is None:
            # Nothing known yet (no profiled figure, no replica has served): one replica to learn
            # from when there is work, and never less than what runs.
            units = max(ctx.current_units, 1.0 if backlog > 0 or rate > 0 else 0.0)
            reason = (
                f"queue-sla: backlog {backlog:g}, no service rate learned yet: {units:g} units to learn it"
            )
            needs = memory.needs if memory is not None else ()
            memo = _Memory(now, rate, slow, trend, needs, None, busy_since, ctx.ready_units)
            return Recommendation(units, reason, memo)
        mu = mu_or_none
        horizon = min(ctx.startup_seconds, o.lookahead_seconds) if o.lookahead else 0.0
        # Sum of the damped trend over the horizon: trend * sum(phi^k), only when climbing.
        phi = _TREND_DAMPING_PER_SECOND
        rise = trend * phi * (1.0 - phi**horizon) / (1.0 - phi) if trend > 0 and horizon > 0 else 0.0
        # An average over slow_tau lags a steady climb by trend * slow_tau: add that back, then the
        # climb over the horizon. Never a fall: a trend down is left to the hold to follow.
        ahead_rate = slow + (trend * slow_tau + rise if trend > 0 else 0.0)
        # The queue the next replicas will find: what waits now, plus what the slow rate adds
        # beyond what the capacity already asked for (starting replicas included) serves.
        projected = max(0.0, backlog + (slow - mu * ctx.current_units) * horizon)
        need = (ahead_rate + projected / wait) / mu * (1.0 + o.headroom)

        # Hold the highest need of the hold window (in buckets), then let go.
        hold = o.hold_seconds
        bucket = math.floor(now / _BUCKET_SECONDS) * _BUCKET_SECONDS
        previous = memory.needs if memory is not None else ()
        kept = tuple(b for b in previous if b[0] > now - hold - _BUCKET_SECONDS)
        if memory is None or (hold > 0 and not kept):
            # First sight (a start, a restart, or a memory with no need left in the hold window: no
            # backlog reading for that long, or a state adopted long after it was written): count
            # what runs now as a need of this moment, as the HPA records its initial
            # recommendation, so a warm workload is not cut before any data.
            kept = ((bucket, ctx.current_units),)
        # Remembered at most at maxReplicas: more can never be granted, and a burst far above it
        # then leaves one entry, not one per bucket, in the memory (and in the state in the Lease).
        remembered = min(need, float(ctx.workload.max_replicas))
        if kept and kept[-1][0] == bucket:
            kept = (*kept[:-1], (bucket, max(kept[-1][1], remembered)))
        else:
            kept = (*kept, (bucket, remembered))
        kept = _outlasting(kept)
        held = max(kept[0][1], need)

        rate_text = f"{rate:.2f}/s" if measured is not None else f"{rate:.2f}/s (no fresh reading)"
        mu_text = f"{mu:.3g}/s per replica" + (" (learned)" if learned is not None else "")
        reason = (
            f"queue-sla: backlog {backlog:g}, arrivals ~{rate_text}, {mu_text} -> "
            f"{need:.2f} units for waits <= {wait:g}s"
        )
        if horizon > 0:
            reason += f" (looking {horizon:.0f}s ahead: queue ~{projected:.0f}, rate ~{ahead_rate:.2f}/s)"
        if held > need + 1e-9:
            reason += f"; holding {held:.2f} units, the highest need of the last {hold:.0f}s"
        memo = _Memory(now, rate, slow, trend, kept, learned, busy_since, ctx.ready_units)
        return Recommendation(held, reason, memo)

    # The memory codec (see `engine.policy`): a new leader resumes the hold window and the smoothed
    # rates of the old one (`engine.statecodec`).

    def dump_memory(self, memory: object) -> object:
        if not isinstance(memory, _Memory):
            return None
        m = memory
        return {
            "at": m.at,
            "rate": m.rate,
            "slow": m.slow,
            "trend": m.trend,
            "needs": [list(n) for n in m.needs],
            "mu": m.mu,
            "busy_since": m.busy_since,
            "ready": m.ready,
        }

    def load_memory(self, data: object) -> object:
        if data is None:
            return None
        d = as_object(data)
        return _Memory(
            as_float(d["at"]),
            as_float(d["rate"]),
            as_float(d["slow"]),
            as_float(d["trend"]),
            as_pairs(d["needs"], as_float),
            as_optional_float(d.get("mu")),
            as_optional_float(d.get("busy_since")),
            as_float(d.get("ready", 0.0)),
        )


def _busy_since(memory: _Memory | None, backlog: float, ready_units: float, now: float) -> float | None:
    """Since when every ready replica has been busy (requests waited, per the backlog trigger, which
    counts waiting requests) with no replica added to the ready capacity; None: not busy now."""
    if backlog <= 0 or ready_units <= 0:
        return None
    if memory is None or memory.busy_since is None or ready_units > memory.ready + 1e-9:
        return now
    return memory.busy_since


def _learn_service_rate(
    memory: _Memory | None, delivered: float | None, saturated: bool, ready_units: float, now: float
) -> float | None:
    """The service rate of one replica unit, learned from deliveries per second.

    `saturated`: every ready replica was busy over the whole delivery-rate window, so deliveries /
    ready units is the rate one unit serves; it is averaged over about `_MU_TAU_SECONDS`. Otherwise
    replicas may have idled and the ratio is only a lower bound: it can raise the estimate, never
    lower it. The same information a live deployment has (RabbitMQ's `deliver_get_details.rate`),
    and no constant from the whole trace."""
    mu = memory.mu if memory is not None else None
    if delivered is None or ready_units <= 0:
        return mu
    sample = delivered / ready_units
    if mu is None:
        return sample if saturated and sample > 0 else None
    if saturated or sample > mu:
        dt = now - memory.at if memory is not None else 0.0
        if dt > 0:
            mu += (1.0 - math.exp(-dt / _MU_TAU_SECONDS)) * (sample - mu)
    return mu


def _outlasting(needs: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """The buckets above every later one, oldest first (so the first is the highest). Any window that
    holds an older, lower bucket also holds the later, higher one, so dropping the lower changes no
    hold; the memory (and the engine state a new leader adopts) stays short: one entry while the need
    rises, one per step down while it falls."""
    kept: list[tuple[float, float]] = []
    for entry in reversed(needs):
        if not kept or entry[1] > kept[-1][1]:
            kept.append(entry)
    kept.reverse()
    return tuple(kept) if len(kept) != len(needs) else needs
