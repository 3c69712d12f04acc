"""`static`: always the same capacity, whatever the load.

The simulator's `static-peak` baseline (`sim.presets` sizes it for the trace's peak minute): the cost
of never scaling, against which autoscaling has to earn its keep. `owns_behavior` so that nothing in
the engine's behavior stage (activation, cooldown to zero) moves it; only min/max apply.
Callers: the engine through `policies.registry`; `sim.presets`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import WorkloadSpec


class StaticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    replicas: int = Field(..., ge=0, description="replica units, always")


class StaticPolicy:
    name: ClassVar[str] = "static"
    Options: ClassVar[type[BaseModel]] = StaticOptions
    owns_behavior: ClassVar[bool] = True

    def __init__(self, options: StaticOptions) -> None:
        self.options = options
        # Built once: the engine asks every second and the answer never changes.
        self._recommendation = Recommendation(float(options.replicas), f"static: {options.replicas} units")

    def triggers_read(self, workload: WorkloadSpec) -> frozenset[str]:
        return frozenset()  # the same answer whatever any trigger says

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        return self._recommendation
