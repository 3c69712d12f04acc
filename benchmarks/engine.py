"""Time one full `reconcile` for 100, 1,000 and 10,000 workloads (two pools each, one shared cap).

    python benchmarks/engine.py [--sizes 100,1000,10000] [--repeat 7]

Each workload is a regular A100 pool plus a virtual RTX 4090 pool behind the `queue-sla` policy,
with HPA default behavior. The fleet is measured in steady state (state warmed by earlier calls,
sizes as the previous plan left them) and the company cap binds, so fair-share filling runs: the
expensive path, not the uncontended shortcut. Prints the median and best of `--repeat` runs, the
time per workload, and the growth exponent between sizes (1.0 = linear; n log n is about 1.1). Times
are CPU time of this process (`time.process_time`), so other load on the machine does not inflate
them; the engine is single-threaded. Run twice: with CPython's default GC thresholds and with the
thresholds the `autoscaler` command sets.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import time

from autoscaler.cli import tune_gc
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ClusterSnapshot,
    EngineState,
    Limits,
    NodeClass,
    PoolSpec,
    PoolStatus,
    Reading,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy


def fleet(n: int, seed: int) -> tuple[list[WorkloadSpec], dict[str, dict[str, Reading]], Limits]:
    rng = random.Random(seed)
    workloads = []
    readings = {}
    for i in range(n):
        pools = (
            PoolSpec(f"w{i}-a100", "bench", NodeClass.REGULAR, "A100", "c1", 1, 2.0, 90.0, max_replicas=8),
            PoolSpec(
                f"w{i}-salad",
                "bench",
                NodeClass.VIRTUAL,
                "RTX4090",
                "c1",
                1,
                0.3,
                300.0,
                relative_throughput=0.5,
                provider="salad",
            ),
        )
        triggers = (
            TriggerSpec("backlog", "rabbitmq", 10.0),
            TriggerSpec("arrivals", "rabbitmq", 1.0),
        )
        policy = QueueSlaPolicy(
            QueueSlaOptions(
                maxWaitSeconds=30, backlogTrigger="backlog", rateTrigger="arrivals", serviceRatePerReplica=1.2
            )
        )
        workloads.append(
            WorkloadSpec(
                f"w{i}",
                "bench",
                pools,
                triggers,
                policy,
                max_replicas=40,
                priority=rng.choice((0, 10)),
                weight=rng.choice((1.0, 2.0)),
            )
        )
        readings[f"w{i}"] = {
            "backlog": Reading(rng.uniform(0, 60), 0.0),
            "arrivals": Reading(rng.uniform(0, 6), 0.0),
        }
    # About two thirds of what everybody wants: the cap binds and fair share does real work.
    limits = Limits(
        company_max_gpus=3 * n, cluster_gpu_types={("c1", "A100"): 4 * n}, provider_max_gpus={"salad": 2 * n}
    )
    return workloads, readings, limits


def measure(n: int, repeat: int, seed: int) -> list[float]:
    workloads, readings, limits = fleet(n, seed)
    sizes: dict[str, int] = {}
    state = EngineState()
    # Warm up: a few reconciles to reach a steady state with history in every window.
    for step in range(3):
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state = reconcile(workloads, snapshot, readings, state, limits, step * 15.0)
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
    snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
    times = []
    for r in range(repeat):
        t0 = time.process_time()
        reconcile(workloads, snapshot, readings, state, limits, 45.0 + r)
        times.append(time.process_time() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    default_gc = gc.get_threshold()
    for label, tune in (
        ("CPython's default GC thresholds", None),
        ("GC tuned as `autoscaler` runs", tune_gc),
    ):
        gc.set_threshold(*default_gc)
        if tune is not None:
            tune()
        print(f"{label} {gc.get_threshold()}: CPU time of one reconcile on one core")
        print(f"{'workloads':>10} {'median ms':>10} {'best ms':>9} {'us/workload':>12} {'growth':>7}")
        prev: tuple[int, float] | None = None
        for n in sizes:
            times = measure(n, args.repeat, args.seed)
            med = statistics.median(times)
            growth = f"{math.log(med / prev[1]) / math.log(n / prev[0]):.2f}" if prev else "-"
            print(f"{n:>10} {med * 1e3:>10.1f} {min(times) * 1e3:>9.1f} {med / n * 1e6:>12.1f} {growth:>7}")
            prev = (n, med)


if __name__ == "__main__":
    main()
