"""Idle-first scale-in: rank a pool's pods by load and set their `pod-deletion-cost` just before the
scale-down write, so that the ReplicaSet removes the idlest replicas first.

Role: the engine decides how many replicas a pool loses and stays pure; which pods go is the
ReplicaSet controller's choice, which it makes by `ActivePodsWithRanks`: unscheduled pods first,
then Pending < Unknown < Running, not ready before ready, then lower
`controller.kubernetes.io/pod-deletion-cost` first, then the most recently ready. So among ready
pods the annotation decides, and this module writes it. Caller: `KubeActuator.apply_one`, for a
scale-down of a pool whose workload has `spec.scaleIn.podLoad`, after every check that could skip
the write and before the write.

Rules:
- Only the pods of the pool being scaled in are patched: the cache's pods owned (through their
  ReplicaSet) by that Deployment, in its namespace, never another Deployment's.
- Only the ready, running pods are ranked: the others go first whatever their cost. When they alone
  cover the scale-in, nothing is read or written.
- The costs are the dense rank of the load (idlest 0, equal loads equal cost, so the controller's
  own order breaks ties); a pod already carrying its cost is not patched again.
- Missing data never reads as zero: a failed query, or a ready pod with no value, falls back to the
  default order, and the annotations this feature set before are taken off those pods (a cost from
  an older ranking is a stale reading too). The fallback is said in the log and in the action's
  detail, which the decision log shows.
- Bounded: reading and patching together get the reader's `budget_seconds` (2 s by default); when
  they run out, the scale-down is written anyway, with the pods patched so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from autoscaler.engine.types import ScaleAction
from autoscaler.kube.cache import KubeCache, read_json
from autoscaler.kube.objects import DELETION_COST_ANNOTATION, DeploymentInfo, PodInfo

log = logging.getLogger(__name__)

# Patches in flight at once: a pool of a few dozen pods is annotated in a couple of round trips
# without a burst that could trip the API server's priority and fairness limits.
PATCH_CONCURRENCY = 8
# Pods named in a detail at most (it goes to the log, the decision log and `explain`).
NAMED_PODS = 5


class PodLoadReader(Protocol):
    """The load of each pod, for one workload (`sources.podload` implements it)."""

    @property
    def budget_seconds(self) -> float: ...

    async def read(self, namespace: str, pods: Sequence[str]) -> Mapping[str, float]:
        """Load by pod name, for those of `pods` that have a value; raises with a message saying
        why when there is no reading at all (the message holds no credential)."""
        ...


# Pool key -> the reader of its workload's pod load, None when idle-first is off for it.
PodLoadLookup = Callable[[str], PodLoadReader | None]


def deletion_costs(loads: Mapping[str, float]) -> dict[str, int]:
    """Pod -> its deletion cost: the dense rank of its load, idlest 0."""
    ranks = {load: rank for rank, load in enumerate(sorted(set(loads.values())))}
    return {pod: ranks[load] for pod, load in loads.items()}


class IdleFirst:
    def __init__(
        self, api: client.ApiClient, cache: KubeCache, lookup: PodLoadLookup, field_manager: str
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.cache = cache
        self.lookup = lookup
        self.field_manager = field_manager

    async def prepare(self, action: ScaleAction, dep: DeploymentInfo, leading: Callable[[], bool]) -> str:
        """Annotate the pods of `dep` for the scale-down `action`; what was done, for the action's
        detail ("" when idle-first is off for the pool or had nothing to do). Never raises for
        anything the API server or Prometheus can do; `leading` is checked before any patch."""
        reader = self.lookup(action.pool)
        if reader is None or action.to_replicas >= action.from_replicas:
            return ""
        pods = [
            p
            for p in self.cache.pods_of(action.pool)
            if p.namespace == dep.namespace
            and p.deployment == dep.name
            and not p.terminal
            and p.deleted is None
        ]
        ranked = [p for p in pods if p.bound and p.phase == "Running" and p.ready]
        going = len(pods) - action.to_replicas
        first = len(pods) - len(ranked)
        if going <= 0 or going >= len(pods) or first >= going:
            return ""  # every pod goes, none does, or the ones not ready cover it: no choice to make
        job = _Job(self._core, self.field_manager, dep, leading)
        budget = reader.budget_seconds
        try:
            async with asyncio.timeout(budget):
                note = await job.rank(reader, ranked, going - first)
        except TimeoutError:
            note = (
                f"idle-first: not done within {budget:g}s ({job.patched} of {job.planned} pod(s) "
                "annotated); the ReplicaSet's default order decides the rest"
            )
        level = logging.INFO if note.startswith("idle-first: the idlest") else logging.WARNING
        log.log(level, "%s %d->%d: %s", action.pool, action.from_replicas, action.to_replicas, note)
        return note


class _Job:
    """The ranking and annotating for one scale-in of one Deployment."""

    def __init__(
        self, core: client.CoreV1Api, field_manager: str, dep: DeploymentInfo, leading: Callable[[], bool]
    ) -> None:
        self.core, self.field_manager, self.dep, self.leading = core, field_manager, dep, leading
        # How far the annotating got, for the note when the budget runs out.
        self.planned = self.patched = 0

    async def rank(self, reader: PodLoadReader, ranked: list[PodInfo], chosen: int) -> str:
        names = [p.name for p in ranked]
        try:
            loads = dict(await reader.read(self.dep.namespace, names))
        except Exception as exc:  # the budget running out cancels instead: prepare() says so
            return await self.fall_back(ranked, str(exc) or type(exc).__name__)
        missing = sorted(set(names) - set(loads))
        if missing:
            return await self.fall_back(
                ranked, f"no load for {len(missing)} of {len(names)} ready pod(s): {_named(missing)}"
            )
        costs = deletion_costs({name: loads[name] for name in names})
        changes = {p.name: str(costs[p.name]) for p in ranked if p.deletion_cost != str(costs[p.name])}
        errors = await self.patch(changes)
        idlest = sorted(names, key=lambda n: costs[n])[:chosen]
        note = f"idle-first: the idlest go first: {_named([f'{n} ({loads[n]:g})' for n in idlest])}"
        return note + _failures(errors)

    async def fall_back(self, ranked: list[PodInfo], why: str) -> str:
        stale = {p.name: None for p in ranked if p.deletion_cost is not None}
        errors = await self.patch(stale)
        note = f"idle-first fell back to the ReplicaSet's default order: {why}"
        if len(stale) > len(errors):
            note += f"; older costs taken off {len(stale) - len(errors)} pod(s)"
        return note + _failures(errors)

    async def patch(self, changes: Mapping[str, str | None]) -> list[str]:
        """Set (None: remove) the deletion cost of these pods; what failed, one entry per pod."""
        self.planned += len(changes)
        gate = asyncio.Semaphore(PATCH_CONCURRENCY)
        errors: list[str] = []

        async def one(pod: str, cost: str | None) -> None:
            async with gate:
                if not self.leading():
                    errors.append("not the leader")
                    return
                try:
                    resp = await self.core.patch_namespaced_pod_without_preload_content(
                        pod,
                        self.dep.namespace,
                        {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}},
                        field_manager=self.field_manager,
                        _content_type="application/merge-patch+json",
                    )
                    try:
                        await read_json(resp)
                    finally:
                        resp.release()
                    self.patched += 1
                except ApiException as exc:
                    errors.append(f"{exc.status} {exc.reason}")
                except (aiohttp.ClientError, ValueError) as exc:
                    errors.append(type(exc).__name__)

        await asyncio.gather(*(one(pod, cost) for pod, cost in changes.items()))
        return errors


def _failures(errors: Sequence[str]) -> str:
    """What failed, to append to a note ("" when nothing did)."""
    if not errors:
        return ""
    hint = " (RBAC: the autoscaler needs patch on pods)" if any(e.startswith("403") for e in errors) else ""
    return f"; {len(errors)} pod patch(es) failed: {', '.join(sorted(set(errors)))}{hint}"


def _named(items: Sequence[str]) -> str:
    more = len(items) - NAMED_PODS
    return ", ".join(items[:NAMED_PODS]) + (f" and {more} more" if more > 0 else "")
