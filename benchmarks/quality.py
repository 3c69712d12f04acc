"""Scaling quality on real traces: GPU-hours against queue wait, for our policy and the baselines.

    python benchmarks/quality.py [--jobs 2] [--seed 1] [--out benchmarks/results] [--quick]

For each real trace in ../shared/traces (bundled byte-exact in autoscaler/sim/data): the bursty code
trace at 20x its recorded load and the steady conversation trace at 10x (benchmarks/scenarios/), on
a regular A100 pool (~90 s startup, too small for the peaks) plus a SaladCloud pool (60 s to 10 min
startup, heavy-tailed, half the throughput, interrupted now and then). Every policy runs in the same
simulated cluster with the same pools, spill-over and caps; only the decision logic differs. Each
policy's main knob is swept:

    keda-hpa      KEDA RabbitMQ QueueLength + HPA, KEDA defaults; knob: messages per replica
    knative-kpa   Knative's KPA on in-flight + queued requests; knob: target utilisation
    static-peak   replicas fixed for the trace's peak minute; knob: replicas
    queue-sla     ours; knob: maxWaitSeconds
    clairvoyant   offline floor: knows every arrival, pays every startup; knob: the SLA window

It prints, per trace, every run (GPU-hours, its ratio to the clairvoyant floor, p95 and p99 queue
wait, the share of requests within a 30 s wait, cost) marking the Pareto front (fewest GPU-hours for
the share within the SLA), then the comparison the issue asks for: our GPU-hours at keda-hpa's best
share within the SLA, and our p95 at keda-hpa's best GPU-hours. Then the contention scenario (both
traces under one company cap below their combined peak): each policy's wait per workload by priority
and the peak GPUs against the cap. Writes quality.md and quality.png to --out. Deterministic for a
seed: every run draws from its own seeded generators, whatever the number of --jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from autoscaler.cli import tune_gc
from autoscaler.sim.presets import apply_policy
from autoscaler.sim.runner import SimResult, run
from autoscaler.sim.scenario import Overrides, load_scenario

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
SLA_SECONDS = 30.0
OURS = "queue-sla"

# Each policy's main knob, swept; None is the preset's own default.
SWEEPS: dict[str, tuple[float | None, ...]] = {
    "keda-hpa": (2, 5, 10, 20, 40),
    "knative-kpa": (0.3, 0.5, 0.7, 0.9),
    "static-peak": (None,),
    "queue-sla": (5, 10, 20, 30, 60),
    "clairvoyant": (SLA_SECONDS,),
}
QUICK: dict[str, tuple[float | None, ...]] = {
    "keda-hpa": (5, 20),
    "static-peak": (None,),
    "queue-sla": (10, 30),
    "clairvoyant": (SLA_SECONDS,),
}
TRACES = {"code": "quality-code.yaml", "conv": "quality-conv.yaml"}


@dataclass(frozen=True)
class Row:
    scenario: str
    policy: str
    knob: float | None
    workload: str
    priority: int
    gpu_hours: float
    cost: float
    p50: float
    p95: float
    p99: float
    within_sla: float
    peak_gpus: int
    cap: int | None
    actions: int
    seconds: float


def _pct(wait: np.ndarray, q: float) -> float:
    return float(np.percentile(wait, q)) if wait.size else math.nan


def summarise(
    scenario: str,
    policy: str,
    knob: float | None,
    result: SimResult,
    priorities: dict[str, int],
    seconds: float,
) -> list[Row]:
    rows = []
    for w in result.workloads:
        wait = w.wait
        total = w.arrival.size
        # A request never served is a miss, not a wait of zero.
        within = float(np.count_nonzero(wait <= SLA_SECONDS)) / total if total else math.nan
        rows.append(
            Row(
                scenario=scenario,
                policy=policy,
                knob=knob,
                workload=w.name,
                priority=priorities[w.name],
                gpu_hours=sum(p.gpu_hours for p in w.pools),
                cost=sum(p.cost for p in w.pools),
                p50=_pct(wait, 50),
                p95=_pct(wait, 95) if wait.size == total else math.inf,
                p99=_pct(wait, 99) if wait.size == total else math.inf,
                within_sla=within,
                peak_gpus=int(result.total_gpus.max()) if result.total_gpus.size else 0,
                cap=result.company_cap,
                actions=w.scale_actions,
                seconds=seconds,
            )
        )
    return rows


def one_run(args: tuple[str, str, str, float | None, int, float | None]) -> list[Row]:
    """One simulation in a worker process: (label, scenario file, policy, knob, seed, load scale)."""
    tune_gc()
    label, scenario, policy, knob, seed, scale = args
    sim = load_scenario(SCENARIOS / scenario, Overrides(seed=seed, scale=scale))
    sim = apply_policy(sim, policy, knob)
    t0 = time.process_time()
    result = run(sim)
    priorities = {w.name: w.priority for w in sim.workloads}
    return summarise(label, policy, knob, result, priorities, time.process_time() - t0)


def pareto(rows: Sequence[Row]) -> set[int]:
    """Indices of rows no other row beats on both fewer GPU-hours and a larger share within the SLA."""
    front = set()
    for i, r in enumerate(rows):
        dominated = any(
            (o.gpu_hours <= r.gpu_hours and o.within_sla >= r.within_sla)
            and (o.gpu_hours < r.gpu_hours or o.within_sla > r.within_sla)
            for j, o in enumerate(rows)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise-linear curve through `points` (sorted by x); None outside its range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if pts and math.isclose(pts[0][0], x):
        return pts[0][1]
    return None


def ours_at_share(rows: Sequence[Row], share: float) -> float | None:
    """Fewest GPU-hours our policy needs to reach `share` within the SLA (along its own front)."""
    ours = [r for r in rows if r.policy == OURS]
    reaching = [r.gpu_hours for r in ours if r.within_sla >= share]
    curve = [(r.within_sla, r.gpu_hours) for r in ours]
    interpolated = interpolate(curve, share)
    candidates = [*reaching, *([interpolated] if interpolated is not None else [])]
    return min(candidates) if candidates else None


def fmt(x: float, digits: int = 1) -> str:
    return "inf" if math.isinf(x) else ("-" if math.isnan(x) else f"{x:.{digits}f}")


def trace_table(label: str, rows: list[Row]) -> list[str]:
    floor = min((r.gpu_hours for r in rows if r.policy == "clairvoyant"), default=math.nan)
    front = pareto(rows)
    out = [
        f"### {label}: {rows[0].workload}",
        "",
        "| policy | knob | GPU-hours | x floor | p95 wait s | p99 wait s | within 30 s | cost $ | actions "
        "| front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for i, r in enumerate(rows):
        knob = "default" if r.knob is None else f"{r.knob:g}"
        out.append(
            f"| {r.policy} | {knob} | {r.gpu_hours:.1f} | {fmt(r.gpu_hours / floor, 2)} | {fmt(r.p95)} | "
            f"{fmt(r.p99)} | {100 * r.within_sla:.1f}% | {r.cost:.1f} | {r.actions} "
            f"| {'*' if i in front else ''} |"
        )
    keda = [r for r in rows if r.policy == "keda-hpa"]
    if keda and any(r.policy == OURS for r in rows):
        best = max(keda, key=lambda r: (r.within_sla, -r.gpu_hours))
        ours_gpu = ours_at_share(rows, best.within_sla)
        ours = [r for r in rows if r.policy == OURS]
        ours_p95 = interpolate([(r.gpu_hours, r.p95) for r in ours if math.isfinite(r.p95)], best.gpu_hours)
        out += [
            "",
            f"keda-hpa's best configuration (knob {best.knob:g}): {100 * best.within_sla:.1f}% within 30 s "
            f"with {best.gpu_hours:.1f} GPU-hours, p95 {fmt(best.p95)} s.",
            (
                f"{OURS} reaches that share with {ours_gpu:.1f} GPU-hours: "
                f"**{ours_gpu / best.gpu_hours:.2f}x** keda-hpa's."
                if ours_gpu is not None
                else f"{OURS} does not reach that share in this sweep."
            ),
            same_gpu_hours(best, ours, ours_p95),
        ]
    return [*out, ""]


def same_gpu_hours(best: Row, ours: Sequence[Row], ours_p95: float | None) -> str:
    """Our p95 at keda-hpa's GPU-hours; beyond our sweep, our costliest run, which uses fewer."""
    if ours_p95 is not None:
        return (
            f"At keda-hpa's {best.gpu_hours:.1f} GPU-hours, {OURS}'s p95 wait is {fmt(ours_p95)} s "
            f"(keda-hpa: {fmt(best.p95)} s)."
        )
    below = [r for r in ours if r.gpu_hours <= best.gpu_hours]
    if below:
        top = max(below, key=lambda r: r.gpu_hours)
        return (
            f"keda-hpa's {best.gpu_hours:.1f} GPU-hours are beyond {OURS}'s sweep; with fewer "
            f"({top.gpu_hours:.1f}, knob {top.knob:g}) its p95 wait is {fmt(top.p95)} s "
            f"(keda-hpa: {fmt(best.p95)} s)."
        )
    return f"Every {OURS} run used more GPU-hours than keda-hpa's best."


def contention_table(rows: list[Row]) -> list[str]:
    out = [
        "### contention: both traces under one company cap",
        "",
        "| policy | workload | priority | GPU-hours | p95 wait s | within 30 s | peak GPUs / cap |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.policy, -r.priority)):
        out.append(
            f"| {r.policy} | {r.workload} | {r.priority} | {r.gpu_hours:.1f} | {fmt(r.p95)} | "
            f"{100 * r.within_sla:.1f}% | {r.peak_gpus} / {r.cap} |"
        )
    over = [r for r in rows if r.cap is not None and r.peak_gpus > r.cap]
    out += [
        "",
        "The cap was exceeded in: " + ", ".join(sorted({r.policy for r in over}))
        if over
        else "No policy exceeded the company cap at any tick (starting and draining pods counted).",
        "",
    ]
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(TRACES)
    fig, axes = plt.subplots(1, len(labels), figsize=(7 * len(labels), 5), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        mine = [r for r in rows if r.scenario == label]
        for policy in dict.fromkeys(r.policy for r in mine):
            pts = sorted((r.gpu_hours, 100 * r.within_sla) for r in mine if r.policy == policy)
            style = "-o" if len(pts) > 1 else "D"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                label=policy,
                linewidth=2 if policy == OURS else 1,
            )
        ax.set_title(f"{label} trace: GPU-hours against requests within {SLA_SECONDS:g} s")
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel(f"% of requests waiting <= {SLA_SECONDS:g} s")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quick", action="store_true", help="two knobs per policy, for a smoke run")
    parser.add_argument("--contention-scale", type=float, default=10.0)
    args = parser.parse_args()
    sweeps = QUICK if args.quick else SWEEPS

    jobs: list[tuple[str, str, str, float | None, int, float | None]] = []
    for label, scenario in TRACES.items():
        for policy, knobs in sweeps.items():
            jobs += [(label, scenario, policy, knob, args.seed, None) for knob in knobs]
    for policy in sweeps:
        if policy != "clairvoyant":
            jobs.append(("contention", "contention.yaml", policy, None, args.seed, args.contention_scale))

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one_run, jobs))
    wall = time.perf_counter() - t0
    rows = [r for batch in results for r in batch]

    lines = [
        "# Scaling quality on real traces",
        "",
        f"Seed {args.seed}; {len(jobs)} simulations in {wall:.0f} s of wall time on {args.jobs} process(es). "
        f"SLA: {SLA_SECONDS:g} s queue wait. Command: `python benchmarks/quality.py"
        f"{' --quick' if args.quick else ''} --seed {args.seed}`.",
        "",
    ]
    for label in TRACES:
        lines += trace_table(label, [r for r in rows if r.scenario == label])
    lines += contention_table([r for r in rows if r.scenario == "contention"])
    text = "\n".join(lines)
    print(text)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text + "\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str) + "\n")
    plot(rows, out / "quality.png")
    print(f"\nwrote {out / 'quality.md'}, {out / 'quality.json'}, {out / 'quality.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
