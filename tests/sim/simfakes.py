"""Hand-written fakes and builders for the simulator tests.

`Scripted` stands in for `engine.reconcile`: it sets pool sizes at given times and records each call,
so the cluster tests pin the simulator's behaviour rather than the engine's decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from autoscaler.engine.types import (
    ClusterSnapshot,
    Decision,
    EngineState,
    Limits,
    NodeClass,
    Plan,
    PoolSpec,
    Reading,
    ScaleAction,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.sim.cluster import ServiceModel, WorkloadModel
from autoscaler.sim.trace import Trace
from tests import factories


class NoPolicy:
    """Never consulted: the scripted decide function does not call policies."""

    name: ClassVar[str] = "none"

    def recommend(self, ctx: Any) -> Any:
        raise AssertionError("the scripted decide function must not consult a policy")


@dataclass
class Call:
    now: float
    snapshot: ClusterSnapshot
    readings: Mapping[str, Mapping[str, Reading]]


@dataclass
class Scripted:
    """Sets pools to the given sizes at the first tick at or after each time."""

    script: Mapping[float, Mapping[str, int]]
    calls: list[Call] = field(default_factory=list)

    def __call__(
        self,
        workloads: Sequence[WorkloadSpec],
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        state: EngineState,
        limits: Limits,
        now: float,
    ) -> tuple[Plan, EngineState]:
        self.calls.append(Call(now, snapshot, readings))
        owner = {p.key: w.name for w in workloads for p in w.pools}
        due = [sizes for at, sizes in sorted(self.script.items()) if at <= now]
        targets = {key: status.spec_replicas for key, status in snapshot.pools.items()}
        actions = []
        if due:
            for key, n in due[-1].items():
                if targets[key] != n:
                    actions.append(ScaleAction(key, owner[key], targets[key], n, "scripted"))
                    targets[key] = n
        actions.sort(key=lambda a: not a.is_scale_down)
        decisions = {
            w.name: Decision(
                workload=w.name,
                at=now,
                recommended_units=None,
                desired_units=sum(targets[p.key] for p in w.pools),
                granted_units=float(sum(targets[p.key] for p in w.pools)),
                targets={p.key: targets[p.key] for p in w.pools},
                steps=("scripted",),
            )
            for w in workloads
        }
        return Plan(tuple(actions), decisions), state


def pool(
    name: str,
    node_class: NodeClass = NodeClass.REGULAR,
    *,
    startup: float = 10.0,
    p95: float | None = None,
    gpus: int = 1,
    cost: float = 2.0,
    throughput: float = 1.0,
    provider: str | None = None,
    gpu_type: str = "A100",
) -> PoolSpec:
    """A pool in namespace `inference` of cluster `sim`. Regular pools start in exactly `startup`
    seconds unless `p95` says otherwise, so tests can name the instant a replica is ready."""
    virtual = node_class is NodeClass.VIRTUAL
    spec = factories.pool(
        name,
        virtual=virtual,
        gpu=gpu_type,
        cluster="sim",
        gpus=gpus,
        cost=cost,
        startup=startup,
        thr=throughput,
        provider=provider,
        namespace="inference",
    )
    return replace(spec, startup_p95_seconds=p95 if p95 is not None or virtual else startup)


def trace(arrivals: Sequence[float], name: str = "t") -> Trace:
    n = len(arrivals)
    return Trace(
        name,
        np.asarray(arrivals, dtype=np.float64),
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
    )


def constant_service(seconds: float) -> ServiceModel:
    return ServiceModel(base_seconds=seconds, prefill_seconds_per_token=0.0, decode_seconds_per_token=0.0)


def model(
    name: str,
    pools: Sequence[PoolSpec],
    arrivals: Sequence[float],
    *,
    service: float = 1.0,
    concurrency: int = 1,
) -> WorkloadModel:
    return WorkloadModel(name, tuple(pools), trace(arrivals, name), constant_service(service), concurrency)


def spec(name: str, pools: Sequence[PoolSpec], triggers: Sequence[TriggerSpec] = ()) -> WorkloadSpec:
    return factories.workload(name, tuple(pools), triggers=tuple(triggers), policy=NoPolicy())
