"""Pods, as the HPA and Knative count them, against the replica units the engine counts.

An HPA or a KPA sizes a Deployment in pods: to it a SaladCloud pod of relativeThroughput 0.5 is one
pod, like an A100 one, and its min/max replica counts are pods. The engine takes units. Shared by
`keda_hpa` and `knative_kpa`:

- `pods_now` / `ready_pods`: the pods the workload's pools are asked for now, and the ready ones
  (`PolicyContext.pool_replicas`, `pool_ready`).
- `units_for(ctx, pods)`: the units that make the pools hold `pods` pods, the way the engine fills
  them: new pods go to the pools in order, each up to the room it has now (`PolicyContext.pool_room`;
  pods beyond every pool's room count at the last pool's throughput: the engine cannot place them
  either), and scale-in takes pods from the last pool first. The engine settles on whole units, so a
  workload with half-throughput pods may end one pod above the count asked for; that is the
  approximation.

A caller that gives no pool detail (`pool_replicas` empty, as in hand-built contexts) is read as
one pod per unit. Pure. Callers: `keda_hpa`, `knative_kpa`.
"""

from __future__ import annotations

import math

from autoscaler.engine.policy import PolicyContext

# 2.0000000000000004 units (float noise) must mean 2 pods, not 3.
_SLACK = 1e-9


def _detailed(ctx: PolicyContext) -> bool:
    return bool(ctx.pool_replicas) and len(ctx.pool_replicas) == len(ctx.workload.pools)


def pods_now(ctx: PolicyContext) -> int:
    """Pods the pools are asked for now (spec replicas)."""
    if _detailed(ctx):
        return sum(ctx.pool_replicas)
    return max(math.ceil(ctx.current_units - _SLACK), 0)


def ready_pods(ctx: PolicyContext) -> int:
    if _detailed(ctx) and len(ctx.pool_ready) == len(ctx.pool_replicas):
        return sum(ctx.pool_ready)
    return max(math.floor(ctx.ready_units + _SLACK), 0)


def units_for(ctx: PolicyContext, pods: int) -> float:
    """The units that give the workload `pods` pods (see the module docstring)."""
    if not _detailed(ctx):
        return float(pods)
    pools = ctx.workload.pools
    replicas = ctx.pool_replicas
    units = ctx.current_units
    change = pods - sum(replicas)
    if change > 0:
        rooms = ctx.pool_room if len(ctx.pool_room) == len(pools) else (None,) * len(pools)
        for pool, room in zip(pools, rooms, strict=True):
            n = change if room is None else min(change, max(room, 0))
            units += n * pool.relative_throughput
            change -= n
            if change == 0:
                break
        units += change * pools[-1].relative_throughput
    elif change < 0:
        drop = -change
        for pool, have in zip(reversed(pools), reversed(replicas), strict=True):
            n = min(drop, have)
            units -= n * pool.relative_throughput
            drop -= n
            if drop == 0:
                break
    return max(units, 0.0)
