"""`autoscaler run`: settings, logging, the policy files, then the live controller against the
cluster (`autoscaler.live`) or a dry run against an in-memory one (`autoscaler.dryrun`).

Role: the command's composition and its exit codes; the loop itself is `autoscaler.controller`,
the cluster wiring `autoscaler.live`. Callers: `autoscaler.cli`, tests.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from autoscaler.controller import Controller, observers, wall_time
from autoscaler.engine.types import Decision, Limits, WorkloadSpec
from autoscaler.logs import configure_logging
from autoscaler.settings import Settings

if TYPE_CHECKING:
    from autoscaler.config import LoadedConfig
    from autoscaler.external.scaler import ExternalScalerServer
    from autoscaler.live import LiveAutoscaler
    from autoscaler.telemetry import Telemetry


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
    stop_signals: bool = True,
) -> Controller:
    """`workloads` against an in-memory cluster, through the same composition as `autoscaler run`
    (`LiveAutoscaler` with `in_memory`), with no policy files to reload. Returns the controller
    (its `last_plan` and `decisions` are what happened)."""
    from autoscaler.config import LoadedConfig
    from autoscaler.live import LiveAutoscaler

    live = LiveAutoscaler(
        settings.model_copy(update={"dry_run": True}),
        (),
        environ=environ,
        in_memory=True,
        assume_replicas=assume_replicas,
    )
    await _run(
        live, once=once, stop_signals=stop_signals, config=LoadedConfig(tuple(workloads), limits, (), ())
    )
    assert live.controller is not None
    return live.controller


async def _run(
    live: LiveAutoscaler,
    *,
    once: bool,
    stop_signals: bool = True,
    telemetry: Telemetry | None = None,
    config: LoadedConfig | None = None,
    scaler: ExternalScalerServer | None = None,
) -> None:
    """Start, run until a signal (or one decision with `once`), close, in that order. The KEDA
    external scaler listens before the controller starts (KEDA gets UNAVAILABLE, not a refused
    connection, until the first decision) and stops after it closed."""
    if telemetry is not None:
        await telemetry.start()
    if scaler is not None:
        try:
            await scaler.start()
        except BaseException:
            if telemetry is not None:
                await telemetry.stop()
            raise
    loop = asyncio.get_running_loop()
    if stop_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, live.stop)
    try:
        await live.start(config)
        if telemetry is not None and live.fleet is not None:
            # Several clusters: each one's reachability on /metrics and /readyz.
            telemetry.report_clusters(live.fleet.health)
        try:
            await live.run(once=once)
        finally:
            await live.close()
    finally:
        if stop_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if scaler is not None:
            await scaler.stop()
        if telemetry is not None:
            await telemetry.stop()


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

        in_memory = settings.dry_run and (
            assume_replicas is not None or not cluster_config_available(settings)
        )
        return _run_main(settings, policies, once=once, in_memory=in_memory, assume_replicas=assume_replicas)
    finally:
        # `main()` may run inside another program (the tests): leave its logging as it was.
        logging.getLogger().removeHandler(handler)


def _run_main(
    settings: Settings,
    policies: Sequence[str] | None,
    *,
    once: bool,
    in_memory: bool,
    assume_replicas: int | None,
) -> int:
    """Against the cluster, or (`in_memory`, a dry run) an in-memory one: the same wiring, hot
    reload and /metrics either way."""
    from autoscaler.live import LiveAutoscaler, PolicyFilesError, StartupError

    paths = _policy_paths(settings, policies)
    live = LiveAutoscaler(settings, paths, in_memory=in_memory, assume_replicas=assume_replicas)

    async def main() -> None:
        # /metrics, /healthz and /readyz for the probes and Prometheus, and KEDA's external scaler
        # when its port is set; a one-shot run (a smoke test) serves nothing, so it never fights a
        # running autoscaler for the ports.
        telemetry = None if once else _telemetry(settings)
        scaler = None if once else _external_scaler(settings)
        live.observer = observers(telemetry, scaler.board if scaler is not None else None)
        await _run(live, once=once, telemetry=telemetry, scaler=scaler)

    try:
        asyncio.run(main())
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


def _external_scaler(settings: Settings) -> ExternalScalerServer | None:
    if settings.external_scaler_port is None:
        return None  # off: grpc is not even imported
    from autoscaler.external.scaler import ExternalScalerServer

    return ExternalScalerServer.from_settings(settings)
