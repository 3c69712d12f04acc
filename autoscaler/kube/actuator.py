"""Turn an engine `Plan` into Deployment resizes through the `scale` subresource.

`KubeActuator` is the live implementation of the controller's `Actuator` protocol.

Role: the only code that writes replicas. Caller: the live controller, after each reconcile
(`await actuator.apply(plan)`), which hands what became of each action (`ActionResult`: an
`Outcome` and why) to the observer and to the next reconcile; errors come back as such data, never
as exceptions, so one bad Deployment cannot stop the loop.

Rules, in the order they are checked for each action:
1. Only the leader writes (`leader.is_leader`, checked before every single request, since
   leadership can be lost in the middle of a plan). With no leader given, this replica writes.
2. Scale-downs go before scale-ups: the plan is ordered so, and a stable sort here keeps it so even
   for a hand-made plan.
3. A paused Deployment (annotation `gpu-autoscaler/paused: "true"`) is never written.
4. No write when `spec.replicas` already is the target (zero writes when nothing changes).
5. The plan was made from a snapshot; if `spec.replicas` no longer matches the plan's
   `from_replicas`, somebody else resized the Deployment since, and the plan is stale for it: skip
   it, the next reconcile decides from the new value.
   In 4 and 5, `spec.replicas` is the cache's, or our own last accepted write while the watch has
   not shown it yet (`kube.expectations`, shared with the cluster view), and a write carries the
   newest resourceVersion known, the write's answer's when the cache lags.
6. The write carries the resourceVersion the cache has seen. On 409 Conflict: re-read the
   Deployment and re-check 3-5 on the fresh copy, then retry with its resourceVersion (bounded:
   after the last retry the outcome is `conflict`).
   On 429/5xx or a broken connection: back off (honouring Retry-After) and retry (bounded).
7. If a scale-down fails, the scale-ups after it are not sent in this apply. The engine granted
   those scale-ups GPUs that the scale-down was to free (headroom is computed from replicas that
   exist now), so sending them anyway could hold more GPUs than the company or cluster caps allow
   until the scale-down finally lands. Stopping all later scale-ups (rather than working out which
   ones shared a cap with the failed one) is coarse but obviously safe, and the next reconcile, a
   few seconds later, plans again from what actually happened.
8. After each resize a Kubernetes Event (reason `GPUAutoscalerScaled`) is posted on the Deployment.
9. Before a scale-down write of a pool with a pod-load reader (`pod_loads`), its pods are ranked
   by load and annotated so that the ReplicaSet removes the idlest first (`kube.idlefirst`): once
   per action, after 1 and 3-5 passed, within the reader's time budget, and never in the way of the
   write, which goes out whatever the ranking did; what it did is the result's detail.

A manual change of `spec.replicas` on a managed Deployment (`kubectl scale`) is noticed from the
cache's watch and logged once per change: a change to a value this replica did not just write.
Only the leader checks, because a follower's cache sees the leader's writes, which are not manual.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from autoscaler.backoff import Backoff, Retry
from autoscaler.engine.types import ActionResult, Outcome, Plan, ScaleAction
from autoscaler.kube.cache import KubeCache, read_json
from autoscaler.kube.client import is_retryable, retry_after
from autoscaler.kube.events import EventRecorder
from autoscaler.kube.expectations import Expectations
from autoscaler.kube.idlefirst import IdleFirst, PodLoadLookup
from autoscaler.kube.objects import PAUSED_ANNOTATION, DeploymentInfo

log = logging.getLogger(__name__)

FIELD_MANAGER = "gpu-autoscaler"
# Retries of one scale write (429, 5xx, a broken connection): a few, within seconds.
WRITE_BACKOFF = Backoff(base_seconds=0.2, cap_seconds=5.0, jitter=0.2)


class LeaderStatus(Protocol):
    @property
    def is_leader(self) -> bool: ...


# Outcomes after which a scale-down's GPUs are not known to be freed.
_NOT_FREED = {Outcome.PAUSED, Outcome.STALE, Outcome.CONFLICT, Outcome.FAILED, Outcome.NOT_LEADER}


@dataclass(frozen=True, slots=True)
class ManualChange:
    pool: str
    from_replicas: int
    to_replicas: int


class _DecidedError(Exception):
    """Raised inside the write loop to finish an action with an outcome decided on a fresh read."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


MANUAL_CHANGES_KEPT = 100


class KubeActuator:
    def __init__(
        self,
        api: client.ApiClient,
        cache: KubeCache,
        *,
        leader: LeaderStatus | None = None,
        events: EventRecorder | None = None,
        dry_run: bool = False,
        conflict_retries: int = 3,
        error_retries: int = 3,
        backoff: Callable[[], Retry] = lambda: Retry(WRITE_BACKOFF),
        max_retry_after: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        expectations: Expectations | None = None,
        pod_loads: PodLoadLookup = lambda _pool: None,
    ) -> None:
        self._apps = client.AppsV1Api(api)
        self.idle_first = IdleFirst(api, cache, pod_loads, FIELD_MANAGER)
        self.cache = cache
        # Shared with the cluster view: the snapshot and the checks here see our writes at once.
        self.expectations = expectations or Expectations()
        self.leader = leader
        self.events = events if events is not None else EventRecorder(api)
        self.dry_run = dry_run
        self.conflict_retries = conflict_retries
        self.error_retries = error_retries
        self._backoff = backoff
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self.last_results: list[ActionResult] = []
        # The latest manual changes (for `explain` and tests): bounded, as the process runs for months.
        self.manual_changes: deque[ManualChange] = deque(maxlen=MANUAL_CHANGES_KEPT)
        # Pool -> the replica counts this replica wrote, oldest first, until their echo comes back
        # through the watch (see `_deployment_changed`).
        self._written: dict[str, deque[int]] = {}
        cache.add_deployment_listener(self._deployment_changed)

    @property
    def is_leader(self) -> bool:
        return self.leader is None or self.leader.is_leader

    async def apply(self, plan: Plan) -> list[ActionResult]:
        """Every action of `plan` by the rules above; returns what became of each, scale-downs first
        (kept as `last_results` too)."""
        self.last_results = await apply_in_order(plan.actions, self.apply_one)
        return self.last_results

    # ---- one action --------------------------------------------------------------------------

    def _check(
        self, action: ScaleAction, dep: DeploymentInfo | None, spec: int | None = None
    ) -> ActionResult | None:
        """Rules 1, 3, 4 and 5 against one copy of the Deployment; None: go ahead and write.
        `spec`: its spec.replicas as we know it (our last write, when the copy predates it)."""
        if not self.is_leader:
            return ActionResult(action, Outcome.NOT_LEADER, "this replica is not the leader")
        if dep is None:
            return ActionResult(action, Outcome.FAILED, "Deployment not found")
        if dep.paused:
            return ActionResult(action, Outcome.PAUSED, f"annotation {PAUSED_ANNOTATION}")
        replicas = dep.spec_replicas if spec is None else spec
        if replicas == action.to_replicas:
            return ActionResult(action, Outcome.UNCHANGED)
        if replicas != action.from_replicas:
            return ActionResult(
                action,
                Outcome.STALE,
                f"spec.replicas is {replicas}, the plan assumed {action.from_replicas}",
            )
        return None

    async def apply_one(self, action: ScaleAction) -> ActionResult:
        """One action by rules 1 and 3-6, 8 (`apply_in_order` adds 2 and 7)."""
        dep = self.cache.deployment(action.pool)
        spec = None if dep is None else self.expectations.spec_replicas(dep)
        early = self._check(action, dep, spec)
        if early is not None:
            return early
        assert dep is not None
        if self.dry_run:
            log.info("dry run: would scale %s %d->%d", action.pool, action.from_replicas, action.to_replicas)
            return ActionResult(action, Outcome.DRY_RUN)

        ranked = ""
        if action.is_scale_down:
            ranked = await self.idle_first.prepare(action, dep, lambda: self.is_leader)
        backoff = self._backoff()
        conflicts = errors = writes = 0
        resource_version = self.expectations.resource_version(dep)
        while True:
            if not self.is_leader:
                return ActionResult(action, Outcome.NOT_LEADER, "lost leadership", writes)
            try:
                self._note_write(action.pool, action.to_replicas)
                writes += 1
                answer = await self._apps.replace_namespaced_deployment_scale(
                    dep.name,
                    dep.namespace,
                    client.V1Scale(
                        metadata=client.V1ObjectMeta(
                            name=dep.name, namespace=dep.namespace, resource_version=resource_version
                        ),
                        spec=client.V1ScaleSpec(replicas=action.to_replicas),
                    ),
                    field_manager=FIELD_MANAGER,
                )
                self.expectations.wrote(action.pool, action.to_replicas, _resource_version(answer))
                break
            except ApiException as exc:
                if exc.status == 409 and conflicts < self.conflict_retries:
                    conflicts += 1
                    try:
                        dep, resource_version = await self._reread(action, dep, writes)
                    except _DecidedError as done:
                        return ActionResult(action, done.outcome, done.detail, writes)
                    continue
                if is_retryable(exc.status) and errors < self.error_retries:
                    errors += 1
                    await self._pause(backoff, retry_after(exc.headers))
                    continue
                outcome = Outcome.CONFLICT if exc.status == 409 else Outcome.FAILED
                return ActionResult(action, outcome, f"API error {exc.status} {exc.reason}", writes)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The write may or may not have landed: retry with the same resourceVersion, which
                # either succeeds or gets 409, whose fresh read then shows the outcome.
                if errors < self.error_retries:
                    errors += 1
                    await self._pause(backoff, None)
                    continue
                return ActionResult(action, Outcome.FAILED, f"{type(exc).__name__}: {exc}", writes)

        log.info("scaled %s %d->%d: %s", action.pool, action.from_replicas, action.to_replicas, action.reason)
        await self.events.scaled(dep, action.from_replicas, action.to_replicas, action.reason)
        return ActionResult(action, Outcome.SCALED, ranked, writes)

    async def _reread(
        self, action: ScaleAction, dep: DeploymentInfo, writes: int
    ) -> tuple[DeploymentInfo, str]:
        """After a 409: the Deployment as the server has it now (not the cache, which may lag)."""
        backoff = self._backoff()
        for attempt in range(self.error_retries + 1):
            try:
                resp = await self._apps.read_namespaced_deployment_without_preload_content(
                    dep.name, dep.namespace
                )
                try:
                    raw = await read_json(resp)
                finally:
                    resp.release()
                break
            except ApiException as exc:
                if not is_retryable(exc.status) or attempt == self.error_retries:
                    raise _DecidedError(
                        Outcome.FAILED, f"re-read after conflict: {exc.status} {exc.reason}"
                    ) from exc
                await self._pause(backoff, retry_after(exc.headers))
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self.error_retries:
                    raise _DecidedError(Outcome.FAILED, f"re-read after conflict: {exc}") from exc
                await self._pause(backoff, None)
        fresh = DeploymentInfo.from_raw(raw)
        if writes > 1 and fresh.spec_replicas == action.to_replicas and not fresh.paused:
            # An earlier attempt of ours landed although its answer was lost.
            self.expectations.wrote(action.pool, action.to_replicas, fresh.resource_version)
            raise _DecidedError(Outcome.SCALED, "an earlier attempt landed")
        # The server's copy is the truth now, whatever we wrote before.
        self.expectations.forget(action.pool)
        verdict = self._check(action, fresh)
        if verdict is not None:
            raise _DecidedError(verdict.outcome, verdict.detail + " (after a conflict)")
        return fresh, fresh.resource_version

    async def _pause(self, backoff: Retry, server_says: float | None) -> None:
        delay = backoff.next()
        if server_says is not None:
            delay = max(delay, min(server_says, self.max_retry_after))
        await self._sleep(delay)

    # ---- manual changes ----------------------------------------------------------------------

    def _note_write(self, pool: str, replicas: int) -> None:
        written = self._written.setdefault(pool, deque(maxlen=8))
        written.append(replicas)

    def _deployment_changed(self, old: DeploymentInfo | None, new: DeploymentInfo | None) -> None:
        if old is None or new is None or old.spec_replicas == new.spec_replicas:
            return
        if not self.cache.is_managed(new.key) or not self.is_leader:
            return
        written = self._written.get(new.key)
        if written is not None and new.spec_replicas in written:
            # Our own write coming back; older values of ours are superseded by it.
            while written[0] != new.spec_replicas:
                written.popleft()
            return
        change = ManualChange(new.key, old.spec_replicas, new.spec_replicas)
        self.manual_changes.append(change)
        log.warning(
            "%s was resized from %d to %d by someone else (kubectl scale?); %s",
            new.key,
            old.spec_replicas,
            new.spec_replicas,
            "it is paused, so it stays as set"
            if new.paused
            else f"annotate it {PAUSED_ANNOTATION}=true to keep the autoscaler off it",
        )


async def apply_in_order(
    actions: Iterable[ScaleAction], apply_one: Callable[[ScaleAction], Awaitable[ActionResult]]
) -> list[ActionResult]:
    """Rules 2 and 7 over `apply_one`, which carries out one action: scale-downs first, and no
    scale-up after a scale-down whose GPUs are not known to be freed. Shared by `KubeActuator` and
    the multi-cluster actuator (`kube.fleet`), whose caps span clusters, so a failed scale-down in
    one cluster holds back the scale-ups in all of them."""
    results: list[ActionResult] = []
    scale_down_failed: ScaleAction | None = None
    for action in sorted(actions, key=lambda a: not a.is_scale_down):
        if scale_down_failed is not None and not action.is_scale_down:
            result = ActionResult(
                action, Outcome.SKIPPED, f"scale-down of {scale_down_failed.pool} did not happen"
            )
        else:
            result = await apply_one(action)
            if action.is_scale_down and result.outcome in _NOT_FREED:
                scale_down_failed = action
        if result.outcome not in (Outcome.UNCHANGED, Outcome.SCALED):
            level = logging.WARNING if result.outcome.not_landed else logging.INFO
            log.log(
                level,
                "%s %d->%d: %s %s",
                action.pool,
                action.from_replicas,
                action.to_replicas,
                result.outcome,
                result.detail,
            )
        results.append(result)
    return results


def _resource_version(scale: object) -> str:
    """The resourceVersion a scale write answered with ("" if the answer has none)."""
    meta = getattr(scale, "metadata", None)
    return str(getattr(meta, "resource_version", "") or "")
