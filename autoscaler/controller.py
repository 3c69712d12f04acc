"""The live loop: sources poll, changes wake the engine, plans go to an actuator.

    sources (one task each) --Reading--> latest readings --wake--> reconcile --Plan--> actuator

Each source polls at its own interval in its own task. When a reading's value changes, or a
trigger flips between ok and failed, the poller wakes the engine at once; wake-ups within
`debounce_seconds` are coalesced into one reconcile. Decisions that only time changes (stabilization
windows, cooldown, pending timeouts) are made when the engine's next timer runs out
(`Memo.next_wake`), and a periodic resync (`resync_seconds`) is the safety net. A failing source
is polled again with capped exponential backoff and jitter; its trigger keeps its failed reading,
so the engine's fallback applies to that workload alone and the others keep scaling.

The engine is pure and fast, so it runs right here on the event loop thread, incrementally
(`engine.incremental`: only the workloads whose inputs or timers changed are recomputed, with the same
plan as a full `reconcile`). The loop keeps `EngineState` and the engine's memo between reconciles,
and the last `Plan` and per-workload `Decision`s (for `explain`).
Everything with a side effect is injected: the clock (`now` for the engine), the sleep and random
source of the backoff, the `ClusterView` the snapshot comes from, the `Actuator` plans go to and an
optional `Observer` (metrics, health) told about every reconcile, so the Kubernetes edge plugs in
its own, and tests use fakes. The clock is wall-clock seconds, as the API server's own stamps on
pods and Leases are: the engine state one replica writes means the same in every other, and the
times in logs can be read as dates (`wall_time`).

The actuator answers each plan with what became of every action (`ActionResult`: written,
unchanged, refused, failed, ...). The observer gets them with the reconcile (metrics count what was
done, not what was planned), and the writes that did not land go into the next reconcile's snapshot
as data (`ClusterSnapshot.failed_writes`), so that decision's explanation names them.

With two replicas, the leader's engine state travels in its Lease (`export_state`, written by the
leader election at each renewal); the others adopt it at each read (`adopt_state`), so their
decisions follow the leader's, and a new leader resumes the hold and stabilization windows, blocked
pools and failure counts of the old one instead of shrinking the fleet it finds.

Hot reload swaps the configuration between two reconciles (`update_config`): triggers whose source
is kept go on polling with their latest reading, dropped sources are stopped and closed, new ones
start polling at once, and the engine state of workloads that stay is kept (stabilization windows,
cooldown, pools blocked after a pending timeout), so a reload is not a restart.

Callers: `autoscaler run` (`autoscaler.app`, `autoscaler.live`), `autoscaler.reload`,
`benchmarks/reaction.py`, `benchmarks/api_calls.py`, the integration and end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from autoscaler.backoff import Backoff
from autoscaler.engine.incremental import Memo, reconcile_incremental, settle
from autoscaler.engine.statecodec import Detail, pack_state, unpack_state
from autoscaler.engine.types import (
    ActionResult,
    ClusterSnapshot,
    Decision,
    EngineState,
    Limits,
    Plan,
    Reading,
    Reconciled,
    WorkloadSpec,
)
from autoscaler.sources.base import Recovering, Source, describe_exception

log = logging.getLogger("autoscaler.controller")

# Room for the engine state in the Lease annotation: half of the 256 KiB the API server allows for
# all of an object's annotations together, the rest being left to anyone else's.
STATE_MAX_CHARS = 128 * 1024
# Exporting the state costs CPU in proportion to the fleet (settling and packing 10,000 workloads:
# about 0.75 s), and the Lease renews every 2 s. A text that cost at least EXPORT_REUSE_MIN_CPU
# seconds is handed out again until EXPORT_REUSE_FACTOR times its cost has passed, which keeps the
# export under a tenth of a core: a new leader then starts from a state a few seconds older, never
# from a wrong one. Cheaper exports (1,000 workloads: about 55 ms) are made afresh every time.
EXPORT_REUSE_MIN_CPU = 0.1
EXPORT_REUSE_FACTOR = 10.0
# The shortest wait for the engine's next timer (`Memo.next_wake`).
_TIMER_FLOOR = 0.05
_LEFT_OUT = {
    Detail.NO_HISTORY: "stabilization and rate histories",
    Detail.NO_POLICY_MEMORY: "stabilization and rate histories, policy memory",
    Detail.EMPTY: "everything",
}

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class ClusterView(Protocol):
    """The cluster as the engine needs it: the replicas of every managed pool now."""

    def snapshot(self) -> ClusterSnapshot: ...


class Actuator(Protocol):
    """Makes a plan happen (resizes Deployments) or, in a dry run, pretends to and logs it."""

    async def apply(self, plan: Plan) -> Sequence[ActionResult]:
        """Carry out `plan`; returns what became of each of its actions (written, refused, failed)."""
        ...


class Observer(Protocol):
    """Told about every reconcile and about the replica's state: metrics and health endpoints
    (`autoscaler.telemetry.Telemetry` implements it). Called on the event loop thread; it must not
    block, and an exception it raises is logged, never allowed to stop the loop."""

    def observe(self, reconciled: Reconciled) -> None: ...

    def set_leader(self, leader: bool) -> None: ...

    def set_ready(self, ready: bool) -> None: ...


class Observers:
    """Several observers as one (metrics and health, the KEDA external scaler): each is told, in
    order, even when one before it fails; the first failure is raised after all were told, so the
    controller logs and counts it as it does for a single observer."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def observe(self, reconciled: Reconciled) -> None:
        self._each(lambda o: o.observe(reconciled))

    def set_leader(self, leader: bool) -> None:
        self._each(lambda o: o.set_leader(leader))

    def set_ready(self, ready: bool) -> None:
        self._each(lambda o: o.set_ready(ready))

    def _each(self, tell: Callable[[Observer], None]) -> None:
        failed: Exception | None = None
        for observer in self.observers:
            try:
                tell(observer)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


def observers(*maybe: Observer | None) -> Observer | None:
    """The given observers that exist, as one (None when there is none)."""
    present = [o for o in maybe if o is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Observers(*present)


@dataclass(frozen=True)
class TriggerKey:
    workload: str
    trigger: str


@dataclass(eq=False)
class _Polled:
    key: TriggerKey
    source: Source
    failures: int = 0
    reads: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class ControllerStats:
    reconciles: int = 0
    wakeups: int = 0
    reads: int = 0
    apply_errors: int = 0
    observer_errors: int = 0
    config_updates: int = 0
    state_exports: int = 0
    state_adoptions: int = 0


class Controller:
    """Runs sources and reconciles until `stop()` (or, with `once=True`, after one reconcile).

    `sources` maps each (workload, trigger) to its built source; `workloads` and `limits` are the
    compiled policy files. Whoever built the sources closes the ones in use at the end; sources that
    `update_config` drops are closed by the controller, since only it knows when they stop polling.

    Ready (`ready`, and `observer.set_ready(True)`) once a reconcile has run with every source
    having reported at least once: the snapshot the caller's cluster view gives is assumed to be
    synced before `run` (the live wiring waits for the watch cache)."""

    def __init__(
        self,
        workloads: Sequence[WorkloadSpec],
        limits: Limits,
        sources: Mapping[TriggerKey, Source],
        cluster: ClusterView,
        actuator: Actuator,
        *,
        resync_seconds: float = 30.0,
        debounce_seconds: float = 0.02,
        backoff: Backoff | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        first_reading_timeout: float = 30.0,
        observer: Observer | None = None,
        cpu_clock: Clock = time.process_time,
    ) -> None:
        self.workloads = tuple(workloads)
        self.limits = limits
        self.cluster = cluster
        self.actuator = actuator
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.first_reading_timeout = first_reading_timeout
        self.observer = observer
        self.cpu_clock = cpu_clock
        self.ready = False
        self.state = EngineState()
        # The incremental engine's cache (`engine.incremental`): what lets a reconcile recompute only
        # the workloads whose inputs or timers changed. Never exported: a new leader starts with an
        # empty one, and a state adopted or set here is simply recomputed from.
        self.memo = Memo()
        self.readings: dict[str, dict[str, Reading]] = {w.name: {} for w in self.workloads}
        self.last_plan: Plan | None = None
        self.decisions: dict[str, Decision] = {}
        # The last reconcile's writes that did not land, by pool: data for the next decision.
        self.failed_writes: dict[str, ActionResult] = {}
        self.stats = ControllerStats()
        self._polled = [_Polled(key, source) for key, source in sources.items()]
        self._wake = asyncio.Event()
        self._first_round = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running = False
        # A reconcile and a configuration swap never interleave: `reconcile_once` awaits the
        # actuator, and a reload landing there must not change the workloads under its feet.
        self._lock = asyncio.Lock()
        # The last engine state handed over by the leader (`adopt_state`), until it is taken in.
        self._pending_state: str | None = None
        self._state_written_at: float | None = None
        # What was last logged about the state's exchange, so a follower adopting every retry
        # period logs a problem once, not every two seconds.
        self._state_notes: tuple[str, ...] = ()
        self._export_detail = Detail.FULL
        # The last exported text, when it was made and the CPU seconds it took (see EXPORT_REUSE_*).
        self._exported: tuple[str, float, float] | None = None
        if not self._polled:
            self._first_round.set()

    # -- public -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a reconcile soon (debounced). Sources call it on a change; the cluster watch can too."""
        self.stats.wakeups += 1
        self._wake.set()

    def leadership_changed(self, leader: bool) -> None:
        """The leader election's `on_change`: tell the observer, and on becoming the leader decide
        at once rather than at the next change or resync (a follower's plans were not applied)."""
        self._notify(lambda o: o.set_leader(leader))
        if leader:
            if self._pending_state is not None and not self._lock.locked():
                self._take_pending_state()
            if self._state_written_at is not None:
                log.info(
                    "leading: resuming from the engine state the previous leader wrote at %s",
                    wall_time(self._state_written_at),
                )
            self.wake()

    def export_state(self, max_chars: int = STATE_MAX_CHARS) -> str:
        """The engine state as text (`engine.statecodec`), at most `max_chars` long: what the leader
        writes into its Lease at each renewal for the others to adopt. Less detail when the whole
        does not fit (said once in the log); a state handed over but not yet taken in is passed on
        as it came, being the newest this replica knows."""
        if self._pending_state is not None:
            return self._pending_state
        now = self.clock()
        if self._exported is not None:
            text, at, cost = self._exported
            if cost >= EXPORT_REUSE_MIN_CPU and at <= now < at + EXPORT_REUSE_FACTOR * cost:
                return text
        started = self.cpu_clock()
        # Settled: the workloads the last reconcile skipped carry their time stamps of before (see
        # `engine.incremental.settle`); the Lease gets the state the full recompute would hold.
        settled = settle(self.state, self.memo)
        packed, notes = pack_state(settled, self.workloads, now, max_chars)
        self._exported = (packed.text, now, self.cpu_clock() - started)
        self.stats.state_exports += 1
        if packed.detail != self._export_detail:
            self._export_detail = packed.detail
            if packed.detail is Detail.FULL:
                log.info(
                    "the engine state fits its Lease annotation again",
                    extra={"fields": {"chars": len(packed.text)}},
                )
            else:
                log.warning(
                    "the engine state is too large for its Lease annotation: writing it with less detail",
                    extra={
                        "fields": {
                            "chars": packed.full_size,
                            "max_chars": max_chars,
                            "left_out": _LEFT_OUT[packed.detail],
                        }
                    },
                )
        self._log_state_notes(notes)
        return packed.text

    def adopt_state(self, text: str) -> None:
        """Take the leader's engine state (`export_state`'s text) as this replica's own, for the
        workloads configured here; a workload the text does not have keeps its own state. Followers
        adopt it at every read of the Lease, so their decisions (and `explain`) follow the leader's
        and a takeover resumes from at most one retry period ago. Never raises: unreadable text, or
        parts of it, leave the state as fresh as without it, with one log line.

        Called from the leader election's task: taken in at once when no reconcile or reload holds
        the lock, else by the one that holds it before it decides (a reconcile) or once the new
        workloads are in place (a reload), so the state never changes under their feet."""
        self._pending_state = text
        if not self._lock.locked():
            self._take_pending_state()

    # -- internals: the engine state exchange ------------------------------------------------------

    def _take_pending_state(self) -> None:
        text, self._pending_state = self._pending_state, None
        if text is None:
            return
        loaded = unpack_state(text, self.workloads, self.clock())
        self.state = EngineState({**self.state.workloads, **loaded.state.workloads})
        self._state_written_at = loaded.written_at
        self.stats.state_adoptions += 1
        self._log_state_notes(loaded.notes)

    def _log_state_notes(self, notes: tuple[str, ...]) -> None:
        if notes == self._state_notes:
            return
        self._state_notes = notes
        for note in notes:
            log.warning("engine state: %s", note)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, *, once: bool = False) -> None:
        """Poll and reconcile until `stop()`. The first reconcile waits until every source has
        reported once (or `first_reading_timeout`), so a slow first connect is not counted as a
        failure of its trigger. With `once`, return after that first reconcile."""
        self._running = True
        for polled in self._polled:
            self._start_polling(polled)
        try:
            try:
                await asyncio.wait_for(self._first_round.wait(), self.first_reading_timeout)
            except TimeoutError:
                silent = [f"{p.key.workload}/{p.key.trigger}" for p in self._polled if p.reads == 0]
                log.warning("no first reading yet", extra={"fields": {"triggers": silent}})
            await self.reconcile_once()
            if once:
                return
            await self._reconcile_loop()
        finally:
            self._running = False
            await _cancel([p.task for p in self._polled if p.task is not None])
            for polled in self._polled:
                polled.task = None

    async def reconcile_once(self) -> Plan:
        """One decision over every workload with each trigger's latest reading, then apply it, then
        tell the observer (the duration it gets covers the decision and the writes)."""
        async with self._lock:
            # The engine's `now` is wall-clock time; a duration is measured on a monotonic timer.
            timer = time.perf_counter()
            self._take_pending_state()
            now = self.clock()
            self._wake.clear()
            snapshot = self.cluster.snapshot()
            if self.failed_writes:
                snapshot = dataclasses.replace(snapshot, failed_writes=self.failed_writes)
            # The readings this decision uses, frozen: pollers go on writing `self.readings` while
            # the plan is applied, and the observer must report what was decided on, not newer values.
            # A workload's own mapping is never changed once made (`_poll` replaces it), so a shallow
            # copy freezes them all, and the incremental engine knows an unpolled workload's readings
            # by the mapping being the same object.
            readings = dict(self.readings)
            plan, self.state, self.memo = reconcile_incremental(
                self.workloads, snapshot, readings, self.state, self.limits, now, self.memo
            )
            self.stats.reconciles += 1
            self.last_plan = plan
            self.decisions.update(plan.decisions)
            outcomes: tuple[ActionResult, ...] = ()
            if plan.actions:
                try:
                    outcomes = tuple(await self.actuator.apply(plan))
                except Exception as exc:  # the next reconcile retries from a fresh snapshot
                    self.stats.apply_errors += 1
                    log.error(
                        "applying the plan failed", extra={"fields": {"error": describe_exception(exc)}}
                    )
            self.failed_writes = {r.action.pool: r for r in outcomes if r.outcome.not_landed}
            self._observe(now, snapshot, readings, plan, outcomes, time.perf_counter() - timer)
            if not self.ready and all(p.reads for p in self._polled):
                self.ready = True
                log.info("ready: cluster synced and every trigger read")
                self._notify(lambda o: o.set_ready(True))
            return plan

    async def update_config(
        self, workloads: Sequence[WorkloadSpec], limits: Limits, sources: Mapping[TriggerKey, Source]
    ) -> None:
        """Swap the policy configuration between two reconciles (hot reload), then wake the loop.

        `sources` is the complete mapping for the new configuration. A source object that is
        already polling (the same object, under the same key) keeps its task, backoff and latest
        reading; any other old source is stopped and closed; new ones start polling now. Engine
        state and the last decisions are kept for workloads that stay, dropped for the others."""
        async with self._lock:
            names = {w.name for w in workloads}
            kept: list[_Polled] = []
            dropped: list[_Polled] = []
            for polled in self._polled:
                if sources.get(polled.key) is polled.source:
                    kept.append(polled)
                else:
                    dropped.append(polled)
            kept_keys = {p.key for p in kept}
            added = [_Polled(key, source) for key, source in sources.items() if key not in kept_keys]
            await _cancel([p.task for p in dropped if p.task is not None])
            for polled in dropped:
                try:
                    await polled.source.close()
                except Exception as exc:  # a close that fails leaks a connection, not the loop
                    log.warning(
                        "closing a dropped source failed",
                        extra={"fields": {"trigger": str(polled.key), "error": describe_exception(exc)}},
                    )
            self.workloads = tuple(workloads)
            self.limits = limits
            self._polled = kept + added
            self.readings = {
                w.name: {
                    p.key.trigger: reading
                    for p in kept
                    if p.key.workload == w.name
                    and (reading := self.readings.get(w.name, {}).get(p.key.trigger)) is not None
                }
                for w in self.workloads
            }
            self.state = EngineState({n: s for n, s in self.state.workloads.items() if n in names})
            self._exported = None  # it may name workloads that are gone
            self._take_pending_state()
            self.decisions = {n: d for n, d in self.decisions.items() if n in names}
            if self._running:
                for polled in added:
                    self._start_polling(polled)
            self.stats.config_updates += 1
        log.info(
            "configuration updated",
            extra={
                "fields": {
                    "workloads": sorted(names),
                    "sources_kept": len(kept),
                    "sources_started": len(added),
                    "sources_closed": len(dropped),
                }
            },
        )
        self.wake()

    # -- internals --------------------------------------------------------------------------------

    def _start_polling(self, polled: _Polled) -> None:
        polled.task = asyncio.create_task(self._poll(polled), name=f"poll {polled.key}")

    def _observe(
        self,
        now: float,
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        plan: Plan,
        outcomes: Sequence[ActionResult],
        duration: float,
    ) -> None:
        if self.observer is None:
            return
        try:
            self.observer.observe(
                Reconciled(now, self.workloads, self.limits, snapshot, readings, plan, duration, outcomes)
            )
        except Exception as exc:  # metrics are not worth a stopped autoscaler
            self.stats.observer_errors += 1
            log.warning("the observer failed", extra={"fields": {"error": describe_exception(exc)}})

    def _notify(self, tell: Callable[[Observer], None]) -> None:
        if self.observer is None:
            return
        try:
            tell(self.observer)
        except Exception as exc:
            self.stats.observer_errors += 1
            log.warning("the observer failed", extra={"fields": {"error": describe_exception(exc)}})

    async def _reconcile_loop(self) -> None:
        next_resync = self.clock() + self.resync_seconds
        while not self._stopping.is_set():
            now = self.clock()
            # Bounded both ways: the wall clock may be stepped (NTP) between two readings of it.
            timeout = min(self.resync_seconds, max(0.0, next_resync - now))
            # The engine's next timer (a window, a cooldown, a pending timeout running out): its
            # decision is due then, not at the resync. Never sooner than _TIMER_FLOOR from now, so a
            # timer that is due and stays due cannot spin the loop.
            timeout = min(timeout, max(_TIMER_FLOOR, self.memo.next_wake - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._stopping.is_set():
                return
            if self._wake.is_set() and self.debounce_seconds > 0:
                # Let the other sources that saw the same burst report before deciding.
                await self.sleep(self.debounce_seconds)
            await self.reconcile_once()
            next_resync = self.clock() + self.resync_seconds

    def put_reading(self, workload: str, trigger: str, reading: Reading) -> Reading | None:
        """Make `reading` the latest of `workload`'s `trigger`; returns the one it replaces.

        A new mapping per change, never one changed in place: a reconcile holds the mappings it
        decided on (`reconcile_once`), and the incremental engine knows a workload's readings are
        unchanged by its mapping being the same object. (`get`: `update_config` rebuilds
        `readings`; a reading taken across the swap must not raise here.)"""
        latest = self.readings.get(workload, {})
        self.readings[workload] = {**latest, trigger: reading}
        return latest.get(trigger)

    async def _poll(self, polled: _Polled) -> None:
        key, source = polled.key, polled.source
        while True:
            started = self.clock()
            try:
                reading = await source.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a source's bug is its trigger's failure, not the loop's
                reading = Reading(
                    None, self.clock(), f"trigger {key.workload}/{key.trigger}: {describe_exception(exc)}"
                )
            self.stats.reads += 1
            previous = self.put_reading(key.workload, key.trigger, reading)
            polled.reads += 1
            if polled.reads == 1 and all(p.reads for p in self._polled):
                self._first_round.set()
            if _changed(previous, reading):
                self._log_change(key, previous, reading)
                self.wake()
            if reading.ok:
                polled.failures = 0
                delay = source.poll_seconds - max(self.clock() - started, 0.0)
            else:
                polled.failures += 1
                delay = max(source.poll_seconds, self.backoff.delay(polled.failures, self.rng))
                if isinstance(source, Recovering):
                    # A source that can tell when its server is back cuts the backoff short then.
                    await source.wait_recovered(max(delay, 0.0))
                    continue
            await self.sleep(max(delay, 0.0))

    def _log_change(self, key: TriggerKey, previous: Reading | None, reading: Reading) -> None:
        fields: dict[str, Any] = {"workload": key.workload, "trigger": key.trigger, "value": reading.value}
        if not reading.ok:
            fields["error"] = reading.error
            log.warning("trigger failed", extra={"fields": fields})
        elif previous is not None and not previous.ok:
            log.info("trigger recovered", extra={"fields": fields})
        else:
            log.debug("trigger changed", extra={"fields": fields})


def wall_time(t: float) -> str:
    """An engine time (wall-clock seconds) as people read it: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _changed(previous: Reading | None, reading: Reading) -> bool:
    if previous is None:
        return True
    if previous.ok != reading.ok:
        return True
    return previous.value != reading.value
