"""The contract between the engine and a scaling policy.

A policy turns the current readings of one workload into a recommended capacity in replica units.
It is pure: everything it may look at is in `PolicyContext`, and anything it wants to remember
until the next call goes back in `Recommendation.memory`. Built-in and third-party policies live in
`autoscaler.policies`; the engine only knows this Protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from autoscaler.engine.types import WorkloadSpec


@dataclass(frozen=True, slots=True)
class PolicyContext:
    workload: WorkloadSpec
    # Valid readings only, by trigger name. A failed trigger is in `failed`, never here as 0.
    values: Mapping[str, float]
    failed: frozenset[str]
    # Capacity the pools are asked for now, and the part of it that is ready, in replica units.
    current_units: float
    ready_units: float
    # Startup time (median, seconds) of the pool new replicas would go to first.
    startup_seconds: float
    now: float
    memory: object = None
    # Pods per pool of `workload.pools`, in that order: asked for now, and ready. For controllers that
    # count pods rather than capacity (the HPA, Knative's KPA); empty when the caller gives none.
    pool_replicas: tuple[int, ...] = ()
    pool_ready: tuple[int, ...] = ()
    # New pods each pool could take now as far as this workload can tell: its maxReplicas, a pause or
    # a pending-timeout block, the free GPUs of regular nodes less its own unscheduled pods. None: no
    # bound known. Caps shared with other workloads are the limits stage's and not counted here.
    pool_room: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class Recommendation:
    """`units is None`: the policy cannot tell (its inputs failed); the engine then holds."""

    units: float | None
    reason: str
    memory: object = None


@runtime_checkable
class Policy(Protocol):
    """What the registry builds from a policy file's `policy:` block."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    # A policy may also set `owns_behavior: ClassVar[bool] = True` when it emulates a controller's
    # own smoothing and rate limits (the KEDA + HPA baseline); the behavior stage then passes its
    # recommendation through (see BehaviorSpec.passthrough).
    #
    # A policy may also define `triggers_read(self, workload) -> frozenset[str] | None`: the triggers
    # its recommendation depends on (None, or no such method: all of them). Only those triggers can
    # hold the workload when they fail or make it active: a trigger kept for dashboards only (a TTFT
    # query beside a queue policy) must not freeze scaling while its exporter is down.
    #
    # A policy that keeps `Recommendation.memory` may also define the optional pair
    # `dump_memory(memory) -> JSON-able` and `load_memory(data) -> memory` (raising on data it did not
    # write), so that a new leader resumes with the old leader's memory (`engine.statecodec`); without
    # them its memory is not carried over and the policy starts fresh in the new leader, which the
    # controller logs.

    def recommend(self, ctx: PolicyContext) -> Recommendation: ...


def triggers_read(policy: object, workload: WorkloadSpec) -> frozenset[str] | None:
    """The triggers `policy` says its recommendation depends on; None: all of them (also when the
    policy does not say, or its answer is broken: then every trigger counts, the safe side)."""
    method = getattr(policy, "triggers_read", None)
    if method is None:
        return None
    try:
        names = method(workload)
    except Exception:  # a third-party policy's bug: fall back to "reads everything"
        return None
    return None if names is None else frozenset(names)
