"""The live loop: sources poll, changes wake the engine, plans go to an actuator.

    sources (one task each) --Reading--> latest readings --wake--> reconcile --Plan--> actuator

Each source polls at its own interval in its own task. When a reading's value changes, or a
trigger flips between ok and failed, the poller wakes the engine at once; wake-ups within
`debounce_seconds` are coalesced into one reconcile, and a periodic resync (`resync_seconds`) is the
safety net for decisions that only time changes (stabilization windows, cooldown). A failing source
is polled again with capped exponential backoff and jitter; its trigger keeps its failed reading,
so the engine's fallback applies to that workload alone and the others keep scaling.

The engine is pure and fast, so `reconcile` runs right here on the event loop thread. The loop keeps
`EngineState` between reconciles and the last `Plan` and per-workload `Decision`s (for `explain`).
Everything with a side effect is injected: the clock (`now` for the engine, monotonic seconds), the
sleep and random source of the backoff, the `ClusterView` the snapshot comes from and the `Actuator`
plans go to, so the Kubernetes edge (issue 5) plugs in its own, and tests use fakes. Callers:
`autoscaler run` (`autoscaler.cli`), `benchmarks/reaction.py`, the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ClusterSnapshot,
    Decision,
    EngineState,
    Limits,
    Plan,
    Reading,
    WorkloadSpec,
)
from autoscaler.settings import Settings
from autoscaler.sources.base import Source, describe_exception

log = logging.getLogger("autoscaler.controller")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class ClusterView(Protocol):
    """The cluster as the engine needs it: the replicas of every managed pool now."""

    def snapshot(self) -> ClusterSnapshot: ...


class Actuator(Protocol):
    """Makes a plan happen (resizes Deployments) or, in a dry run, pretends to and logs it."""

    async def apply(self, plan: Plan) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits min(cap, base * factor**(n-1)),
    shortened by up to `jitter` of itself at random, so that many triggers failing together (one
    broker down) do not retry in lockstep."""

    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        exponent = max(attempt - 1, 0)
        # Bound the power before multiplying: 2.0 ** 2000 overflows a float.
        raw = self.cap_seconds if exponent > 64 else self.base_seconds * self.factor**exponent
        capped = min(self.cap_seconds, raw)
        return capped * (1.0 - self.jitter * rng())


@dataclass(frozen=True)
class TriggerKey:
    workload: str
    trigger: str


@dataclass
class _Polled:
    key: TriggerKey
    source: Source
    failures: int = 0
    reads: int = 0


@dataclass
class ControllerStats:
    reconciles: int = 0
    wakeups: int = 0
    reads: int = 0
    apply_errors: int = 0


class Controller:
    """Runs sources and reconciles until `stop()` (or, with `once=True`, after one reconcile).

    `sources` maps each (workload, trigger) to its built source; `workloads` and `limits` are the
    compiled policy files. The controller does not close the sources: whoever built them does."""

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
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        first_reading_timeout: float = 30.0,
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
        self.state = EngineState()
        self.readings: dict[str, dict[str, Reading]] = {w.name: {} for w in self.workloads}
        self.last_plan: Plan | None = None
        self.decisions: dict[str, Decision] = {}
        self.stats = ControllerStats()
        self._polled = [_Polled(key, source) for key, source in sources.items()]
        self._wake = asyncio.Event()
        self._first_round = asyncio.Event()
        self._stopping = asyncio.Event()
        if not self._polled:
            self._first_round.set()

    # -- public -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a reconcile soon (debounced). Sources call it on a change; the cluster watch can too."""
        self.stats.wakeups += 1
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, *, once: bool = False) -> None:
        """Poll and reconcile until `stop()`. The first reconcile waits until every source has
        reported once (or `first_reading_timeout`), so a slow first connect is not counted as a
        failure of its trigger. With `once`, return after that first reconcile."""
        tasks = [asyncio.create_task(self._poll(p), name=f"poll {p.key}") for p in self._polled]
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
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_once(self) -> Plan:
        """One decision over every workload with each trigger's latest reading, then apply it."""
        now = self.clock()
        self._wake.clear()
        plan, self.state = reconcile(
            self.workloads, self.cluster.snapshot(), self.readings, self.state, self.limits, now
        )
        self.stats.reconciles += 1
        self.last_plan = plan
        self.decisions.update(plan.decisions)
        if plan.actions:
            try:
                await self.actuator.apply(plan)
            except Exception as exc:  # the next reconcile retries from a fresh snapshot
                self.stats.apply_errors += 1
                log.error("applying the plan failed", extra={"fields": {"error": describe_exception(exc)}})
        return plan

    # -- internals --------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        next_resync = self.clock() + self.resync_seconds
        while not self._stopping.is_set():
            timeout = max(0.0, next_resync - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._stopping.is_set():
                return
            if self._wake.is_set() and self.debounce_seconds > 0:
                # Let the other sources that saw the same burst report before deciding.
                await self.sleep(self.debounce_seconds)
            await self.reconcile_once()
            next_resync = self.clock() + self.resync_seconds

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
            previous = self.readings[key.workload].get(key.trigger)
            self.readings[key.workload][key.trigger] = reading
            polled.reads += 1
            if polled.reads == 1 and all(p.reads for p in self._polled):
                self._first_round.set()
            if _changed(previous, reading):
                self._log_change(key, previous, reading)
                self.wake()
            if reading.ok:
                polled.failures = 0
                delay = source.poll_seconds - (self.clock() - started)
            else:
                polled.failures += 1
                delay = max(source.poll_seconds, self.backoff.delay(polled.failures, self.rng))
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


def _changed(previous: Reading | None, reading: Reading) -> bool:
    if previous is None:
        return True
    if previous.ok != reading.ok:
        return True
    return previous.value != reading.value


# ----------------------------------------------------------------------------------------------
# Logging: one JSON object per line (log_format json) or `message key=value ...` (text).


class JsonFormatter(logging.Formatter):
    """Structured fields go in `extra={"fields": {...}}`; they are merged into the JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        extra = ""
        if isinstance(fields, dict):
            extra = " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return f"{record.levelname.lower()} {record.name}: {record.getMessage()}{extra}"


_HANDLER_NAME = "autoscaler"


def configure_logging(log_format: str, level: int = logging.INFO) -> logging.Handler:
    """Send the autoscaler's logs to stderr in the operator's format. aio-pika's own reconnect chatter
    (one warning per second while a broker is down) is capped at ERROR: our sources already report
    the failure once, on the flip, with the trigger named."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler (a second call, a test), not whatever else the process installed.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return handler


# ----------------------------------------------------------------------------------------------
# `autoscaler run`


async def run_dry(
    workloads: Sequence[WorkloadSpec],
    limits: Limits,
    settings: Settings,
    *,
    assume_replicas: int | None = None,
    once: bool = False,
    environ: Mapping[str, str] | None = None,
    prometheus_url: str | None = None,
    stop_signals: bool = True,
) -> Controller:
    """Build every trigger's source, run the loop against an in-memory cluster, close everything.
    Returns the controller (its `last_plan` and `decisions` are what happened)."""
    from autoscaler.dryrun import DryRunCluster
    from autoscaler.sources import SourceContext, build_source

    context = SourceContext(
        environ=dict(os.environ) if environ is None else environ, prometheus_url=prometheus_url
    )
    sources: dict[TriggerKey, Source] = {}
    for workload in workloads:
        for trigger in workload.triggers:
            sources[TriggerKey(workload.name, trigger.name)] = build_source(
                workload, trigger, settings, context=context
            )
    cluster = DryRunCluster(workloads, assume_replicas=assume_replicas)
    controller = Controller(
        workloads, limits, sources, cluster, cluster, resync_seconds=settings.resync_seconds
    )
    loop = asyncio.get_running_loop()
    if stop_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, controller.stop)
    try:
        await controller.run(once=once)
    finally:
        if stop_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        for source in sources.values():
            await source.close()
        await context.aclose()
    return controller


def run_main(
    policies: Sequence[str] | None, *, dry_run: bool, once: bool, assume_replicas: int | None
) -> int:
    """`autoscaler run`. Exit 2 for anything the operator must fix first (settings, policy files, no
    cluster access), 0 after a clean stop."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = "AUTOSCALER_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"{name}: {err['msg']}", file=sys.stderr)
        return 2
    if not (dry_run or settings.dry_run):
        print(
            "autoscaler run: only --dry-run is available for now: resizing Deployments needs the "
            "Kubernetes edge, which is not built yet (issue 5). Run `autoscaler run --dry-run`.",
            file=sys.stderr,
        )
        return 2
    handler = configure_logging(settings.log_format)
    try:
        return _run_dry_main(settings, policies, once=once, assume_replicas=assume_replicas)
    finally:
        # `main()` may run inside another program (the tests): leave its logging as it was.
        logging.getLogger().removeHandler(handler)


def _run_dry_main(
    settings: Settings, policies: Sequence[str] | None, *, once: bool, assume_replicas: int | None
) -> int:
    from autoscaler.config import load_config

    paths = list(policies) if policies else [str(settings.policy_dir)]
    config = load_config(paths, settings.allowed_policy_modules, settings.cluster_name)
    if config.errors:
        for error in config.errors:
            print(error)
        print(f"{len(config.errors)} problem(s) in the policy files; not starting", file=sys.stderr)
        return 2
    if not config.workloads:
        print(f"no ScalingPolicy in {', '.join(paths)}; nothing to do", file=sys.stderr)
        return 2
    log.info(
        "starting (dry run)",
        extra={
            "fields": {
                "workloads": [w.name for w in config.workloads],
                "files": list(config.files),
                "resync_seconds": settings.resync_seconds,
            }
        },
    )
    controller = asyncio.run(
        run_dry(config.workloads, config.limits, settings, assume_replicas=assume_replicas, once=once)
    )
    if once:
        for decision in controller.decisions.values():
            print(decision.explain())
    return 0
