"""How large the engine state a leader writes into its Lease gets, and how long it takes to write
and read (`engine.statecodec`; the annotation must stay well under the API server's 256 KiB).

    python benchmarks/state_size.py [--sizes 1000] [--minutes 20]

For each bundled example (policies/*/) and for fleets of `--sizes` workloads (benchmarks/engine.py's
fleet: queue-sla, two pools each), the engine runs on wall-clock-like times every 2 s through two
loads: `noisy`, a steady load with noise (the common case), and `decline`, a burst that rises for
five minutes and then falls slowly and smoothly within maxReplicas: the longest hold window
queue-sla keeps (one bucket per step down, 120 in its 600 s). Every 30 s the state is packed as the
leader would; the largest is reported, as JSON and as the annotation text (zlib + base64), with the
CPU time to pack and to unpack it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python benchmarks/state_size.py`: the repository root, where `benchmarks` is, is not
    # on the path (only this file's folder is).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.config import load_config
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.statecodec import dump_state, pack_state, unpack_state
from autoscaler.engine.types import ClusterSnapshot, EngineState, Limits, PoolStatus, Reading, WorkloadSpec
from benchmarks.engine import fleet

START = 1_750_000_000.0
STEP_SECONDS = 2.0
NO_LIMIT = 1 << 30


def decline(minute: float, phase: float) -> float:
    """Up for five minutes, then a slow smooth decay: a need that steps down at every bucket."""
    rise = min(minute / 5.0, 1.0)
    fall = math.exp(-max(minute - 5.0, 0.0) / 6.0)
    return 90.0 * rise * fall * (1.0 + 0.05 * math.sin(phase))


def noisy(minute: float, phase: float) -> float:
    """A steady load with noise that no smoothing removes."""
    return 150.0 * (1.0 + 0.3 * math.sin(minute * 17.0 + phase * 7.0) * math.sin(minute * 5.3 + phase))


LOADS: dict[str, Callable[[float, float], float]] = {"noisy": noisy, "decline": decline}


def run(
    workloads: Sequence[WorkloadSpec], limits: Limits, minutes: float, load: Callable[[float, float], float]
) -> dict[str, float]:
    sizes: dict[str, int] = {}
    state = EngineState()
    worst: dict[str, float] = {"json": 0.0}
    steps = int(minutes * 60 / STEP_SECONDS)
    for step in range(steps):
        now = START + step * STEP_SECONDS
        readings = {
            wl.name: {
                t.name: Reading(load(step * STEP_SECONDS / 60, i) / (1 + j), now)
                for j, t in enumerate(wl.triggers)
            }
            for i, wl in enumerate(workloads)
        }
        snapshot = ClusterSnapshot({k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state = reconcile(workloads, snapshot, readings, state, limits, now)
        for action in plan.actions:
            sizes[action.pool] = action.to_replicas
        if step % int(30 / STEP_SECONDS) == 0:
            raw = len(json.dumps(dump_state(state, workloads, now)[0], separators=(",", ":")))
            if raw > worst["json"]:
                t0 = time.process_time()
                packed, _ = pack_state(state, workloads, now, NO_LIMIT)
                t1 = time.process_time()
                unpack_state(packed.text, workloads, now)
                t2 = time.process_time()
                worst = {"json": raw, "text": len(packed.text), "pack": t1 - t0, "unpack": t2 - t1}
    return worst


def report(label: str, n: int, worst: dict[str, float]) -> None:
    print(
        f"{label:<28} {n:>9} {worst['json'] / 1024:>9.1f} {worst['text'] / 1024:>9.1f}"
        f" {worst['pack'] * 1e3:>8.1f} {worst['unpack'] * 1e3:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000")
    parser.add_argument("--minutes", type=float, default=20.0)
    args = parser.parse_args()
    print(
        f"{'state of':<28} {'workloads':>9} {'JSON KiB':>9} {'text KiB':>9} {'pack ms':>8} {'unpack ms':>9}"
    )
    for shape, load in LOADS.items():
        for directory in sorted(Path("policies").iterdir()):
            config = load_config([str(directory)])
            if config.errors or not config.workloads:
                continue
            worst = run(config.workloads, config.limits, args.minutes, load)
            report(f"policies/{directory.name} {shape}", len(config.workloads), worst)
        for n in (int(s) for s in args.sizes.split(",")):
            workloads, _, limits = fleet(n, seed=1)
            report(f"engine.py fleet {shape}", n, run(workloads, limits, args.minutes, load))


if __name__ == "__main__":
    main()
