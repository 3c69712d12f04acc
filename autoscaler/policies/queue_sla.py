"""`queue-sla`: size capacity so that queued work waits at most `maxWaitSeconds`.

Capacity must serve the arrival rate and also drain the backlog within the SLA. New replicas help
only after the pool's startup time, so the backlog is projected that far ahead at the current
capacity: a replica ordered now must be sized for the queue it will find when it is ready.
Registered in `policies.registry`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.types import WorkloadSpec


class QueueSlaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_wait_seconds: float = Field(30.0, gt=0, alias="maxWaitSeconds")
    backlog_trigger: str = Field(
        "backlog", alias="backlogTrigger", description="trigger reading queue length"
    )
    rate_trigger: str | None = Field(
        None, alias="rateTrigger", description="trigger reading the arrival rate (messages/s)"
    )
    service_rate_per_replica: float = Field(
        ..., gt=0, alias="serviceRatePerReplica", description="requests/s one replica unit completes"
    )
    headroom: float = Field(0.1, ge=0, le=5, description="extra capacity as a fraction of the need")
    lookahead: bool = Field(True, description="project the backlog over the startup time")


class QueueSlaPolicy:
    name: ClassVar[str] = "queue-sla"
    Options: ClassVar[type[BaseModel]] = QueueSlaOptions

    def __init__(self, options: QueueSlaOptions) -> None:
        self.options = options

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
        return problems

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        o = self.options
        backlog = ctx.values.get(o.backlog_trigger)
        if backlog is None:
            return Recommendation(None, f"queue-sla: backlog trigger '{o.backlog_trigger}' has no reading")
        rate = ctx.values.get(o.rate_trigger) if o.rate_trigger else None
        # Without a rate reading the backlog alone gives a lower bound; the behavior stage will not
        # scale down on partial data, so this can only err towards keeping capacity.
        arrivals = rate if rate is not None else 0.0
        mu = o.service_rate_per_replica
        horizon = ctx.startup_seconds if o.lookahead else 0.0
        projected = max(0.0, backlog + (arrivals - mu * ctx.current_units) * horizon)
        need = max(arrivals + backlog / o.max_wait_seconds, arrivals + projected / o.max_wait_seconds) / mu
        units = need * (1.0 + o.headroom)
        rate_text = f"{arrivals:.2f}/s" if rate is not None else "unknown"
        return Recommendation(
            units,
            f"queue-sla: backlog {backlog:g}, arrivals {rate_text}, {mu:g}/s per replica, "
            f"backlog in {horizon:.0f}s ~{projected:.0f} -> {units:.2f} units "
            f"for waits <= {o.max_wait_seconds:g}s",
        )
