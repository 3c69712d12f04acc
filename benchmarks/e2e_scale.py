"""The live wiring at fleet scale on the fake API server: the watch cache's memory, and the time from
a reading change to the scale write.

    python benchmarks/e2e_scale.py [--workloads 10000] [--probes 5] [--replicas 0]

The real live wiring (`autoscaler.live.LiveAutoscaler`: watch cache, cluster view, actuator,
controller) runs against the HTTP fake API server of the tests (tests/kube/fakeapi.py), both in this
process, with the real `kubernetes.aio` client in between. Each workload has two pools (regular A100
+ SaladCloud virtual), so 10,000 workloads are 20,000 Deployments, and one trigger whose source
reports a fixed value (no broker): 0, so nothing runs, or `--replicas` replicas' worth. The sources
poll every 30 s, except the probes' every 0.1 s, so that 10,000 pollers do not take the core the
engine needs.

Prints: the time to fill the fake and for `live.start()` (list every Deployment, Pod and Node and
parse them, load the policies); the memory of the watch cache (the deep size of its items and
indexes) and the process's RSS growth over `start()` (cache, client, configuration, engine inputs
and whatever the listing left behind); then, for each probe workload in turn, the time from its
source's value changing to the fake receiving the scale write of its A100 pool, split into the
wait for the source's next poll and the rest (debounce, one incremental reconcile of the fleet,
the write).

Then the CPU time of one reconcile with nothing to change, and of the cluster view's snapshot in it.

Measured (2 idle cores, 10,000 workloads, 5 probes): `live.start()` 5.7 s, the watch cache 21,252
objects in 8.8 MB (439 B per Deployment), RSS +199 MB over `start()`; reading -> write 152 ms
(median; 336 ms before the cluster view reused unchanged statuses and the incremental engine stopped
recomputing every workload of a GPU type when a pod was scheduled; 2.2 s with the full reconcile and
the loader that kept every document's YAML nodes, when `start()` grew RSS by 570 MB).

Limit of the fake: its ReplicaSet controller and scheduler scan every pod for each Deployment they
touch and sort the nodes for each pending pod, so running pods cost it O(pods^2); with `--replicas
0` only the probes' pods exist. `--replicas 1` shows where it stops being quick.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.kube.fakeapi

from autoscaler.cli import tune_gc
from autoscaler.engine.types import Reading, TriggerSpec, WorkloadSpec
from autoscaler.kube.cache import KubeCache
from autoscaler.live import LiveAutoscaler
from autoscaler.settings import Settings
from autoscaler.sources import Source, SourceContext
from benchmarks.api_calls import NAMESPACE, SALAD_TAINT, SALAD_TOLERATION, TARGET_PER_REPLICA, policies
from benchmarks.engine import deep_size, engine_build
from tests.kube.fakeapi import FakeKube

QUIET_POLL_SECONDS = 30.0
PROBE_POLL_SECONDS = 0.1


class ProbeSource:
    """Reports `value`, and notes (monotonic) when a read first returned the latest value set."""

    def __init__(self, value: float, poll_seconds: float, clock: Callable[[], float]) -> None:
        self.value = value
        self.poll_seconds = poll_seconds
        self.seen_at: float | None = None
        self._clock = clock

    def set(self, value: float) -> None:
        self.value, self.seen_at = value, None

    async def read(self) -> Reading:
        if self.seen_at is None:
            self.seen_at = time.monotonic()
        return Reading(self.value, self._clock())

    async def close(self) -> None:
        return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def cache_bytes(cache: KubeCache) -> int:
    """The deep size of what the cache holds: every reflector's items and the pod indexes."""
    held = [r.items for r in cache.reflectors]
    held += [cache._by_deployment, cache._by_node]  # private, but exactly what is measured
    return deep_size(held)


async def scale_write_after(fake: FakeKube, deployment: str, since: int, timeout: float) -> float:
    """Monotonic time of the first scale write to `deployment` among the fake's writes from `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in fake.writes[since:]:
            if w.path.endswith(f"/deployments/{deployment}/scale") and w.status < 300:
                return w.at
        await asyncio.sleep(0.005)
    raise SystemExit(f"no scale write to {deployment} within {timeout:.0f}s")


async def measure(workloads: int, probes: int, replicas: int) -> None:
    fake = FakeKube(ready_delay={"regular": 0.05, "virtual": 0.2})
    await fake.start()
    sources: dict[str, ProbeSource] = {}
    probe_names = [f"w{i:03d}" for i in range(probes)]

    def build(
        workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
    ) -> Source:
        poll = PROBE_POLL_SECONDS if workload.name in probe_names else QUIET_POLL_SECONDS
        source = ProbeSource(replicas * TARGET_PER_REPLICA, poll, context.clock)
        sources[workload.name] = source
        return source

    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        for n in range(workloads * max(replicas, 1) // 8 + 1):
            fake.add_node(f"gpu-{n}", 8, labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
        fake.add_node("salad-vk", 1000, labels={"type": "virtual-kubelet"}, taints=[SALAD_TAINT])
        for i in range(workloads):
            fake.add_deployment(NAMESPACE, f"w{i:03d}-a100", replicas=replicas)
            fake.add_deployment(
                NAMESPACE,
                f"w{i:03d}-salad",
                node_selector={"type": "virtual-kubelet"},
                tolerations=[SALAD_TOLERATION],
            )
            if i and i % 1000 == 0:
                print(f"  fake: {i} workloads in {time.monotonic() - started:.1f}s", flush=True)
        fill = time.monotonic() - started
        print(
            f"fake API server: {2 * workloads} Deployments, {len(fake.store['pods'])} pods, "
            f"{len(fake.store['nodes'])} nodes, filled in {fill:.1f}s",
            flush=True,
        )
        # The loader takes at most 1,000 documents per file.
        docs = policies(workloads).split("---\n")
        policy_files = []
        for k in range(0, len(docs), 500):
            policy_files.append(Path(tmp) / f"policies-{k // 500:03d}.yaml")
            policy_files[-1].write_text("---\n".join(docs[k : k + 500]))
        settings = Settings(
            kubeconfig=str(fake.write_kubeconfig(Path(tmp) / "kubeconfig")),
            namespaces=[NAMESPACE],
            cluster_name="bench",
            resync_seconds=3600,
            leader_election=False,
            log_format="text",
        )
        live = LiveAutoscaler(settings, policy_files, environ={}, build_source=build)
        gc.collect()
        rss_before = rss_bytes()
        started = time.monotonic()
        await live.start()
        took = time.monotonic() - started
        gc.collect()
        grown = rss_bytes() - rss_before
        cache, controller = live.cache, live.controller
        assert cache is not None and controller is not None
        held = cache_bytes(cache)
        objects = sum(len(r.items) for r in cache.reflectors)
        print(
            f"live.start() (list + parse + policies): {took:.1f}s; watch cache: {objects} objects, "
            f"{held / 1e6:.1f} MB ({held / (2 * workloads):.0f} B per Deployment); "
            f"RSS +{grown / 1e6:.0f} MB over start()",
            flush=True,
        )
        run = asyncio.create_task(live.run())
        try:
            # The first reconciles, until the loop is idle (nothing to do with every reading at its
            # starting value): no reconcile for 2 s.
            last = -1
            while not (controller.stats.reconciles and controller.stats.reconciles == last):
                last = controller.stats.reconciles
                await asyncio.sleep(2.0)
            total, polled, rest = [], [], []
            for k, name in enumerate(probe_names):
                since = len(fake.writes)
                t0 = time.monotonic()
                sources[name].set((replicas + 1) * TARGET_PER_REPLICA)
                wrote = await scale_write_after(fake, f"{name}-a100", since, timeout=120)
                seen = sources[name].seen_at
                assert seen is not None
                total.append(wrote - t0)
                polled.append(seen - t0)
                rest.append(wrote - seen)
                print(
                    f"  probe {k}: {name} {replicas} -> {replicas + 1} replicas: write after "
                    f"{(wrote - t0) * 1e3:.0f} ms (poll wait {(seen - t0) * 1e3:.0f} ms, then "
                    f"{(wrote - seen) * 1e3:.0f} ms)",
                    flush=True,
                )
                await asyncio.sleep(0.5)
            print(
                f"reading change -> scale write, median of {probes}: {statistics.median(total) * 1e3:.0f} ms "
                f"(poll wait {statistics.median(polled) * 1e3:.0f} ms; reading -> write "
                f"{statistics.median(rest) * 1e3:.0f} ms); {controller.stats.reconciles} reconciles so far"
            )
            # One reconcile with nothing to change, and the cluster view's part of it: CPU time.
            snapshots, reconciles = [], []
            for _ in range(5):
                t0 = time.process_time()
                controller.cluster.snapshot()
                snapshots.append(time.process_time() - t0)
                t0 = time.process_time()
                await controller.reconcile_once()
                reconciles.append(time.process_time() - t0)
            reconcile_ms = statistics.median(reconciles) * 1e3
            snapshot_ms = statistics.median(snapshots) * 1e3
            print(
                f"one reconcile with nothing to change, median of 5: {reconcile_ms:.0f} ms of CPU, "
                f"of which the cluster view's snapshot {snapshot_ms:.0f} ms"
            )
        finally:
            live.stop()
            await run
            await live.close()
            await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workloads", type=int, default=10000)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=0, help="replicas each A100 pool starts with")
    args = parser.parse_args()
    # The GC thresholds the `autoscaler` command runs with: at CPython's defaults a full collection
    # walks the whole watch cache and fleet every few reconciles (400 ms at 10,000 workloads).
    tune_gc()
    # This script puts its own checkout first on sys.path (for the fake API server), so the engine
    # is that checkout's: say which, as benchmarks/engine.py does.
    print(f"engine: {engine_build()}", flush=True)
    asyncio.run(measure(args.workloads, args.probes, args.replicas))


if __name__ == "__main__":
    main()
