"""`autoscaler run` against a real cluster: the wiring of every live part, started and stopped in
the right order.

    policy files --load_config--> workloads, limits ----------------------------.
    kubeconfig --> ApiClient --> KubeCache (watch) --> KubeClusterView --snapshot--> Controller
                              \\-> LeaderElector (Lease) --is_leader--> KubeActuator <--plan--'
    triggers --build_source--> sources --readings--> Controller;  cache changes --wake--> Controller
    PolicyReloader --update_config / set_pools--> Controller, KubeClusterView
    Controller --export_state--> LeaderElector --Lease annotation--> other replicas' adopt_state

Role: the composition root. Nothing here decides anything; each part is built from the operator's
`Settings` and handed its collaborators. Callers: `autoscaler run` (`autoscaler.app.run_main`),
the end-to-end tests (`tests/e2e/`), `benchmarks/api_calls.py`.

Order matters at both ends:
- start: the cache is listed (synced) before the first reconcile, so the first decision never sees
  an empty cluster and scales everything to its minimum; the Lease campaign starts before the
  controller so a single replica is the leader by its first write; the controller is woken by
  every cache change that matters (`KubeCache.add_wakeup`), the resync period being a safety net;
- stop: the controller stops first (no write can start after this), then the Lease is released,
  so the other replica takes over at once and there is never a moment with two writers; then
  the watches, the sources and the HTTP client close. `close(release_lease=False)` skips the
  release and behaves, for the others, like a crash (the end-to-end tests use it).

A dry run (`settings.dry_run`) reads the cluster but writes nothing at all: the actuator only logs,
and there is no leader election, since campaigning writes a Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kubernetes.aio import client
from kubernetes.aio.config import ConfigException

from autoscaler.config import ConfigError, LoadedConfig, load_config
from autoscaler.config.access import SecretAccess
from autoscaler.controller import Actuator, ClusterView, Controller, Observer, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine import compiled as engine_compiled
from autoscaler.engine.types import PoolSpec, TriggerSpec, WorkloadSpec
from autoscaler.kube.actuator import KubeActuator
from autoscaler.kube.cache import KubeCache
from autoscaler.kube.client import make_api_client
from autoscaler.kube.events import EventRecorder
from autoscaler.kube.expectations import Expectations
from autoscaler.kube.fleet import Fleet, Member
from autoscaler.kube.leader import LeaderElector
from autoscaler.kube.nodes import NodeClassifier
from autoscaler.kube.view import KubeClusterView
from autoscaler.reload import PolicyReloader, fingerprint
from autoscaler.settings import MemberCluster, Settings
from autoscaler.sources import Source, SourceContext, build_source
from autoscaler.sources.podload import PodLoadReaders

log = logging.getLogger("autoscaler.live")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

SourceBuilder = Callable[[WorkloadSpec, TriggerSpec, Settings, SourceContext], Source]


class PolicyFilesError(Exception):
    """The policy files are broken at start: there is no last good configuration to run."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the policy files")
        self.errors = tuple(errors)


class StartupError(Exception):
    """Something the operator must fix before the autoscaler can run (no cluster access, say)."""


def cluster_config_available(settings: Settings) -> bool:
    """Whether `make_api_client` has anything to load: a kubeconfig named in the settings or in
    $KUBECONFIG, the in-cluster service account, or ~/.kube/config. `autoscaler run --dry-run`
    without any of them runs against an in-memory cluster instead."""
    if settings.kubeconfig or os.environ.get("KUBECONFIG"):
        return True
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        return True
    return Path("~/.kube/config").expanduser().exists()


def lease_namespace(settings: Settings, service_account_namespace: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """Where the Lease lives: the pod's namespace (Downward API), else the service account's
    (mounted in every pod), else `default` (running outside a cluster)."""
    if settings.pod_namespace:
        return settings.pod_namespace
    with contextlib.suppress(OSError):
        text = service_account_namespace.read_text().strip()
        if text:
            return text
    return "default"


def _build(
    workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
) -> Source:
    return build_source(workload, trigger, settings, context=context)


def _source_identity(workload: WorkloadSpec, trigger: TriggerSpec) -> tuple[object, ...]:
    """What a built source depends on. `TriggerSpec` equality ignores `options` (the engine does
    not read them), but the queue or the query live there; the options objects compare by value."""
    return (workload.namespace, trigger.type, trigger.options)


class SourceSet:
    """The built sources of the running configuration. `rebuild` keeps the source of every trigger
    whose configuration did not change (its connection and latest reading survive a reload) and
    builds the others; the controller closes the ones left out (`Controller.update_config`)."""

    def __init__(self, settings: Settings, context: SourceContext, build: SourceBuilder = _build) -> None:
        self.settings = settings
        self.context = context
        self._build = build
        self._sources: dict[TriggerKey, tuple[tuple[object, ...], Source]] = {}

    @property
    def sources(self) -> dict[TriggerKey, Source]:
        return {key: source for key, (_, source) in self._sources.items()}

    def rebuild(self, workloads: Sequence[WorkloadSpec]) -> dict[TriggerKey, Source]:
        fresh: dict[TriggerKey, tuple[tuple[object, ...], Source]] = {}
        for workload in workloads:
            for trigger in workload.triggers:
                key = TriggerKey(workload.name, trigger.name)
                identity = _source_identity(workload, trigger)
                old = self._sources.get(key)
                if old is not None and old[0] == identity:
                    fresh[key] = old
                else:
                    fresh[key] = (identity, self._build(workload, trigger, self.settings, self.context))
        self._sources = fresh
        return self.sources

    async def aclose(self) -> None:
        for _, source in self._sources.values():
            with contextlib.suppress(Exception):
                await source.close()
        self._sources = {}
        await self.context.aclose()


class LiveAutoscaler:
    """Every live part, built by `start()`, run by `run()`, stopped by `close()`. See the module doc.

    `environ`: where sources read their secrets (default: the process environment). `observer`:
    metrics and health (`autoscaler.telemetry.Telemetry`). `build_source`: how a trigger becomes a
    source (the API-call benchmark passes one that reports fixed values). `clock`: the engine's
    clock, one object for the controller, the sources that stamp readings and the cluster view that
    puts pod times on it; wall-clock seconds, so the engine state in the Lease means the same to
    every replica."""

    def __init__(
        self,
        settings: Settings,
        policy_paths: Sequence[str | Path],
        *,
        environ: Mapping[str, str] | None = None,
        observer: Observer | None = None,
        build_source: SourceBuilder = _build,
        clock: Callable[[], float] = time.time,
        in_memory: bool = False,
        assume_replicas: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # A dry run with no cluster: the same wiring (sources, reload, telemetry) around an
        # in-memory cluster that obeys every plan (`autoscaler.dryrun`), sized from the policies or
        # `assume_replicas`.
        self.in_memory = in_memory
        self.assume_replicas = assume_replicas
        self.memory: DryRunCluster | None = None
        self.policy_paths = tuple(policy_paths)
        self.observer = observer
        self._environ = dict(os.environ) if environ is None else environ
        self._build_source = build_source
        self.config: LoadedConfig | None = None
        # The home cluster's client and cache (the Lease's); every member's in `apis` and `caches`.
        self.api: client.ApiClient | None = None
        self.cache: KubeCache | None = None
        self.apis: list[client.ApiClient] = []
        self.caches: list[KubeCache] = []
        self.view: KubeClusterView | Fleet | None = None
        self.elector: LeaderElector | None = None
        self.actuator: KubeActuator | Fleet | None = None
        # Every member cluster, for their reachability (and, with several, the view and actuator).
        self.fleet: Fleet | None = None
        self.controller: Controller | None = None
        self.reloader: PolicyReloader | None = None
        self.sources: SourceSet | None = None
        # The pod-load readers of idle-first scale-in, looked up by the actuators (`kube.idlefirst`).
        self.pod_loads: PodLoadReaders | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        # Events about member clusters on their way to the home API server (`_reachability_event`).
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._closed = False
        self._seen: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, config: LoadedConfig | None = None) -> None:
        """Load the policies (or take `config`, already loaded), connect, sync the cache, campaign,
        and build the controller. Raises `PolicyFilesError` or `StartupError` for what the operator
        must fix; on any failure whatever was started is closed again."""
        settings = self.settings
        self._seen = fingerprint(self.policy_paths)
        if config is None:
            config = load_config(self.policy_paths, settings.allowed_policy_modules, settings.cluster_name)
        if config.errors:
            raise PolicyFilesError(config.errors)
        self.config = config
        try:
            await self._start(config)
        except BaseException:
            await self.close(release_lease=True)
            raise

    async def _start(self, config: LoadedConfig) -> None:
        settings = self.settings
        view: ClusterView
        actuator: Actuator
        context = SourceContext(
            environ=self._environ, clock=self.clock, prometheus_url=settings.prometheus_url
        )
        if self.in_memory:
            self.memory = DryRunCluster(
                config.workloads, assume_replicas=self.assume_replicas, clock=self.clock
            )
            view = actuator = self.memory
        else:
            self.pod_loads = PodLoadReaders(context, SecretAccess.from_settings(settings))
            await self.pod_loads.rebuild(config.workloads)
            view, actuator = await self._start_kubernetes(config)

        self.sources = SourceSet(settings, context, self._build_source)
        sources = self.sources.rebuild(config.workloads)
        self.controller = Controller(
            config.workloads,
            config.limits,
            sources,
            view,
            actuator,
            resync_seconds=settings.resync_seconds,
            clock=self.clock,
            observer=self.observer,
        )
        for cache in self.caches:
            cache.add_wakeup(self.controller.wake)
        if self.elector is not None:
            self.elector.start()
        elif self.observer is not None:
            # Without an election this replica is the only writer; a dry run against a cluster
            # writes nothing (the real leader reports the fleet), one in memory acts on its own
            # cluster and reports it.
            self.observer.set_leader(self.in_memory or not settings.dry_run)
        self.reloader = PolicyReloader(
            self.policy_paths, settings, self._apply_config, current=config, seen=self._seen
        )
        log.info(
            "started",
            extra={
                "fields": {
                    "workloads": [w.name for w in config.workloads],
                    "files": list(config.files),
                    "cluster": "in memory" if self.in_memory else settings.cluster_name,
                    "clusters": [m.name for m in self.fleet.members] if self.fleet is not None else [],
                    "namespaces": list(settings.namespaces) or "all",
                    "identity": settings.pod_name,
                    "leader_election": self.elector is not None,
                    "dry_run": settings.dry_run,
                    "engine": "compiled" if engine_compiled() else "interpreted",
                }
            },
        )

    async def _start_kubernetes(self, config: LoadedConfig) -> tuple[ClusterView, Actuator]:
        """Connect to every member cluster (the home cluster alone without `Settings.clusters`),
        sync their watch caches, and build the views, the Lease campaign (home cluster only) and
        the actuators; several members are merged into one view and actuator (`kube.fleet`)."""
        settings = self.settings
        members = settings.members()
        home = members[0]
        if home.kubeconfig and not Path(home.kubeconfig).is_file():
            raise StartupError(f"AUTOSCALER_KUBECONFIG: {home.kubeconfig}: no such file")
        if not cluster_config_available(settings):
            raise StartupError(
                "no Kubernetes configuration: not in a pod, no AUTOSCALER_KUBECONFIG, no $KUBECONFIG, "
                "no ~/.kube/config (use --dry-run to try the policies without a cluster)"
            )
        for member in members[1:]:
            if member.kubeconfig and not Path(member.kubeconfig).is_file():
                raise StartupError(f"AUTOSCALER_CLUSTERS: {member.name}: {member.kubeconfig}: no such file")
        connected: list[tuple[MemberCluster, client.ApiClient, KubeCache]] = []
        for member in members:
            try:
                api = await make_api_client(member.kubeconfig, member.context)
            except (ConfigException, OSError) as exc:
                where = "" if member is home else f" {member.name}"
                raise StartupError(f"no access to the Kubernetes cluster{where}: {exc}") from exc
            self.apis.append(api)
            cache = KubeCache(api, namespaces=settings.namespaces, clock=self.clock)
            self.caches.append(cache)
            connected.append((member, api, cache))
            await cache.start()
        for member, _, cache in connected:
            try:
                await cache.wait_synced(settings.cache_sync_timeout_seconds)
            except TimeoutError as exc:
                where = (
                    "the watch cache" if len(members) == 1 else f"the watch cache of cluster {member.name}"
                )
                raise StartupError(
                    f"the watch cache{where} did not sync within {settings.cache_sync_timeout_seconds:g}s "
                    "(API server unreachable, or RBAC denies list/watch of deployments, pods or nodes?)"
                ) from exc
        self.api, self.cache = connected[0][1], connected[0][2]

        if settings.leader_election and not settings.dry_run:
            self.elector = LeaderElector(
                self.api,
                namespace=lease_namespace(settings),
                identity=settings.pod_name,
                name=settings.lease_name,
                lease_duration=settings.lease_duration_seconds,
                renew_deadline=settings.lease_renew_deadline_seconds,
                retry_period=settings.lease_retry_seconds,
                on_change=self._leadership_changed,
                state_provider=self._export_state,
                on_state=self._adopt_state,
            )
        parts = [self._member(member.name, api, cache) for member, api, cache in connected]
        self.fleet = Fleet(
            parts,
            _pools(config.workloads) if len(parts) > 1 else (),
            clock=self.clock,
            on_reachability=self._reachability_event(settings, parts[0].actuator.events),
        )
        if len(parts) == 1:
            # The home cluster alone: its own view and actuator, every pool looked up there.
            self.view, self.actuator = parts[0].view, parts[0].actuator
            self.view.set_pools(_pools(config.workloads))
            _warn_other_clusters(config.workloads, settings.cluster_name)
            return self.view, self.actuator
        return self.fleet, self.fleet

    def _reachability_event(
        self, settings: Settings, events: EventRecorder
    ) -> Callable[[str, bool], None] | None:
        """An Event on this replica's own Pod in the home cluster when a member cluster is lost or
        found again (besides the log line and the per-cluster gauges). Only in a pod: outside one
        there is no Pod to name."""
        namespace = settings.pod_namespace
        if not namespace:
            return None
        pending: set[asyncio.Task[None]] = self._event_tasks

        def tell(cluster: str, up: bool) -> None:
            if up:
                reason, kind = "ClusterReachable", "Normal"
                message = f"cluster {cluster} reachable again: its watches resumed, scaling there resumes"
            else:
                reason, kind = "ClusterUnreachable", "Warning"
                message = (
                    f"cluster {cluster} unreachable: its pools hold, their last known GPUs keep counting "
                    "against the company cap, nothing is written there"
                )
            task = asyncio.get_running_loop().create_task(
                events.about_pod(settings.pod_name, namespace, reason, message, kind)
            )
            pending.add(task)  # a reference until it is done: the loop keeps only weak ones
            task.add_done_callback(pending.discard)

        return tell

    def _member(self, name: str, api: client.ApiClient, cache: KubeCache) -> Member:
        """One cluster's view and actuator; writes only while this replica holds the home Lease."""
        settings = self.settings
        # What the actuator wrote, read by the view until the watch shows it (`kube.expectations`).
        expectations = Expectations()
        view = KubeClusterView(
            cache,
            cluster=name,
            classifier=NodeClassifier(gpu_type_label=settings.gpu_type_label),
            clock=self.clock,
            expectations=expectations,
        )
        # Events name the pod (Downward API), not the OS hostname: `kubectl describe` then tells
        # which replica resized.
        events = EventRecorder(api, instance=settings.pod_name)
        actuator = KubeActuator(
            api,
            cache,
            leader=self.elector,
            events=events,
            dry_run=settings.dry_run,
            expectations=expectations,
            pod_loads=self.pod_loads.get if self.pod_loads is not None else lambda _pool: None,
        )
        return Member(name, cache, view, actuator)

    async def run(self, *, once: bool = False, stop_event: asyncio.Event | None = None) -> None:
        """Reconcile until `stop()` or `stop_event`, with hot reload; with `once`, one decision
        (as the leader, if the Lease can be won within its duration) and return. Call `start()`
        first; `close()` after."""
        controller = self.controller
        if controller is None or self.reloader is None:
            raise RuntimeError("LiveAutoscaler.run() before start()")
        if once and self.elector is not None:
            await self._await_leadership(
                self.settings.lease_duration_seconds + self.settings.lease_retry_seconds
            )
        if not once:
            self._reload_task = asyncio.create_task(self.reloader.run(), name="policy-reload")
        waiters = [asyncio.create_task(self._stop.wait(), name="stop")]
        if stop_event is not None:
            waiters.append(asyncio.create_task(stop_event.wait(), name="stop-event"))
        run_task = asyncio.create_task(controller.run(once=once), name="controller")
        self._run_task = run_task
        try:
            await asyncio.wait([run_task, *waiters], return_when=asyncio.FIRST_COMPLETED)
        finally:
            controller.stop()
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            # The loop ends at its next await; its exception, if any, is the caller's to see.
            await run_task

    @property
    def closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        """Ask `run()` to return (signal handlers call it)."""
        self._stop.set()

    async def close(self, *, release_lease: bool = True) -> None:
        """Stop everything, in the order the module doc gives. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.controller is not None:
            self.controller.stop()
        if self._run_task is not None:
            # A reconcile may be writing: let it finish before the Lease goes, or the next leader
            # could write while it does.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._run_task
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        if self.elector is not None:
            await self.elector.stop(release=release_lease)
        for cache in self.caches:
            await cache.stop()
        if self.sources is not None:
            await self.sources.aclose()
        if self.pod_loads is not None:
            await self.pod_loads.aclose()
        for api in self.apis:
            await api.close()  # type: ignore[no-untyped-call]
        log.info("stopped", extra={"fields": {"released_lease": release_lease and self.elector is not None}})

    # ---- internals ---------------------------------------------------------------------------

    async def _await_leadership(self, timeout: float) -> None:
        elector = self.elector
        assert elector is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while not elector.is_leader and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(min(0.1, self.settings.lease_retry_seconds))
        if not elector.is_leader:
            log.warning("not the leader after %.1fs: this decision will not be applied", timeout)

    def _leadership_changed(self, leader: bool) -> None:
        if self.controller is not None:
            self.controller.leadership_changed(leader)

    # The engine state travels in the Lease (`kube.leader`): the leader writes it, the others adopt
    # it, so a new leader resumes where the old one stopped (`Controller.export_state`).

    def _export_state(self) -> str | None:
        return self.controller.export_state() if self.controller is not None else None

    def _adopt_state(self, text: str) -> None:
        if self.controller is not None:
            self.controller.adopt_state(text)

    async def _apply_config(self, config: LoadedConfig) -> None:
        """The reloader's callback: new sources, workloads and limits to the controller, the new
        pools to the view (and so to the cache's idea of what matters)."""
        assert self.controller is not None and self.sources is not None
        sources = self.sources.rebuild(config.workloads)
        await self.controller.update_config(config.workloads, config.limits, sources)
        if self.pod_loads is not None:
            await self.pod_loads.rebuild(config.workloads)
        if self.view is not None:
            self.view.set_pools(_pools(config.workloads))
            if self.view is not self.fleet:
                _warn_other_clusters(config.workloads, self.settings.cluster_name)
        if self.memory is not None:
            self.memory.set_workloads(config.workloads)
        self.config = config


def _pools(workloads: Sequence[WorkloadSpec]) -> list[PoolSpec]:
    return [pool for workload in workloads for pool in workload.pools]


def _warn_other_clusters(workloads: Sequence[WorkloadSpec], cluster: str) -> None:
    # Free GPUs are reported for this cluster only; a pool placed in another one would never see
    # any, and its Deployment is looked up here anyway. Worth a line in the log, not a refusal:
    # limits may list several clusters for documentation.
    others = sorted({p.cluster for w in workloads for p in w.pools if p.cluster != cluster})
    if others:
        log.warning(
            "pools name clusters other than this one (%s): %s; their free GPUs are unknown here",
            cluster,
            ", ".join(others),
        )


async def run_live(
    settings: Settings,
    policy_paths: Sequence[str | Path],
    *,
    once: bool = False,
    stop_event: asyncio.Event | None = None,
    environ: Mapping[str, str] | None = None,
    observer: Observer | None = None,
) -> LiveAutoscaler:
    """Start, run until stopped (or one decision with `once`), close. Returns the stopped
    autoscaler, whose `controller` holds the last plan and decisions."""
    live = LiveAutoscaler(settings, policy_paths, environ=environ, observer=observer)
    await live.start()
    try:
        await live.run(once=once, stop_event=stop_event)
    finally:
        await live.close()
    return live
