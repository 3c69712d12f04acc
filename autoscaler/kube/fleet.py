"""Several clusters under one company GPU budget: one watch cache, cluster view and actuator per
member cluster (built by the same code as for one cluster), seen by the controller as one
`ClusterView` and one `Actuator`.

Role: merge the members' snapshots into the one `ClusterSnapshot` the engine decides on, and send
each action of a plan to the cluster of its pool. Callers: the live wiring (`autoscaler.live`) when
the settings name member clusters (`Settings.clusters`); with the home cluster alone it uses the
member's own view and actuator, as before. Also the source of each cluster's reachability for
metrics and /readyz (`health`).

Pool keys. The engine, its state, plans and metrics name a pool `namespace/deployment`, not by
cluster. The policy files already refuse two pools with the same `namespace/deployment`, whatever
their clusters (`config.compile`: "Deployment ... is already managed by ..."), so keys never
collide across clusters and nothing downstream had to change: the same Deployment name in two
clusters is two pools, and they need two names (typically the GPU type in the name, as pools are
per GPU type anyway). `set_pools` checks it again and refuses a collision rather than merge two
pools into one.

A member whose cache cannot reach its API server (`KubeCache.down_since`) is reported in
`ClusterSnapshot.unreachable`: its pools come in as last seen (spec, pending and terminating pods:
they keep counting against the company cap), the engine holds them as if paused and says so, its
free GPUs are left out (unknown), and nothing is written there (an action that raced the outage
fails here without a request). When the watches work again the cache has relisted or resumed, and
the next reconcile (woken by the change) decides for it again. Each change is logged once.

Writes go in one order across all clusters (`actuator.apply_in_order`): every scale-down before any
scale-up, and no scale-up anywhere after a scale-down that did not happen, since the company cap
spans the clusters. One Lease in the home cluster decides who writes, for every member.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from autoscaler.engine.types import (
    ActionResult,
    ClusterSnapshot,
    Outcome,
    Plan,
    PoolSpec,
    PoolStatus,
    ScaleAction,
    UnmanagedPool,
)
from autoscaler.kube.actuator import KubeActuator, apply_in_order
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.view import KubeClusterView

log = logging.getLogger(__name__)

# A pool in a cluster that is not a member: nothing can be read or written there.
_NOWHERE = PoolStatus(spec_replicas=0, paused=True)


@dataclass
class Member:
    """One managed cluster: its name (what policy files call it) and its live parts."""

    name: str
    cache: KubeCache
    view: KubeClusterView
    actuator: KubeActuator


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """A member as the metrics and /readyz report it. `age_seconds`: since the cache last heard
    from the API server on every collection (None: never)."""

    name: str
    down_since: float | None
    age_seconds: float | None

    @property
    def up(self) -> bool:
        return self.down_since is None


class Fleet:
    """The member clusters as one cluster view and one actuator. See the module doc."""

    def __init__(
        self,
        members: Sequence[Member],
        pools: Iterable[PoolSpec] = (),
        *,
        clock: Callable[[], float] = time.time,
        on_reachability: Callable[[str, bool], None] | None = None,
    ) -> None:
        if not members:
            raise ValueError("a fleet needs at least one member cluster")
        # Told (cluster, up) at each change, after the log line: `live` posts an Event for it.
        self.on_reachability = on_reachability
        self.members = tuple(members)
        self._by_name = {m.name: m for m in self.members}
        self._clock = clock
        self._route: dict[str, Member] = {}
        self._nowhere: tuple[str, ...] = ()
        self._nowhere_reported: set[str] = set()
        for member in self.members:
            member.cache.add_health_listener(self._logger(member))
        self.set_pools(pools)

    @property
    def home(self) -> Member:
        return self.members[0]

    def set_pools(self, pools: Iterable[PoolSpec]) -> None:
        """Each member gets the pools of its cluster; pools of clusters that are no member are
        reported paused at zero (and logged once), so the engine plans nothing for them."""
        mine: dict[str, list[PoolSpec]] = {m.name: [] for m in self.members}
        route: dict[str, Member] = {}
        nowhere: list[str] = []
        for pool in pools:
            member = self._by_name.get(pool.cluster)
            if pool.key in route or pool.key in nowhere:
                raise ValueError(f"two pools manage the Deployment {pool.key}")
            if member is None:
                nowhere.append(pool.key)
                if pool.key not in self._nowhere_reported:
                    self._nowhere_reported.add(pool.key)
                    log.warning(
                        "pool %s is in cluster %s, which is not among the member clusters (%s): held at 0",
                        pool.key,
                        pool.cluster,
                        ", ".join(self._by_name),
                    )
                continue
            mine[member.name].append(pool)
            route[pool.key] = member
        for member in self.members:
            member.view.set_pools(mine[member.name])
        self._route = route
        self._nowhere = tuple(nowhere)

    # ---- ClusterView ---------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        pools: dict[str, PoolStatus] = {}
        free: dict[tuple[str, str], int] = {}
        unmanaged: list[UnmanagedPool] = []
        unreachable: dict[str, float] = {}
        for member in self.members:
            seen = member.view.snapshot()
            pools.update(seen.pools)
            unmanaged.extend(seen.unmanaged)
            down = member.cache.down_since
            if down is None:
                free.update(seen.free_gpus)
            else:
                unreachable[member.name] = down
        for key in self._nowhere:
            pools[key] = _NOWHERE
        return ClusterSnapshot(pools, free, tuple(unmanaged), unreachable=unreachable)

    # ---- Actuator ------------------------------------------------------------------------------

    async def apply(self, plan: Plan) -> list[ActionResult]:
        return await apply_in_order(plan.actions, self._apply_one)

    async def _apply_one(self, action: ScaleAction) -> ActionResult:
        member = self._route.get(action.pool)
        if member is None:
            return ActionResult(action, Outcome.FAILED, "its cluster is not among the member clusters")
        if member.cache.down_since is not None:
            return ActionResult(action, Outcome.FAILED, f"cluster {member.name} unreachable")
        return await member.actuator.apply_one(action)

    # ---- reachability --------------------------------------------------------------------------

    def health(self) -> tuple[ClusterHealth, ...]:
        now = self._clock()
        return tuple(
            ClusterHealth(
                m.name,
                m.cache.down_since,
                None if (heard := m.cache.last_heard) is None else max(0.0, now - heard),
            )
            for m in self.members
        )

    def _tell(self, cluster: str, up: bool) -> None:
        if self.on_reachability is None:
            return
        try:
            self.on_reachability(cluster, up)
        except Exception as exc:  # a listener's bug must not break the watch that called us
            log.warning("the reachability listener failed: %s", exc)

    def _logger(self, member: Member) -> Callable[[bool], None]:
        def changed(up: bool) -> None:
            if up:
                log.info(
                    "cluster %s reachable again: its watches resumed, scaling there resumes",
                    member.name,
                    extra={"fields": {"cluster": member.name}},
                )
                self._tell(member.name, True)
            else:
                log.warning(
                    "cluster %s unreachable: its pools hold, their last known GPUs keep counting "
                    "against the company cap, nothing is written there",
                    member.name,
                    extra={"fields": {"cluster": member.name, "since": member.cache.down_since}},
                )
                self._tell(member.name, False)

        return changed
