"""The contract between the engine and a scaling policy.

A policy turns the current readings of one workload into a recommended capacity in replica units.
It is pure: everything it may look at is in `PolicyContext`, and anything it wants to remember
until the next call goes back in `Recommendation.memory`. Built-in and third-party policies live in
`autoscaler.policies`; the engine only knows the `Policy` Protocol.

The three types are defined in `engine.types`, beside the `WorkloadSpec` that holds a policy and
that a `PolicyContext` carries (one module, so the two do not import each other); this module is
where policies import them from, with the helpers the engine uses on any policy.
"""

from __future__ import annotations

from autoscaler.engine.types import Policy, PolicyContext, Recommendation, WorkloadSpec

__all__ = ["Policy", "PolicyContext", "Recommendation", "reads_pool_room", "triggers_read"]


def reads_pool_room(policy: object) -> bool:
    """Whether `policy` may look at `PolicyContext.pool_room` (see `Policy`): True unless it says
    otherwise with a bool, the safe side."""
    says = getattr(policy, "reads_pool_room", True)
    return says if isinstance(says, bool) else True


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
