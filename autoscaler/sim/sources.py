"""Trigger readings in simulation: what each workload's triggers would read from RabbitMQ right now.

The live controller reads these from `sources/` over the network; here they come from the simulated
queue. Only RabbitMQ triggers are simulated, with KEDA's meanings:
  mode QueueLength, protocol amqp: messages ready in the queue (a passive declare does not count
                                   unacknowledged ones), i.e. requests waiting;
  mode QueueLength, protocol http: `messages` of the management API, ready + unacknowledged, i.e.
                                   requests waiting or in service (waiting only with
                                   excludeUnacknowledged);
  mode MessageRate:                the publish rate, requests arrived per second over the trailing 10 s;
  mode DeliverGetRate:             the delivery rate, requests handed to replicas per second over the
                                   trailing 10 s.
Anything else is refused when the scenario is built (`build_sources`), naming workload and trigger,
rather than read as some made-up value. A scenario may make a trigger fail between two times, to
show the engine's fallback. Callers: `sim.scenario` (building) and `sim.runner` (reading every tick).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoscaler.config.compile import trigger_options
from autoscaler.config.models import RabbitMQOptions
from autoscaler.engine.types import Reading, TriggerSpec, WorkloadSpec
from autoscaler.sim.cluster import SimCluster
from autoscaler.sim.trace import FloatArray

# RabbitMQ's management API averages rates over its sample window; 10 s is what `publish_details.rate`
# reflects with default collection settings.
RATE_WINDOW_SECONDS = 10.0

# The modes simulated here; a mode the policy files gain later is refused until it is simulated.
MODES = ("QueueLength", "MessageRate", "DeliverGetRate")


class SourceError(ValueError):
    """Triggers the simulator cannot read; each of `problems` names its workload and trigger."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class TriggerOutage:
    """Reads of `trigger` of `workload` fail from `start` (inclusive) to `end` (exclusive)."""

    workload: str
    trigger: str
    start: float
    end: float


Read = Callable[[SimCluster, float], float]


class _UnsupportedError(ValueError):
    """One trigger the simulator cannot read; `build_sources` collects them into a SourceError."""


def _reader(workload: str, trigger: TriggerSpec, arrivals: FloatArray) -> Read:
    where = f"workload {workload}, trigger {trigger.name}"
    if trigger.type != "rabbitmq":
        raise _UnsupportedError(
            f"{where}: type {trigger.type} is not simulated (the simulator reads rabbitmq triggers "
            "only); use policy files without it for the simulation"
        )
    options = trigger_options(trigger, RabbitMQOptions)
    mode = options.mode
    if mode not in MODES:
        raise _UnsupportedError(
            f"{where}: rabbitmq mode {mode} is not simulated (simulated: {', '.join(MODES)})"
        )
    if mode == "MessageRate":

        def rate(cluster: SimCluster, now: float) -> float:
            arrived = np.searchsorted(arrivals, now, side="right")
            before = np.searchsorted(arrivals, now - RATE_WINDOW_SECONDS, side="right")
            return float(arrived - before) / RATE_WINDOW_SECONDS

        return rate
    if mode == "DeliverGetRate":
        return lambda cluster, now: (
            cluster.delivered_since(workload, now - RATE_WINDOW_SECONDS) / RATE_WINDOW_SECONDS
        )
    if options.protocol == "http" and not options.exclude_unacknowledged:
        return lambda cluster, now: float(cluster.waiting(workload) + cluster.in_service(workload))
    return lambda cluster, now: float(cluster.waiting(workload))


class Sources:
    """Every trigger of every workload, read against the simulated cluster."""

    def __init__(
        self,
        readers: Mapping[str, Mapping[str, Read]],
        outages: Sequence[TriggerOutage] = (),
    ) -> None:
        self._readers = readers
        self._outages = tuple(outages)

    def read(self, cluster: SimCluster, now: float) -> dict[str, dict[str, Reading]]:
        readings: dict[str, dict[str, Reading]] = {}
        for workload, triggers in self._readers.items():
            readings[workload] = {}
            for name, read in triggers.items():
                if any(
                    o.workload == workload and o.trigger == name and o.start <= now < o.end
                    for o in self._outages
                ):
                    readings[workload][name] = Reading(None, now, "simulated outage")
                else:
                    readings[workload][name] = Reading(read(cluster, now), now)
        return readings


def build_sources(
    workloads: Sequence[WorkloadSpec],
    arrivals: Mapping[str, FloatArray],
    outages: Sequence[TriggerOutage] = (),
) -> Sources:
    """Raises SourceError listing every trigger or outage the simulator cannot honour."""
    readers: dict[str, dict[str, Read]] = {}
    problems: list[str] = []
    for w in workloads:
        readers[w.name] = {}
        for t in w.triggers:
            try:
                readers[w.name][t.name] = _reader(w.name, t, arrivals[w.name])
            except _UnsupportedError as exc:
                problems.append(str(exc))
    names = {w.name: {t.name for t in w.triggers} for w in workloads}
    problems += [
        f"trigger outage: workload {o.workload} has no trigger {o.trigger}"
        for o in outages
        if o.trigger not in names.get(o.workload, set())
    ]
    if problems:
        raise SourceError(problems)
    return Sources(readers, outages)
