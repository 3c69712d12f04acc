"""`autoscaler run --dry-run` without a cluster: an in-memory cluster view and a logging actuator.

`DryRunCluster` is both the controller's `ClusterView` and its `Actuator`. It starts every workload
at its `minReplicas` (in replica units, as replicas of its first pool) or, with `--assume-replicas N`,
at N replicas of the first pool, and "applies" each plan to itself: the next snapshot shows the new
sizes, all ready at once (a dry run has no startup delay to model; `autoscaler simulate` does). Each
applied decision is logged as one structured line: the workload, from/to per pool and the reason.
So users can try a policy against their live queues before granting it write access to a cluster.
Callers: `autoscaler run` (`autoscaler.cli`), `benchmarks/reaction.py`, the tests.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscaler.engine.types import (
    ActionResult,
    ClusterSnapshot,
    Outcome,
    Plan,
    PoolStatus,
    ScaleAction,
    WorkloadSpec,
)

log = logging.getLogger("autoscaler.dryrun")


@dataclass(frozen=True)
class Applied:
    """One workload's part of one applied plan, stamped with the cluster's clock."""

    at: float
    workload: str
    actions: tuple[ScaleAction, ...]

    @property
    def scaled_up(self) -> bool:
        return any(a.to_replicas > a.from_replicas for a in self.actions)


def initial_sizes(workloads: Sequence[WorkloadSpec], assume_replicas: int | None = None) -> dict[str, int]:
    """Pool key -> replicas before the first decision: minReplicas (or the assumed count) on each
    workload's first pool, nothing elsewhere."""
    sizes: dict[str, int] = {}
    for workload in workloads:
        first = workload.pools[0]
        if assume_replicas is not None:
            replicas = assume_replicas
        else:
            # minReplicas is in units; a slower first pool needs more replicas to provide them.
            replicas = math.ceil(workload.min_replicas / first.relative_throughput - 1e-9)
        for pool in workload.pools:
            sizes[pool.key] = replicas if pool is first else 0
    return sizes


class DryRunCluster:
    """An in-memory cluster that obeys every plan, and logs it. `history` keeps what was applied."""

    def __init__(
        self,
        workloads: Sequence[WorkloadSpec],
        *,
        assume_replicas: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._assume_replicas = assume_replicas
        self.sizes = initial_sizes(workloads, assume_replicas)
        self.history: list[Applied] = []
        self._clock = clock

    def set_workloads(self, workloads: Sequence[WorkloadSpec]) -> None:
        """After a reload: pools that stay keep their sizes, new ones start as the policies say,
        dropped ones go."""
        fresh = initial_sizes(workloads, self._assume_replicas)
        self.sizes = {key: self.sizes.get(key, n) for key, n in fresh.items()}

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot({key: PoolStatus(n, ready=n) for key, n in self.sizes.items()})

    async def apply(self, plan: Plan) -> list[ActionResult]:
        """Obeys every action; each one's outcome is `dry-run`, since no cluster was written."""
        at = self._clock()
        by_workload: dict[str, list[ScaleAction]] = {}
        for action in plan.actions:
            by_workload.setdefault(action.workload, []).append(action)
            self.sizes[action.pool] = action.to_replicas
        for workload, actions in by_workload.items():
            self.history.append(Applied(at, workload, tuple(actions)))
            log.info(
                "scale (dry run)",
                extra={
                    "fields": {
                        "workload": workload,
                        "pools": {a.pool: {"from": a.from_replicas, "to": a.to_replicas} for a in actions},
                        "reason": actions[0].reason,
                    }
                },
            )
        return [ActionResult(action, Outcome.DRY_RUN) for action in plan.actions]
