"""Time one `/metrics` scrape, and the `Telemetry.observe` before it, for fleets of 1,000 and 10,000
workloads (benchmarks/engine.py's fleet: two pools and two triggers each).

    python benchmarks/scrape.py [--sizes 1000,10000] [--repeat 3]

The fleet is reconciled by the real engine, observed as the live controller does after every
reconcile, and scraped as Prometheus would (the OpenMetrics encoding it asks for first; the size of
the classic text format is printed too). Three scrapes are timed: the first after an observe, a
second of the same reconcile, and one after a reconcile in which 1 % of the workloads' readings
changed. Times are CPU time of this process (`time.process_time`; the scrape runs in the calling
thread here, in the server's thread live).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python benchmarks/scrape.py`: the repository root, where `benchmarks` is, is not on
    # the path (only this file's folder is).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, Plan, PoolStatus, Reading, Reconciled
from autoscaler.telemetry import Telemetry
from benchmarks.engine import fleet

# What Prometheus 2.x sends: OpenMetrics first.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(n: int, repeat: int, seed: int) -> dict[str, float]:
    workloads, readings, limits = fleet(n, seed)
    rng = random.Random(seed)
    telemetry = Telemetry(port=0, host="127.0.0.1", environ={})
    telemetry.set_leader(True)
    sizes: dict[str, int] = {}
    state = EngineState()
    now = 0.0

    def step() -> tuple[Plan, ClusterSnapshot]:
        nonlocal state, now
        now += 15.0
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state = reconcile(workloads, snapshot, readings, state, limits, now)
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
        return plan, snapshot

    def observe(plan: Plan, snapshot: ClusterSnapshot) -> None:
        telemetry.observe(
            Reconciled(
                now=now,
                workloads=workloads,
                limits=limits,
                snapshot=snapshot,
                readings=readings,
                plan=plan,
                duration_seconds=0.05,
            )
        )

    out: dict[str, list[float]] = {"observe": [], "first": [], "again": [], "changed": []}
    for _ in range(3):  # warm: history in every window, sizes as the plans left them
        observe(*step())
        telemetry.metrics_text(PROMETHEUS_ACCEPT)
    for _ in range(repeat):
        plan, snapshot = step()
        out["observe"].append(cpu(lambda: observe(plan, snapshot)))  # noqa: B023 (called at once)
        out["first"].append(cpu(lambda: telemetry.metrics_text(PROMETHEUS_ACCEPT)))
        out["again"].append(cpu(lambda: telemetry.metrics_text(PROMETHEUS_ACCEPT)))
        for name in rng.sample(sorted(readings), max(1, n // 100)):
            readings[name] = {"backlog": Reading(rng.uniform(0, 60), now), "arrivals": Reading(1.0, now)}
        observe(*step())
        out["changed"].append(cpu(lambda: telemetry.metrics_text(PROMETHEUS_ACCEPT)))
    result = {k: statistics.median(v) for k, v in out.items()}
    result["openmetrics_bytes"] = len(telemetry.metrics_text(PROMETHEUS_ACCEPT)[0])
    result["text_bytes"] = len(telemetry.metrics_text()[0])
    telemetry.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("CPU time of Telemetry.observe and of one /metrics scrape (median of --repeat)")
    print(
        f"{'workloads':>10} {'observe ms':>11} {'scrape ms':>10} {'again ms':>9} {'1% chg ms':>10}"
        f" {'MB (OM)':>8} {'MB (text)':>9}"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, args.repeat, args.seed)
        print(
            f"{n:>10} {r['observe'] * 1e3:>11.1f} {r['first'] * 1e3:>10.1f} {r['again'] * 1e3:>9.1f}"
            f" {r['changed'] * 1e3:>10.1f} {r['openmetrics_bytes'] / 1e6:>8.2f} {r['text_bytes'] / 1e6:>9.2f}"
        )


if __name__ == "__main__":
    main()
