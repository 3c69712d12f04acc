"""`queue-sla`: size capacity so that queued work waits at most `maxWaitSeconds`, and no more.

A replica ordered now serves only after the startup time S of the pool it will land on, so the
policy sizes for the moment it arrives: serve the arrival rate expected then and drain, within the
SLA, the queue it will find then.

    queue_S = max(0, backlog + (rate_S - serviceRate * capacity_now) * S)
    need    = (rate_S + trend rise over S + queue_S / maxWait) / serviceRatePerReplica + spare

- rate_S is the arrival rate averaged over about one startup time (an exponential average with a
  time constant of max(S, maxWait)): the rate the next replicas will meet. The instant rate of a
  burst is not it: on the Azure code trace bursts end before a replica can start, and sizing for
  them bought hundreds of replicas that arrived to an empty queue (benchmarks/quality.py).
- capacity_now counts replicas still starting, so an order already placed is not placed again.
- A damped trend (Holt's linear method on the rate over about one SLA window, slope smoothed over
  ten) adds the climb expected over S when load rises steadily, never a fall; only the part of it
  beyond `trendSignificance` (2) standard errors of a slope fitted to the rate readings over the
  trend's window counts, so the noise of a steady stream adds no climb (null: at face value).
- The spare capacity is square-root staffing (Halfin-Whitt) when `concurrencyPerReplica` is known:
  servers = R + beta * sqrt(R), R the requests in service, `staffingBeta` 1 unless given; else the
  fixed `headroom` (10 %), also when a headroom is given.
- The burst order (`burstOrder`): a burst shows in the instant rate long before in rate_S, and
  replicas ordered late are late. While the queue outruns what the ready replicas drain within the
  SLA, the queue term is also sized on the instant rate with only the ready replicas serving (the
  need counts every replica ordered as serving over S, which a burst's first minute belies), and
  that order stands until the ready replicas catch up. It is never held: the replicas still
  starting then are the first a ReplicaSet removes, so of a large order on a heavy-tailed pool
  (Salad) the fastest serve and the rest cost only their start.
- A climb does not spill (`spillOnTrend`, off by default): when new replicas would start on a pool
  slower to start than the first (it is full), the need beyond what runs counts the measured load
  and queue, with the spare, not the forecast climb. A climb not yet in rate_S is a guess, and a
  replica that takes minutes to start, billed from its creation, mostly comes after it: on the
  conversation trace the climbs spilled to Salad cost 5.4 GPU-hours of 58.2.
- Scale-in is gentle: each need of the last `holdSeconds` (2700 s) is held, whole for the first
  pool's p95 startup (letting it go sooner risks waiting a whole startup to get it back), then
  a share of it falling linearly to nothing, so the capacity the next burst of a bursty stream
  needs is mostly still there while a burst long past stops paying for a burst-sized fleet. A flat
  600 s hold (`holdDecay: false, holdSeconds: 600`, earlier versions) used 8 % more GPU-hours on
  the code trace and 11 % more on the conversation trace at a lower share within the SLA
  (benchmarks/quality.py).
- Measured (issue 10, `benchmarks/results/queue_sla_variants.md`): the burst order, square-root
  staffing, the trend's significance test, the 2700 s hold and no climb spilled are defaults
  together. Before the burst order, staffing and the significance test each cost share on the
  bursty code trace at its first burst; with it and the longer hold they use fewer GPU-hours than
  the earlier defaults (headroom 0.1, trend at face value, 1800 s) at an equal share (within 0.02
  points) or a higher one on every run of the quality benchmark's scenarios. Not on the two bundled
  demos: their code workload, from one replica at a 10 s SLA, loses share in its first burst, which
  the earlier face-value trend met with a replica ordered on a blip minutes before.

The policy owns its behavior (`owns_behavior`): the HPA's rate limits (4 pods per 15 s) would delay
exactly the scale-up it computed, and its 300 s window would stack on the hold. At first sight it
counts what runs as a need, as the HPA records its initial recommendation, so a restarted autoscaler
does not cut a warm workload. Missing data is never zero: without a backlog reading it gives no
recommendation; without a rate reading it keeps its last estimate of the rate, and the engine
refuses to scale down on partial data. Registered in `policies.registry`.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from typing import ClassVar

from pydantic import BaseModel

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.statecodec import StateFormatError, as_float, as_object, as_optional_float, as_pairs
from autoscaler.engine.types import Frozen, WorkloadSpec

# The options model lives apart: pydantic models do not compile with mypyc, this module does
# (setup.py). Importers of `queue_sla.QueueSlaOptions` get it from here all the same.
from autoscaler.policies.queue_sla_options import QueueSlaOptions

__all__ = ["QueueSlaOptions", "QueueSlaPolicy"]

# The hold memory keeps the highest need per bucket of this many seconds: bounded state whatever
# the call rate, and a hold accurate to one bucket.
_BUCKET_SECONDS = 5.0
# How much of the trend survives per second of look-ahead (damped trend: a burst's slope must not
# be extrapolated for minutes).
_TREND_DAMPING_PER_SECOND = 0.97
# Time constant of the learned service rate: long against the 10 s rate window of the broker, short
# against a deployment's life.
_MU_TAU_SECONDS = 120.0
# The window RabbitMQ's management API averages its rates over (`deliver_get_details.rate`,
# `publish_details.rate`): deliveries and arrivals alike.
_RATE_WINDOW_SECONDS = 10.0
# The exponential averages and the trend reach their fixed point (the reading, zero) only in the
# limit; within this much of it (relative to the reading, or absolute below 1) they take it, so a
# workload whose readings stay put settles and the incremental engine can leave it alone
# (`Recommendation.wake_at`). A billionth of a request per second changes no replica count.
_SNAP = 1e-9


@dataclass(frozen=True, slots=True)
class _Memory(Frozen):
    at: float
    rate: float  # smoothed arrival rate, requests/s
    slow: float  # the same over about one startup time: the rate the next replicas will meet
    trend: float  # its slope, requests/s per second
    # (bucket start, highest need in it), oldest first, only buckets inside the hold window and only
    # those above every later one: a need that a later, higher one outlasts can never be the highest.
    needs: tuple[tuple[float, float], ...]
    service: _Learned | None = None
    # With trendSignificance only (else 0): the variance of the rate readings around Holt's forecast
    # of them, (requests/s)^2, averaged over the trend's window.
    noise: float = 0.0
    # The burst order standing (units above the need; 0: none), see `burstOrder`.
    burst: float = 0.0

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        at: float,
        rate: float,
        slow: float,
        trend: float,
        needs: tuple[tuple[float, float], ...],
        service: _Learned | None = None,
        noise: float = 0.0,
        burst: float = 0.0,
    ) -> None:
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "slow", slow)
        object.__setattr__(self, "trend", trend)
        object.__setattr__(self, "needs", needs)
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "noise", noise)
        object.__setattr__(self, "burst", burst)


@dataclass(frozen=True, slots=True)
class _Learned(Frozen):
    """What the policy learned of a replica's service rate (see `_learn`)."""

    mu: float | None  # requests/s one replica unit serves; None: not learned yet
    # Since when requests have waited with no replica added to the ready capacity (None: not now),
    # and that capacity: deliveries over a window of busy replicas measure the service rate.
    busy_since: float | None
    ready: float
    # Averages of the capacity busy (in replica units: requests in service over the slots of a unit)
    # and of deliveries per second; their ratio is what one busy unit serves (Little's law, at any
    # load). None until the triggers have been read with replicas ready.
    busy_units: float | None = None
    delivered: float | None = None

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        mu: float | None,
        busy_since: float | None,
        ready: float,
        busy_units: float | None = None,
        delivered: float | None = None,
    ) -> None:
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "busy_since", busy_since)
        object.__setattr__(self, "ready", ready)
        object.__setattr__(self, "busy_units", busy_units)
        object.__setattr__(self, "delivered", delivered)


class QueueSlaPolicy:
    name: ClassVar[str] = "queue-sla"
    Options: ClassVar[type[BaseModel]] = QueueSlaOptions
    owns_behavior: ClassVar[bool] = True
    # It looks at rooms only through `startup_seconds` (the first pool with room), which the engine
    # works out; see `Policy`.
    reads_pool_room: ClassVar[bool] = False

    def __init__(self, options: QueueSlaOptions) -> None:
        self.options = options
        # Asked at every reconcile of every workload, and only the options decide it.
        o = options
        read = (o.backlog_trigger, o.rate_trigger, o.delivery_trigger, o.in_flight_trigger)
        self._reads = frozenset(n for n in read if n is not None)
        self._beta = o.staffing()
        self._spare = o.spare_share()
        # The parts of every reason that only the options decide, formatted once.
        self._wait_text = f"{o.max_wait_seconds:g}"
        self._hold_text = f"{o.hold_seconds:.0f}"
        profiled = o.service_rate_per_replica
        self._profiled_text = None if profiled is None else f"{profiled:.3g}/s per replica"

    # Pickled through its constructor, like the engine's types (`engine.types.Frozen`): compiled,
    # the class has no field-by-field restore, and a Simulation with this policy goes to worker
    # processes (benchmarks/first_burst.py).
    def __reduce__(self) -> tuple[type[QueueSlaPolicy], tuple[QueueSlaOptions]]:
        return (QueueSlaPolicy, (self.options,))

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
        for field, name in (
            ("deliveryTrigger", self.options.delivery_trigger),
            ("inFlightTrigger", self.options.in_flight_trigger),
        ):
            if name is not None and name not in names:
                problems.append((field, f"no trigger named '{name}'"))
        return problems

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        return self._reads

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
        trend_window = 10.0 * wait  # the trend of minutes, not of one burst
        noise = 0.0
        if memory is None or now <= memory.at:
            rate = measured if measured is not None else 0.0
            slow = rate
            trend = 0.0
        elif measured is None:
            rate, slow, trend, noise = memory.rate, memory.slow, memory.trend, memory.noise
        else:
            slow = memory.slow + (1.0 - math.exp(-(now - memory.at) / slow_tau)) * (measured - memory.slow)
            dt = now - memory.at
            alpha = 1.0 - math.exp(-dt / (wait / 2.0))
            predicted = memory.rate + memory.trend * dt
            rate = max(0.0, predicted + alpha * (measured - predicted))
            beta = 1.0 - math.exp(-dt / trend_window)
            trend = memory.trend + beta * ((rate - memory.rate) / dt - memory.trend)
            if o.trend_significance is not None:
                miss = measured - predicted
                noise = _snap(memory.noise + beta * (miss * miss - memory.noise), 0.0)
            slow, rate = _snap(slow, measured), _snap(rate, max(0.0, measured))
            if abs(trend) < _SNAP:
                trend = 0.0
        # Settled: every later call with the same readings keeps rate, slow, trend and noise as they are.
        settled = measured is None or (
            trend == 0.0 and slow == measured and rate == max(0.0, measured) and noise == 0.0
        )

        service, service_wake = _learn(
            memory,
            o,
            backlog,
            ctx.values.get(o.delivery_trigger) if o.delivery_trigger else None,
            ctx.values.get(o.in_flight_trigger) if o.in_flight_trigger else None,
            ctx.ready_units,
            ctx.pool_ready,
            now,
        )
        learned = service.mu
        mu_or_none = learned if learned is not None else o.service_rate_per_replica
        if mu_or_none is None:
            # Nothing known yet (no profiled figure, no replica has served): one replica to learn
            # from when there is work, and never less than what runs.
            units = max(ctx.current_units, 1.0 if backlog > 0 or rate > 0 else 0.0)
            reason = (
                f"queue-sla: backlog {backlog:g}, no service rate learned yet: {units:g} units to learn it"
            )
            needs = memory.needs if memory is not None else ()
            wake = service_wake if settled else None
            return Recommendation(units, reason, _Memory(now, rate, slow, trend, needs, service, noise), wake)
        mu = mu_or_none
        horizon = min(ctx.startup_seconds, o.lookahead_seconds) if o.lookahead else 0.0
        climb = trend
        if o.trend_significance is not None and trend > 0:
            climb = max(0.0, trend - o.trend_significance * _slope_error(noise, trend_window))
        # Sum of the damped trend over the horizon: trend * sum(phi^k), only when climbing.
        phi = _TREND_DAMPING_PER_SECOND
        rise = climb * phi * (1.0 - phi**horizon) / (1.0 - phi) if climb > 0 and horizon > 0 else 0.0
        # An average over slow_tau lags a steady climb by trend * slow_tau: add that back, then the
        # climb over the horizon. Never a fall: a trend down is left to the hold to follow.
        ahead_rate = slow + (climb * slow_tau + rise if climb > 0 else 0.0)
        # The queue the next replicas will find: what waits now, plus what the slow rate adds
        # beyond what the capacity already asked for (starting replicas included) serves.
        projected = max(0.0, backlog + (slow - mu * ctx.current_units) * horizon)
        need = self._staffed((ahead_rate + projected / wait) / mu)
        spill = not o.spill_on_trend and ahead_rate > slow and need > ctx.current_units and _spills(ctx)
        if spill:
            # New replicas would start on a slower pool than the first (see `spillOnTrend`): beyond
            # what runs, the measured load and queue only, not the climb.
            need = max(ctx.current_units, self._staffed((slow + projected / wait) / mu))

        # Hold the highest need of the hold window (in buckets), then let go.
        hold = o.hold_seconds
        bucket = math.floor(now / _BUCKET_SECONDS) * _BUCKET_SECONDS
        previous = memory.needs if memory is not None else ()
        # The buckets still in the window (after `cut`): all of them in the common case, which
        # keeps the tuple.
        cut = now - hold - _BUCKET_SECONDS
        kept = previous
        for b in previous:
            if not b[0] > cut:
                kept = tuple(b for b in previous if b[0] > cut)
                break
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
        flat = _flat_seconds(ctx.workload)
        held = max(_held(kept, now, hold, flat) if o.hold_decay else kept[0][1], need)
        burst = 0.0
        if o.burst_order and backlog > mu * ctx.ready_units * wait:
            # The queue outruns what the ready replicas drain within the SLA (see `burstOrder`): the
            # queue the next replicas find if the instant rate goes on and only the ready ones
            # serve, beyond the one projected above, ordered on top of the need and kept while the
            # queue outruns them (not remembered by the hold).
            fast = backlog + (rate - mu * ctx.ready_units) * horizon
            burst = max(0.0, fast - projected) / wait / mu
            if memory is not None and memory.burst > burst:
                burst = memory.burst
            held = max(held, need + burst)
        wake = None
        if settled and service_wake is not None and burst == 0.0:
            hold_wake = _hold_wake(kept, now, hold, flat, held > need, o.hold_decay)
            wake = None if hold_wake is None else min(service_wake, hold_wake)

        rate_text = f"{rate:.2f}/s" if measured is not None else f"{rate:.2f}/s (no fresh reading)"
        if learned is not None:
            mu_text = f"{mu:.3g}/s per replica (learned)"
        else:
            assert self._profiled_text is not None  # mu is the profiled rate
            mu_text = self._profiled_text
        reason = (
            f"queue-sla: backlog {backlog:g}, arrivals ~{rate_text}, {mu_text} -> "
            f"{need:.2f} units for waits <= {self._wait_text}s"
        )
        if horizon > 0:
            reason += f" (looking {horizon:.0f}s ahead: queue ~{projected:.0f}, rate ~{ahead_rate:.2f}/s)"
        if spill:
            reason += "; no climb on a slower pool"
        if burst > 0.0:
            reason += f"; {burst:.2f} units more while the queue outruns the ready replicas"
        elif held > need + 1e-9:
            reason += f"; holding {held:.2f} units, the highest need of the last {self._hold_text}s"
        memo = _Memory(now, rate, slow, trend, kept, service, noise, burst)
        return Recommendation(held, reason, memo, wake)

    def _staffed(self, load: float) -> float:
        """Units for a load of `load` units: with the staffing beta in force
        (`QueueSlaOptions.staffing`), square-root staffing over the requests in service (load *
        concurrencyPerReplica slots); else the load plus the fixed headroom
        (`QueueSlaOptions.spare_share`)."""
        slots = self.options.concurrency_per_replica
        if self._beta is None or slots is None:
            return load * (1.0 + self._spare)
        servers = load * slots
        return (servers + self._beta * math.sqrt(servers)) / slots

    # The memory codec (see `engine.policy`): a new leader resumes the hold window and the smoothed
    # rates of the old one (`engine.statecodec`).

    def dump_memory(self, memory: object) -> object:
        if not isinstance(memory, _Memory):
            return None
        m = memory
        data: dict[str, object] = {
            "at": m.at,
            "rate": m.rate,
            "slow": m.slow,
            "trend": m.trend,
            "needs": [list(n) for n in m.needs],
            "service": None if m.service is None else list(astuple(m.service)),
        }
        if m.noise:  # only with trendSignificance: without it the state is written as before
            data["noise"] = m.noise
        if m.burst:  # only during a burst order: else the state is written as before
            data["burst"] = m.burst
        return data

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
            _load_learned(d.get("service")),
            as_float(d.get("noise", 0.0)),
            as_float(d.get("burst", 0.0)),
        )


def _load_learned(data: object) -> _Learned | None:
    if data is None:
        return None
    if not isinstance(data, list) or len(data) != 5:
        raise StateFormatError(f"{data!r} is not a learned service rate")
    mu, busy_since, ready, busy_units, delivered = data
    return _Learned(
        as_optional_float(mu),
        as_optional_float(busy_since),
        as_float(ready),
        as_optional_float(busy_units),
        as_optional_float(delivered),
    )


def _learn(
    memory: _Memory | None,
    o: QueueSlaOptions,
    backlog: float,
    delivered: float | None,
    in_flight: float | None,
    ready_units: float,
    pool_ready: tuple[int, ...],
    now: float,
) -> tuple[_Learned, float | None]:
    """The service rate of one replica unit, learned from what the broker reports; the same
    information a live deployment has, and no constant from the whole trace.

    - With in-flight requests and the per-replica concurrency (Little's law, at any load): requests
      in service over the ready slots is the busy share of the ready units, and deliveries per
      second over the busy units (both averaged over `_MU_TAU_SECONDS`) is what one unit serves. A
      slow pool's pod has as many slots as a fast one's but serves each request for longer: slots
      are counted per pod, capacity per unit.
    - Else from deliveries alone: over a whole rate window in which requests waited (the backlog
      trigger counts waiting requests) and no replica was added, every ready replica was busy, so
      deliveries / ready units is the rate one unit serves. Otherwise replicas may have idled and the
      ratio is only a lower bound: it can raise the estimate, never lower it.

    With it, until when later calls with the same readings would leave it as it is (as
    `Recommendation.wake_at`): the averages settle on their samples (`_SNAP`), and a busy spell
    becomes a measurement once it lasts a whole rate window."""
    last = memory.service if memory is not None else None
    dt = now - memory.at if memory is not None else 0.0
    mu = last.mu if last is not None else None

    if o.concurrency_per_replica is not None:
        # Ready pods (by pool when the engine gives them), counted only here where they matter.
        ready_pods = float(sum(pool_ready)) if pool_ready else ready_units
        if delivered is None or in_flight is None or ready_pods <= 0:
            return last or _Learned(mu, None, ready_units), math.inf
        slots = o.concurrency_per_replica * ready_pods
        busy_now = busy = max(0.0, in_flight - backlog) / slots * ready_units
        delivered_now = delivered
        if last is not None and last.busy_units is not None and last.delivered is not None:
            keep = _keep(dt)
            busy = _snap(last.busy_units * keep + busy * (1.0 - keep), busy_now)
            delivered = _snap(last.delivered * keep + delivered * (1.0 - keep), delivered_now)
        if busy > 0 and delivered > 0:
            mu = delivered / busy
        settled = busy == busy_now and delivered == delivered_now
        return _Learned(mu, None, ready_units, busy, delivered), (math.inf if settled else None)

    busy_since: float | None = None
    if backlog > 0 and ready_units > 0:
        grew = last is None or last.busy_since is None or ready_units > last.ready + 1e-9
        busy_since = now if grew else last.busy_since  # type: ignore[union-attr]
    if delivered is None or ready_units <= 0:
        learned = _Learned(mu, busy_since, ready_units)
        # Nothing learned and nothing changed (every workload without a delivery trigger, at every
        # reconcile with the same ready capacity): the object of before, not an equal new one.
        return (last if last == learned else learned), math.inf
    saturated = busy_since is not None and now - busy_since >= _RATE_WINDOW_SECONDS
    sample = delivered / ready_units
    if mu is None:
        mu = sample if saturated and sample > 0 else None
    elif saturated or sample > mu:
        mu = _snap(mu + (1.0 - _keep(dt)) * (sample - mu), sample)
    wake: float | None
    if mu == sample or (mu is None and (sample <= 0 or busy_since is None)):
        wake = math.inf  # every later update is a no-op, or none comes
    elif saturated or (mu is not None and sample > mu):
        wake = None  # the next call moves it
    else:
        # Nothing moves it until the busy spell is a measurement (or never, without one).
        wake = math.inf if busy_since is None else busy_since + _RATE_WINDOW_SECONDS
    return _Learned(mu, busy_since, ready_units), wake


def _keep(dt: float) -> float:
    """The share of the learned averages that `dt` seconds since the last call keep."""
    return math.exp(-dt / _MU_TAU_SECONDS) if dt > 0 else 1.0


def _slope_error(noise: float, window: float) -> float:
    """Standard error of a slope fitted by least squares to rate readings of variance `noise` spread
    evenly over `window` seconds: sqrt(noise / sum((t - mean t)^2)), the sum being n * window^2 / 12
    for n readings. Readings closer than the broker's rate window average the same arrivals, so n
    counts one per rate window (at least two: a slope needs two points)."""
    n = max(2.0, window / _RATE_WINDOW_SECONDS)
    return math.sqrt(12.0 * noise / (n * window * window))


def _snap(value: float, target: float) -> float:
    """`value`, or `target` when within `_SNAP` of it (see there)."""
    return target if abs(value - target) <= _SNAP * max(1.0, abs(target)) else value


def _hold_wake(
    kept: tuple[tuple[float, float], ...], now: float, hold: float, flat: float, holding: bool, decay: bool
) -> float | None:
    """Until when the hold gives the same with the same need, and a later call rebuilds the same
    window (as `Recommendation.wake_at`). `holding`: an older, higher need holds the output above the
    need of now. The need of now is recorded again at every call and stays; the highest, oldest
    one holds the output at its value (whole for `flat` seconds, or until it leaves the window
    without decay) and then lets go: the output moves at every call while it decays (None), until
    it is below the need of now (weights only fall with age). The window must never empty between
    two calls, or the next one would count what runs as a need (first sight) where calls close
    together would not: at the latest, wake when the need of now would leave it."""
    wake = kept[-1][0] + hold + _BUCKET_SECONDS if hold > 0 else math.inf
    if not holding:
        return wake
    top_at = kept[0][0]
    if not decay:
        return min(wake, top_at + hold + _BUCKET_SECONDS)
    whole = min(flat, hold)
    if now - top_at > whole:
        return None
    return min(wake, top_at + whole)


def _spills(ctx: PolicyContext) -> bool:
    """New replicas would start on a pool slower to start than the first: it has no room."""
    pools = ctx.workload.pools
    return bool(pools) and ctx.startup_seconds > pools[0].startup_seconds


def _flat_seconds(workload: WorkloadSpec) -> float:
    """How long a need is held whole: the p95 startup of the first pool (its median without a tail)."""
    if not workload.pools:
        return 0.0
    first = workload.pools[0]
    return first.startup_p95_seconds if first.startup_p95_seconds is not None else first.startup_seconds


def _held(needs: tuple[tuple[float, float], ...], now: float, hold: float, flat: float) -> float:
    """The highest need still held: whole for `flat` seconds after its bucket, then a share falling
    linearly to 0 at `hold`. The weight depends on age alone, so a later, higher need outweighs an
    older, lower one at any time: `_outlasting` stays exact."""
    flat = min(flat, hold)
    span = hold - flat
    # The max over the buckets of `need * weight(age)`, as a plain loop (no closure, no generator):
    # this runs for every workload at every reconcile. The weight: 1 within `flat` (within `hold`
    # when nothing decays), then falling linearly to 0 at `hold`. Comparisons as `max` makes them.
    highest = None
    for at, need in needs:
        age = now - at
        if age <= flat or span <= 0:
            weight = 1.0 if age <= hold else 0.0
        else:
            weight = 1.0 - (age - flat) / span
            if not weight > 0.0:
                weight = 0.0
        value = need * weight
        if highest is None or value > highest:
            highest = value
    assert highest is not None  # the window always holds the need of now
    return highest


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
