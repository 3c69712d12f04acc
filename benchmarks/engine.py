"""Time one full `reconcile` and one incremental reconcile (`reconcile_incremental`, 1 % of the
workloads' readings changed) for 100 to 50,000 workloads (two pools each, one shared cap), and
measure the memory the engine keeps per workload.

    python benchmarks/engine.py [--sizes 100,1000,10000,50000] [--repeat 7] [--memory-sizes 1000,10000]

Each workload is a regular A100 pool plus a virtual RTX 4090 pool behind the `queue-sla` policy,
with HPA default behavior. The fleet is measured in steady state (state warmed by earlier calls,
sizes as the previous plan left them) and the company cap binds, so fair-share filling runs: the
expensive path, not the uncontended shortcut. Prints the median and best of `--repeat` runs, the
time per workload, and the growth exponent between sizes (1.0 = linear; n log n is about 1.1). Times
are CPU time of this process (`time.process_time`), so other load on the machine does not inflate
them; the engine is single-threaded. Run twice: with CPython's default GC thresholds and with the
thresholds the `autoscaler` command sets.

It runs the engine that imports: the interpreted sources (an editable install), or the modules the
image compiles with mypyc when a scratch copy of the tree built them in place and comes first on
the path (`AUTOSCALER_COMPILE=1 python setup.py build_ext --inplace` there, then
`PYTHONPATH=<copy> python benchmarks/engine.py`); the first line says which. A compiled `reconcile`
calls `allocate` past the wrapper that times it, so the allocate column is left empty then.

The incremental reconcile starts from the state and memo of the same warm-up (run incrementally)
and, at each repeat, gets new readings for 1 % of the workloads (other values, new `Reading`s):
those are recomputed (caught up first, since they were skipped at the previous reconcile), the
others reused. The limits stage still runs whole over every workload's ask, with its own memo of
what depends on an ask alone (`limits.AllocationMemo`): its share of the incremental time
(`allocate`, timed inside the call) is printed.

Memory (the deep size of the objects, within 10 % of what tracemalloc counts, 861 bytes per
workload after 20 reconciles at 1,000 workloads and 665 after 200, but in seconds, not minutes): the
`EngineState` the engine hands back (a workload's stabilization window, scale events, failure
counts and policy memory) after 20 and after 200 reconciles 2 s apart whose readings change every
time, so that a history growing with time would show; the readings (the controller's copy for
one reconcile, with the `Reading`s it shares with the pollers' latest); and the incremental engine's
memo (`engine.incremental.Memo`: each workload's stage results, decision and actions, and the
limits stage's `AllocationMemo`, about 5.7 KB per workload at 1,000 and 10,000 workloads), which
the controller keeps beside the state (never in the Lease).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import autoscaler.engine.reconcile as reconcile_module
from autoscaler.cli import tune_gc
from autoscaler.engine import compiled
from autoscaler.engine.incremental import Memo, reconcile_incremental
from autoscaler.engine.limits import Grant, allocate
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
            QueueSlaOptions.model_validate(
                {
                    "maxWaitSeconds": 30,
                    "backlogTrigger": "backlog",
                    "rateTrigger": "arrivals",
                    "serviceRatePerReplica": 1.2,
                }
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


@contextlib.contextmanager
def timing_allocate(into: list[float]) -> Iterator[None]:
    """Append the CPU time of every `allocate` the engine calls (through the name `reconcile.share`
    calls it by) to `into`: the limits stage's share of a reconcile, with the memo it is given."""
    original = allocate
    # `share` looks `allocate` up among the module's globals at each call: replace it there.
    namespace = vars(reconcile_module)

    def timed(*args: Any, **kwargs: Any) -> dict[str, Grant]:
        t0 = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.process_time() - t0)

    namespace["allocate"] = timed
    try:
        yield
    finally:
        namespace["allocate"] = original


def measure_incremental(n: int, repeat: int, seed: int) -> tuple[list[float], list[float], int]:
    """CPU times of `reconcile_incremental` with 1 % of the readings changed, of the `allocate` in
    it, and how many workloads one such reconcile recomputed."""
    workloads, readings, limits = fleet(n, seed)
    sizes: dict[str, int] = {}
    state, memo = EngineState(), Memo()
    for step in range(3):
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state, memo = reconcile_incremental(
            workloads, snapshot, readings, state, limits, step * 15.0, memo
        )
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
    snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
    rng = random.Random(seed)
    names = sorted(readings)
    times: list[float] = []
    allocating: list[float] = []
    recomputed = 0
    for r in range(repeat):
        now = 45.0 + r
        changed = dict(readings)
        for name in rng.sample(names, max(1, n // 100)):
            changed[name] = {
                t: Reading((got.value or 0.0) * rng.uniform(0.8, 1.25), now)
                for t, got in readings[name].items()
            }
        with timing_allocate(allocating):
            t0 = time.process_time()
            _, _, after = reconcile_incremental(workloads, snapshot, changed, state, limits, now, memo)
            times.append(time.process_time() - t0)
        recomputed = after.recomputed
    return times, allocating, recomputed


def engine_build() -> str:
    """Which engine this process runs: the interpreted sources, or the modules the image compiles
    with mypyc (setup.py)."""
    return "compiled with mypyc (setup.py)" if compiled() else "interpreted"


def growth(n: int, t: float, prev: tuple[int, float] | None) -> str:
    return f"{math.log(t / prev[1]) / math.log(n / prev[0]):.2f}" if prev else "-"


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of `obj` and of everything it holds (containers, slots, attributes), each object once.
    What tracemalloc reports for the same state within a few percent, at a fraction of its cost."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (bool, type)):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (tuple, list, set, frozenset)):
        return size + sum(deep_size(x, seen) for x in obj)
    # A class mypyc compiled (setup.py) lists its attributes in `__mypyc_attrs__`, not `__slots__`.
    kind = type(obj)
    names: tuple[str, ...] = getattr(kind, "__mypyc_attrs__", ()) or getattr(kind, "__slots__", ())
    for name in names:
        size += deep_size(getattr(obj, name, None), seen)
    if hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def state_memory(n: int, seed: int, reconciles: int) -> tuple[float, float, float]:
    """Bytes per workload of the engine state after `reconciles` reconciles 2 s apart whose
    readings change every time, of one copy of the readings as the controller makes it, and of the
    incremental engine's memo beyond the state (the controller keeps both)."""
    workloads, readings, limits = fleet(n, seed)
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    state, memo = EngineState(), Memo()
    for step in range(reconciles):
        now = step * 2.0
        for name, got in readings.items():
            readings[name] = {
                t: Reading((r.value or 0.0) * rng.uniform(0.8, 1.25), now) for t, r in got.items()
            }
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state, memo = reconcile_incremental(workloads, snapshot, readings, state, limits, now, memo)
        for a in plan.actions:
            sizes[a.pool] = a.to_replicas
    copied = {name: dict(got) for name, got in readings.items()}
    seen: set[int] = set()
    held = deep_size(state, seen)
    # What the memo adds: its entries' results, decisions and inputs (the spec objects, shared with
    # the configuration, and the state, counted above, left out).
    seen.update(id(wl) for wl in workloads)
    return held / n, deep_size(copied) / n, deep_size(memo, seen) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--memory-sizes", default="1000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"engine: {engine_build()}")
    default_gc = gc.get_threshold()
    for label, tune in (
        ("CPython's default GC thresholds", None),
        ("GC tuned as `autoscaler` runs", tune_gc),
    ):
        gc.set_threshold(*default_gc)
        if tune is not None:
            tune()
        print(f"{label} {gc.get_threshold()}: CPU time of one reconcile on one core (medians)")
        print(
            f"{'':>10} {'full':>34} | {'incremental, 1 % of readings changed':>44}\n"
            f"{'workloads':>10} {'ms':>9} {'best ms':>8} {'us/wl':>7} {'growth':>7} |"
            f" {'ms':>8} {'growth':>7} {'allocate ms':>12} {'other ms':>9} {'recomputed':>10}"
        )
        prev: tuple[int, float] | None = None
        prev_incr: tuple[int, float] | None = None
        for n in sizes:
            times = measure(n, args.repeat, args.seed)
            med = statistics.median(times)
            incr, alloc, recomputed = measure_incremental(n, args.repeat, args.seed)
            inc = statistics.median(incr)
            if alloc:
                al = statistics.median(alloc)
                split = f"{al * 1e3:>12.1f} {(inc - al) * 1e3:>9.1f}"
            else:  # a compiled `reconcile` calls `allocate` directly, past the timing wrapper
                split = f"{'-':>12} {'-':>9}"
            print(
                f"{n:>10} {med * 1e3:>9.1f} {min(times) * 1e3:>8.1f} {med / n * 1e6:>7.1f}"
                f" {growth(n, med, prev):>7} | {inc * 1e3:>8.1f} {growth(n, inc, prev_incr):>7}"
                f" {split} {recomputed:>10}"
            )
            prev, prev_incr = (n, med), (n, inc)

    gc.set_threshold(*default_gc)
    print("Memory the engine keeps per workload: its state after 20 and 200 reconciles")
    print("2 s apart with readings that change every time, and one copy of its readings")
    print("(the incremental engine's memo beside it, after 200)")
    print(f"{'workloads':>10} {'state@20 B':>11} {'state@200 B':>12} {'readings B':>11} {'memo B':>8}")
    for n in (int(s) for s in args.memory_sizes.split(",")):
        early, _, _ = state_memory(n, args.seed, 20)
        late, read, memo = state_memory(n, args.seed, 200)
        print(f"{n:>10} {early:>11.0f} {late:>12.0f} {read:>11.0f} {memo:>8.0f}")


if __name__ == "__main__":
    main()
