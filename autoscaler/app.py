"""`autoscaler run`: settings, logging, the policy files, then the live controller against the
cluster (`autoscaler.live`) or a dry run against an in-memory one (`autoscaler.dryrun`).

Role: the command's composition and its exit codes; the loop itself is `autoscaler.controller`,
the cluster wiring `autoscaler.live`. Callers: `autoscaler.cli`, tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from autoscaler.controller import Controller, TriggerKey, wall_time
from autoscaler.engine.types import Decision, Limits, WorkloadSpec
from autoscaler.logs import configure_logging
from autoscaler.settings import Settings
from autoscaler.sources.base import Source

if TYPE_CHECKING:
    from autoscaler.telemetry import Telemetry

log = logging.getLogger("autoscaler.app")


def explain(decision: Decision) -> str:
    """`Decision.explain` with its time as a date: the engine's own text says `t=<seconds>`, which
    is what the simulator's virtual clock wants, not what an operator of the live loop does."""
    _, _, steps = decision.explain().partition("\n")
    return f"{decision.workload} at {wall_time(decision.at)}:\n{steps}"


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

    clock = time.time  # one clock for the readings and the engine's `now`
    context = SourceContext(
        environ=dict(os.environ) if environ is None else environ, clock=clock, prometheus_url=prometheus_url
    )
    sources: dict[TriggerKey, Source] = {}
    for workload in workloads:
        for trigger in workload.triggers:
            sources[TriggerKey(workload.name, trigger.name)] = build_source(
                workload, trigger, settings, context=context
            )
    cluster = DryRunCluster(workloads, assume_replicas=assume_replicas)
    controller = Controller(
        workloads, limits, sources, cluster, cluster, resync_seconds=settings.resync_seconds, clock=clock
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
    """`autoscaler run`. Against the cluster (`autoscaler.live`) when one is configured; a dry run
    with no cluster configuration (or with `--assume-replicas`) runs against an in-memory cluster.
    Exit 2 for anything the operator must fix first (settings, policy files, no cluster access),
    0 after a clean stop."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = (
                "AUTOSCALER_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "AUTOSCALER_*"
            )
            print(f"{name}: {err['msg']}", file=sys.stderr)
        return 2
    if dry_run and not settings.dry_run:
        settings = settings.model_copy(update={"dry_run": True})
    handler = configure_logging(settings.log_format)
    try:
        from autoscaler.live import cluster_config_available

        if settings.dry_run and (assume_replicas is not None or not cluster_config_available(settings)):
            return _run_dry_main(settings, policies, once=once, assume_replicas=assume_replicas)
        return _run_live_main(settings, policies, once=once)
    finally:
        # `main()` may run inside another program (the tests): leave its logging as it was.
        logging.getLogger().removeHandler(handler)


def _run_live_main(settings: Settings, policies: Sequence[str] | None, *, once: bool) -> int:
    from autoscaler.live import LiveAutoscaler, PolicyFilesError, StartupError

    paths = _policy_paths(settings, policies)

    async def main() -> LiveAutoscaler:
        # /metrics, /healthz and /readyz for the probes and Prometheus; a one-shot run (a smoke test)
        # serves nothing, so it never fights a running autoscaler for the port.
        telemetry = None if once else _telemetry(settings)
        if telemetry is not None:
            await telemetry.start()
        live = LiveAutoscaler(settings, paths, observer=telemetry)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, live.stop)
        try:
            await live.start()
            try:
                await live.run(once=once)
            finally:
                await live.close()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if telemetry is not None:
                await telemetry.stop()
        return live

    try:
        live = asyncio.run(main())
    except PolicyFilesError as exc:
        return _refuse_policy_files(exc.errors)
    except StartupError as exc:
        print(f"autoscaler run: {exc}", file=sys.stderr)
        return 2
    if once and live.controller is not None:
        for decision in live.controller.decisions.values():
            print(explain(decision))
    return 0


def _policy_paths(settings: Settings, policies: Sequence[str] | None) -> list[str]:
    return list(policies) if policies else [str(settings.policy_dir)]


def _refuse_policy_files(errors: Sequence[object]) -> int:
    """Print each problem as `file:line: field: message` and give the exit code: no last good
    configuration exists at start, so the autoscaler does not start."""
    for error in errors:
        print(error)
    print(f"{len(errors)} problem(s) in the policy files; not starting", file=sys.stderr)
    return 2


def _telemetry(settings: Settings) -> Telemetry:
    from autoscaler.telemetry import Telemetry

    return Telemetry.from_settings(settings)


def _run_dry_main(
    settings: Settings, policies: Sequence[str] | None, *, once: bool, assume_replicas: int | None
) -> int:
    from autoscaler.config import load_config

    paths = _policy_paths(settings, policies)
    config = load_config(paths, settings.allowed_policy_modules, settings.cluster_name)
    if config.errors:
        return _refuse_policy_files(config.errors)
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
            print(explain(decision))
    return 0
