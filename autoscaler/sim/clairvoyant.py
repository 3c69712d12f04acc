"""`clairvoyant`: an offline heuristic that knows the future, not a policy one could run, and not a bound.

It knows the workload's whole future (every arrival time and how many seconds of service each
request takes on a replica of relative throughput 1.0) and is reported beside the other policies of
`autoscaler simulate --policy ...` as a reference. It is no lower bound: online policies beat it on
both GPU-hours and the share within the SLA at some SLAs (issue 10); the bound is
`sim.report.work_floor`.

At time t it asks for

    capacity(t) = max over u in [t, t + S] of  work arriving in [u, u + W)  /  (W x concurrency)

replica units, where W is the SLA, S the startup time of the workload's first pool and concurrency
the requests one replica serves at once. Capacity ordered at t is ready at t + S, so asking now for
the largest need of the next S seconds puts every window's capacity in place one startup ahead and
keeps it until that window has begun; each window's capacity is sized to finish the work arriving in
it within W seconds. Assumptions, stated so nobody mistakes it for a policy:
- perfect knowledge of arrivals and service times (a real policy sees neither in advance);
- every replica starts in exactly S seconds (the simulated cluster samples startups with a tail, and
  replicas that spill to a slower-starting virtual pool arrive late, so the run can miss the SLA
  where the heuristic assumed it met it);
- no queueing effects inside a window: work is fluid, spread evenly over the window's slots, so a
  request longer than W or a burst at the window's end is not accounted for; a window's work is only
  counted against its own window, and capacity is released as soon as no window needs it.
So the run it gives is optimistic about waits as well as cost; the GPU-hours it reports are what the
comparison uses. It sets `owns_behavior` (its answer must not be smoothed) and keeps no memory.

Each call is O(log n): prefix sums of service work give the work of any window from two bisections,
and the maximum over the windows starting at arrivals in [t, t + S] comes from a sparse table (range
maximum in O(1)); see `capacity`. Built in code by `sim.presets` (it needs the trace), never from a
policy file. Callers: `sim.presets`, the tests.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.sim.cluster import WorkloadModel
from autoscaler.sim.trace import FloatArray


class ClairvoyantOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sla_seconds: float = Field(30.0, gt=0, alias="slaSeconds", description="W: each window's work ends in it")
    startup_seconds: float = Field(
        0.0, ge=0, alias="startupSeconds", description="S: capacity starts this early"
    )
    concurrency: int = Field(1, ge=1, description="requests one replica serves at once")


class ClairvoyantPolicy:
    name: ClassVar[str] = "clairvoyant"
    Options: ClassVar[type[BaseModel]] = ClairvoyantOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(
        self, options: ClairvoyantOptions, arrivals: FloatArray, service_seconds: FloatArray
    ) -> None:
        """`arrivals` sorted (seconds), `service_seconds` per request on a replica of throughput 1.0."""
        if arrivals.shape != service_seconds.shape:
            raise ValueError("arrivals and service_seconds must have one entry per request")
        if arrivals.size > 1 and bool(np.any(np.diff(arrivals) < 0)):
            raise ValueError("arrivals must be sorted")
        self.options = options
        w = options.sla_seconds
        self._scale = 1.0 / (w * options.concurrency)
        arr = np.asarray(arrivals, dtype=np.float64)
        prefix = np.concatenate(([0.0], np.cumsum(np.asarray(service_seconds, dtype=np.float64))))
        # Work of the window [a_i, a_i + W) that starts at each arrival (duplicates included in full).
        starts = np.searchsorted(arr, arr, side="left")
        ends = np.searchsorted(arr, arr + w, side="left")
        window_work = prefix[ends] - prefix[starts]
        # Python lists: bisect and indexing on them beat numpy's per-call overhead for one scalar.
        self._arrivals: list[float] = arr.tolist()
        self._prefix: list[float] = prefix.tolist()
        self._table = _sparse_table(window_work)

    @classmethod
    def for_workload(
        cls, model: WorkloadModel, sla_seconds: float, startup_seconds: float
    ) -> ClairvoyantPolicy:
        """The clairvoyant run for one simulated workload: its trace, service model and concurrency."""
        trace = model.trace
        service = model.service.seconds(trace.context_tokens, trace.generated_tokens)
        options = ClairvoyantOptions(
            sla_seconds=sla_seconds, startup_seconds=startup_seconds, concurrency=model.concurrency
        )
        return cls(options, trace.arrival, service)

    def _work(self, start: float, end: float) -> float:
        """Service seconds of the requests arriving in [start, end)."""
        return (
            self._prefix[bisect_left(self._arrivals, end)] - self._prefix[bisect_left(self._arrivals, start)]
        )

    def capacity(self, t: float) -> float:
        """Replica units to ask for at `t` (see the module docstring).

        The work of [u, u + W) changes with u only at events: it drops just after u passes an arrival
        and grows when u + W passes one. Between two drops it only grows, so its maximum over
        [t, t + S] is at an arrival inside [t, t + S] (just before that arrival leaves) or at t + S.
        """
        o = self.options
        end = t + o.startup_seconds
        best = self._work(end, end + o.sla_seconds)
        lo = bisect_left(self._arrivals, t)
        hi = bisect_right(self._arrivals, end) - 1
        if lo <= hi:
            best = max(best, _range_max(self._table, lo, hi))
        return best * self._scale

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        units = self.capacity(ctx.now)
        return Recommendation(
            units,
            f"clairvoyant: the work arriving in the next {o.startup_seconds:g}s + {o.sla_seconds:g}s needs"
            f" {units:.2f} units to finish each {o.sla_seconds:g}s window within it (offline heuristic)",
        )


def _sparse_table(values: FloatArray) -> list[list[float]]:
    """table[k][i] = max(values[i : i + 2**k]); O(n log n) to build, O(1) per range query."""
    table = [values.tolist()]
    level = values
    width = 1
    while 2 * width <= values.size:
        level = np.maximum(level[:-width], level[width:])
        table.append(level.tolist())
        width *= 2
    return table


def _range_max(table: list[list[float]], lo: int, hi: int) -> float:
    """max(values[lo : hi + 1]) for lo <= hi."""
    k = (hi - lo + 1).bit_length() - 1
    row = table[k]
    return max(row[lo], row[hi - (1 << k) + 1])
