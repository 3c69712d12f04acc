"""Leader election on a coordination.k8s.io/v1 Lease, so that two autoscaler replicas can run and
only one of them writes.

Role: tell the actuator whether this replica may write (`is_leader`) and the controller when that
changes (`on_change`). Caller: the live controller (`start()`, `stop()`), `kube.actuator` (reads
`is_leader` before every write).

The algorithm is client-go's (tools/leaderelection), small enough to own rather than use
`kubernetes.aio.leaderelection`, whose timers are whole seconds at least (so handover tests would
take many seconds), whose clock cannot be injected and which offers no `is_leader` to ask:
- every `retry_period`, read the Lease; a holder other than us keeps it while `leaseDurationSeconds`
  has not passed since we *observed* its record change (measured on our own monotonic clock, so
  clock skew between replicas does not matter; `renewTime` is written for humans and tools);
- otherwise (free, expired, or ours) write it with the resourceVersion just read: of two candidates
  racing for an expired lease, exactly one wins, the other gets 409;
- the leader renews every `retry_period`, and stops calling itself leader once `renew_deadline`
  has passed since its last successful renewal, which is before any follower may take over
  (`renew_deadline < lease_duration`), so there is never a moment with two writers, even when the
  leader is cut off from the API server or its event loop stalls: `is_leader` compares the clock
  with the last renewal every time it is read, it does not wait for the loop to notice.
- `stop()` releases the lease (empty holder) so a rolling update hands over at once; a crashed
  leader is replaced once its lease expires.

The Lease also carries the leader's decision state to the others, in the annotation
`STATE_ANNOTATION`, at no extra API call: the leader writes `state_provider()` with each write of
the Lease it makes anyway (create, renew, release), and every replica that is not leading hands the
annotation it reads (each `retry_period`) to `on_state`, before it takes over an expired or
released Lease too, so a new leader starts from the old one's state of at most one period ago. The
annotation never costs a renewal: a provider that fails, or text that would take the object's
annotations past the API server's 256 KiB, is logged once and the annotation left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

log = logging.getLogger(__name__)

STATE_ANNOTATION = "gpu-autoscaler/engine-state"
# The API server refuses an object whose annotations (keys and values) total more than this.
ANNOTATIONS_MAX_BYTES = 256 * 1024


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        identity: str,
        name: str = "gpu-autoscaler",
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        state_provider: Callable[[], str | None] | None = None,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self._coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.state_provider = state_provider
        self.on_state = on_state
        self._clock = clock
        self._wall = wall_clock
        self._leading = False
        self._renewed_at = -math.inf
        self._observed: tuple[object, ...] | None = None
        self._observed_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self.transitions = 0
        # The last problem logged about the state annotation, so each is logged once, not per renewal.
        self._state_problem = ""

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock() - self._renewed_at < self.renew_deadline

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"leader-election-{self.identity}")

    async def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; with `release`, give the lease up if we hold it (graceful shutdown).
        `release=False` behaves like a crash, for tests."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release and self.is_leader:
            with contextlib.suppress(ApiException, aiohttp.ClientError, TimeoutError):
                await self._release()
        self._set_leading(False)

    async def run(self) -> None:
        while True:
            await self.try_acquire_or_renew()
            if self._leading and not self.is_leader:
                log.warning("%s: could not renew the lease within %.1fs", self.identity, self.renew_deadline)
                self._set_leading(False)
            await asyncio.sleep(self.retry_period)

    async def try_acquire_or_renew(self) -> bool:
        """One round; True when we hold the lease afterwards."""
        now = self._clock()
        try:
            lease = await self._coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return await self._create()
            log.info("%s: reading the lease failed: %s %s", self.identity, exc.status, exc.reason)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s: reading the lease failed: %s", self.identity, exc)
            return False
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        if not self._leading:
            # The leader's state, for a follower to follow and a new leader to resume from.
            self._hand_state(lease)
        record = (holder, spec.renew_time, spec.lease_transitions, spec.lease_duration_seconds)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or self.lease_duration
        if holder and holder != self.identity and self._observed_at + duration > now:
            if self._leading:
                self._set_leading(False)
            return False
        stamp = datetime.fromtimestamp(self._wall(), UTC)
        if holder != self.identity:
            spec.acquire_time = stamp
            spec.lease_transitions = (spec.lease_transitions or 0) + (1 if holder else 0)
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = math.ceil(self.lease_duration)
        spec.renew_time = stamp
        lease.spec = spec
        self._put_state(lease)
        try:
            await self._coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            # 409: someone else wrote it since our read (another candidate won the race).
            log.info("%s: writing the lease failed: %s %s", self.identity, exc.status, exc.reason)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s: writing the lease failed: %s", self.identity, exc)
            return False
        self._renewed_at = now
        self._set_leading(True)
        return True

    async def _create(self) -> bool:
        now = self._clock()
        stamp = datetime.fromtimestamp(self._wall(), UTC)
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=math.ceil(self.lease_duration),
                acquire_time=stamp,
                renew_time=stamp,
                lease_transitions=0,
            ),
        )
        self._put_state(body)
        try:
            await self._coord.create_namespaced_lease(self.namespace, body)
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s: creating the lease failed: %s", self.identity, exc)
            return False
        self._renewed_at = now
        self._set_leading(True)
        return True

    async def _release(self) -> None:
        lease = await self._coord.read_namespaced_lease(self.name, self.namespace)
        spec = lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != self.identity:
            return
        spec.holder_identity = ""
        spec.lease_duration_seconds = 1
        spec.renew_time = datetime.fromtimestamp(self._wall(), UTC)
        lease.spec = spec
        # The last word: the next leader resumes from the state of the moment we stopped.
        self._put_state(lease)
        await self._coord.replace_namespaced_lease(self.name, self.namespace, lease)

    def _put_state(self, lease: client.V1Lease) -> None:
        """Set (or, when there is nothing to say, remove) the state annotation on `lease`, which is
        about to be written."""
        if self.state_provider is None:
            return
        meta = lease.metadata or client.V1ObjectMeta()
        lease.metadata = meta
        annotations = dict(meta.annotations or {})
        annotations.pop(STATE_ANNOTATION, None)
        try:
            text = self.state_provider()
        except Exception as exc:  # the state is a courtesy to the next leader; the renewal is not
            self._state_trouble(
                f"the engine state could not be exported ({exc!r}); the Lease goes without it"
            )
            text = None
        if text is not None:
            others = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
            size = len(STATE_ANNOTATION) + len(text.encode())
            if others + size > ANNOTATIONS_MAX_BYTES:
                self._state_trouble(
                    f"the engine state ({size} bytes) would take the Lease's annotations past "
                    f"{ANNOTATIONS_MAX_BYTES} bytes; the Lease goes without it"
                )
            else:
                annotations[STATE_ANNOTATION] = text
                self._state_trouble("")
        # An empty dict, not None: None leaves the field out of a replace, which a server may read
        # as "keep what is there" rather than "remove".
        meta.annotations = annotations

    def _hand_state(self, lease: client.V1Lease) -> None:
        if self.on_state is None or lease.metadata is None:
            return
        text = (lease.metadata.annotations or {}).get(STATE_ANNOTATION)
        if not text:
            return
        try:
            self.on_state(text)
        except Exception as exc:  # a follower that cannot adopt still campaigns
            log.warning("%s: adopting the leader's engine state failed: %r", self.identity, exc)

    def _state_trouble(self, problem: str) -> None:
        if problem and problem != self._state_problem:
            log.warning("%s: %s", self.identity, problem)
        self._state_problem = problem

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        self.transitions += 1
        log.info("%s: %s", self.identity, "became the leader" if leading else "is no longer the leader")
        if self.on_change is not None:
            self.on_change(leading)
