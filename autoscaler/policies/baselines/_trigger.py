"""Which trigger a baseline reads: the one its options name, else the workload's first.

Used by `knative_kpa`, which reads a single trigger as Knative does (one concurrency metric).
`keda_hpa` reads the several triggers of a ScaledObject and resolves them itself.
"""

from __future__ import annotations

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import TriggerSpec, WorkloadSpec


def pick_trigger(workload: WorkloadSpec, name: str | None) -> TriggerSpec | None:
    """None when the workload has no such trigger (or none at all); `check` reports it."""
    if name is None:
        return workload.triggers[0] if workload.triggers else None
    for trigger in workload.triggers:
        if trigger.name == name:
            return trigger
    return None


def trigger_read(workload: WorkloadSpec, name: str | None) -> frozenset[str]:
    """`triggers_read` of a baseline that reads the one trigger `name` (or the first)."""
    trigger = pick_trigger(workload, name)
    return frozenset() if trigger is None else frozenset((trigger.name,))


def trigger_problems(workload: WorkloadSpec, name: str | None) -> list[tuple[str, str]]:
    """Cross-checks for `autoscaler validate`, in the (field, message) form of `check`."""
    if pick_trigger(workload, name) is not None:
        return []
    if name is None:
        return [("trigger", "the workload has no trigger to read")]
    known = ", ".join(t.name for t in workload.triggers) or "none"
    return [("trigger", f"no trigger named '{name}' (triggers: {known})")]


def read_trigger(
    ctx: PolicyContext, name: str | None, policy: str, memory: object
) -> tuple[TriggerSpec, float] | Recommendation:
    """The trigger and its valid value, or the no-recommendation to return when either is missing
    (the engine then holds: missing data is never zero)."""
    trigger = pick_trigger(ctx.workload, name)
    if trigger is None:
        return Recommendation(None, f"{policy}: the workload has no such trigger", memory)
    value = ctx.values.get(trigger.name)
    if value is None:
        return Recommendation(None, f"{policy}: trigger '{trigger.name}' has no reading", memory)
    return trigger, value
