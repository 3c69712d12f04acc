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
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    replicas: int = Field(..., ge=0, le=10_000, description="replica units, always; 0 to 10000")


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
