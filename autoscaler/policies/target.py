"""`target`: the KEDA/HPA policy. Each trigger has a target per replica (AverageValue) or for the
whole workload (Value); the workload needs the most any trigger asks for.

The HPA tolerance is kept (no change while usage/target is within 10 % of the current size) so that
users moving from KEDA see the same sizes. Registered in `policies.registry`.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import MetricType


class TargetOptions(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    tolerance: float = Field(0.1, ge=0.0, lt=1.0, description="HPA tolerance around the target")


class TargetPolicy:
    name: ClassVar[str] = "target"
    Options: ClassVar[type[BaseModel]] = TargetOptions
    reads_pool_room: ClassVar[bool] = False  # see `Policy`

    def __init__(self, options: TargetOptions) -> None:
        self.tolerance = options.tolerance

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        best: float | None = None
        why = ""
        current = ctx.current_units
        for trigger in ctx.workload.triggers:
            usage = ctx.values.get(trigger.name)
            if usage is None:
                continue
            if trigger.metric_type is MetricType.AVERAGE_VALUE:
                ratio = usage / (trigger.target * current) if current > 0 else None
                units = usage / trigger.target
            else:
                # Value targets scale the ready size by usage/target (HPA); from zero, usage/target.
                ratio = usage / trigger.target
                units = ratio * ctx.ready_units if ctx.ready_units > 0 else ratio
            if ratio is not None and abs(ratio - 1.0) <= self.tolerance:
                units = current
            if best is None or units > best:
                best = units
                kind = trigger.metric_type.value
                why = f"{trigger.name}={usage:g} against target {trigger.target:g} ({kind})"
        # No memory and no clock: only a change of input changes the answer.
        if best is None:
            return Recommendation(None, "target: no valid reading", wake_at=math.inf)
        return Recommendation(best, f"target: {why} -> {best:.2f} units", wake_at=math.inf)
