"""Kubernetes API requests per reconcile, for a fleet of workloads on the fake API server.

    python benchmarks/api_calls.py [--workloads 100] [--reconciles 50] [--clusters 1]

The real live wiring (`autoscaler.live.LiveAutoscaler`: watch cache, cluster view, actuator,
controller) runs against the HTTP fake API server of the tests (tests/kube/fakeapi.py), whose
request log counts every request it receives. Each workload has two pools (regular A100 + SaladCloud
virtual) and one trigger whose source reports a fixed value (no broker needed), so after the
cluster settles nothing changes and a reconcile should cost nothing: reads come from the watch
cache, and the actuator writes only when a target differs. Then one workload's demand changes, and
the requests of that change are counted too. With `--clusters N`, one `autoscaler run` manages N
clusters (issue 12), each its own fake API server with `--workloads` workloads, and the requests
of all of them are counted together.

Counted: reads (GET/LIST requests, except the long-running WATCH connections themselves, which are
opened once and then stream) and writes (every other verb: scale writes and Events). Leader
election is off: its Lease renewals (one GET and one PUT per retry period) do not depend on
reconciles. Prints the per-reconcile figures for both phases; exits 1 if the steady state is not
zero reads and zero writes per reconcile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.kube.fakeapi

from autoscaler.engine.types import Reading, TriggerSpec, WorkloadSpec
from autoscaler.live import LiveAutoscaler
from autoscaler.settings import MemberCluster, Settings
from autoscaler.sources import Source, SourceContext
from tests.kube.fakeapi import FakeKube

NAMESPACE = "bench"
TARGET_PER_REPLICA = 10.0
SALAD_TAINT = {"key": "virtual-kubelet.io/provider", "value": "saladcloud", "effect": "NoSchedule"}
SALAD_TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}


class FixedSource:
    """A trigger that reports `value`; the benchmark changes it to change one workload's demand."""

    def __init__(self, value: float, clock: Callable[[], float]) -> None:
        self.value = value
        self.poll_seconds = 0.5
        self._clock = clock

    async def read(self) -> Reading:
        return Reading(self.value, self._clock())

    async def close(self) -> None:
        return None


def cluster_name(k: int) -> str:
    return "bench" if k == 0 else f"bench-{k}"


def workload_name(k: int, i: int) -> str:
    """Deployment names are unique across clusters (pool keys are `namespace/deployment`)."""
    return f"w{i:03d}" if k == 0 else f"c{k}-w{i:03d}"


def policies(workloads: int, clusters: int = 1) -> str:
    docs = []
    for k, i in ((k, i) for k in range(clusters) for i in range(workloads)):
        name, cluster = workload_name(k, i), cluster_name(k)
        docs.append(
            f"""apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  maxReplicas: 10
  pools:
    - {{deployment: {name}-a100, cluster: {cluster}, nodeClass: regular, gpuType: A100}}
    - {{deployment: {name}-salad, cluster: {cluster}, nodeClass: virtual, provider: salad, gpuType: RTX4090}}
  triggers:
    - {{name: backlog, type: prometheus, serverAddress: 'http://unused:9090', query: 'backlog',
       target: {TARGET_PER_REPLICA}}}
  behavior:
    scaleUp: {{stabilizationSeconds: 0}}
    scaleDown: {{stabilizationSeconds: 0}}
"""
        )
    listed = ", ".join(
        f"{{name: {cluster_name(k)}, gpuTypes: {{A100: 1000, RTX4090: 1000}}}}" for k in range(clusters)
    )
    docs.append(
        f"""apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {{name: company}}
spec:
  companyMaxGpus: {1000 * clusters}
  clusters: [{listed}]
"""
    )
    return "---\n".join(docs)


@dataclass
class Window:
    reconciles: int
    reads: int
    writes: int
    scale_writes: int
    event_writes: int
    watches_opened: int

    def line(self, label: str) -> str:
        n = max(self.reconciles, 1)
        return (
            f"{label}: {self.reconciles} reconciles, {self.reads} reads ({self.reads / n:.2f}/reconcile), "
            f"{self.writes} writes ({self.writes / n:.2f}/reconcile: {self.scale_writes} scale, "
            f"{self.event_writes} events), watch connections opened: {self.watches_opened}"
        )


def requests(fakes: list[FakeKube]) -> list[int]:
    return [len(fake.requests) for fake in fakes]


def window(fakes: list[FakeKube], since: list[int], reconciles: int) -> Window:
    reads = writes = scales = events = watches = 0
    logged = [r for fake, start in zip(fakes, since, strict=True) for r in fake.requests[start:]]
    for verb, path, _ in logged:
        if verb == "GET":
            if "watch=" in path:
                watches += 1
            else:
                reads += 1
        else:
            writes += 1
            if "/scale" in path:
                scales += 1
            elif "/events" in path:
                events += 1
    return Window(reconciles, reads, writes, scales, events, watches)


async def settle(
    live: LiveAutoscaler, fakes: list[FakeKube], quiet_reconciles: int = 3, timeout: float = 60
) -> None:
    """Until every pod is ready and several reconciles in a row plan nothing."""
    controller = live.controller
    assert controller is not None
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < quiet_reconciles:
        if time.monotonic() > deadline:
            raise SystemExit("the cluster did not settle")
        plan = await controller.reconcile_once()
        deployments = [d for fake in fakes for d in fake.store["deployments"].values()]
        all_ready = all(d["status"].get("readyReplicas", 0) == d["spec"]["replicas"] for d in deployments)
        quiet = quiet + 1 if not plan.actions and all_ready else 0
        await asyncio.sleep(0.05)


async def measure(workloads: int, reconciles: int, clusters: int = 1) -> bool:
    fakes = [FakeKube(ready_delay={"regular": 0.05, "virtual": 0.2}) for _ in range(clusters)]
    for fake in fakes:
        await fake.start()
    sources: dict[str, FixedSource] = {}

    def build(
        workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
    ) -> Source:
        # Two replicas each: 20 / 10 per replica.
        source = FixedSource(2 * TARGET_PER_REPLICA, context.clock)
        sources[workload.name] = source
        return source

    with tempfile.TemporaryDirectory() as tmp:
        for k, fake in enumerate(fakes):
            for n in range(workloads * 2 // 8 + 1):
                fake.add_node(f"gpu-{n}", 8, labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
            fake.add_node("salad-vk", 1000, labels={"type": "virtual-kubelet"}, taints=[SALAD_TAINT])
            for i in range(workloads):
                name = workload_name(k, i)
                fake.add_deployment(NAMESPACE, f"{name}-a100")
                fake.add_deployment(
                    NAMESPACE,
                    f"{name}-salad",
                    node_selector={"type": "virtual-kubelet"},
                    tolerations=[SALAD_TOLERATION],
                )
        policy_file = Path(tmp) / "policies.yaml"
        policy_file.write_text(policies(workloads, clusters))
        kubeconfigs = [fake.write_kubeconfig(Path(tmp) / f"kubeconfig-{k}") for k, fake in enumerate(fakes)]
        settings = Settings(
            kubeconfig=str(kubeconfigs[0]),
            clusters=[
                MemberCluster(name=cluster_name(k), kubeconfig=str(path))
                for k, path in enumerate(kubeconfigs)
                if k > 0
            ],
            namespaces=[NAMESPACE],
            cluster_name=cluster_name(0),
            resync_seconds=3600,
            leader_election=False,
            log_format="text",
        )
        live = LiveAutoscaler(settings, [policy_file], environ={}, build_source=build)
        started = time.monotonic()
        await live.start()
        run = asyncio.create_task(live.run())
        controller = live.controller
        assert controller is not None
        try:
            await settle(live, fakes)
            took = time.monotonic() - started
            print(
                f"{clusters} cluster(s) x {workloads} workloads, {2 * workloads * clusters} Deployments: "
                f"settled in {took:.1f}s, {sum(requests(fakes))} requests so far"
            )

            since, before = requests(fakes), controller.stats.reconciles
            for _ in range(reconciles):
                await controller.reconcile_once()
                await asyncio.sleep(0.01)
            steady = window(fakes, since, controller.stats.reconciles - before)
            print(steady.line("steady state (nothing changes)"))

            # One workload's demand doubles: 4 replicas, all on its regular pool.
            since, before = requests(fakes), controller.stats.reconciles
            sources["w000"].value = 4 * TARGET_PER_REPLICA
            # Settling must start from the new reading, not finish before the source's next poll.
            while (
                r := controller.readings.get("w000", {}).get("backlog")
            ) is None or r.value != 4 * TARGET_PER_REPLICA:
                await asyncio.sleep(0.05)
            await settle(live, fakes)
            changed = window(fakes, since, controller.stats.reconciles - before)
            print(changed.line("one workload's demand changes (until settled again)"))
        finally:
            live.stop()
            await run
            await live.close()
            for fake in fakes:
                await fake.stop()
    return steady.reads == 0 and steady.writes == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workloads", type=int, default=100)
    parser.add_argument("--reconciles", type=int, default=50)
    parser.add_argument("--clusters", type=int, default=1, help="member clusters, each with --workloads")
    args = parser.parse_args()
    ok = asyncio.run(measure(args.workloads, args.reconciles, args.clusters))
    if not ok:
        print("FAIL: a reconcile in the steady state made API requests", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
