"""The picture of a simulation run (matplotlib, Agg backend): what the load did and how the engine answered.

One row per workload: demand (arrivals/s, 10 s average) with the queue length; replicas per pool,
stacked, ready solid and not yet ready (starting, provisioning or unschedulable) hatched; p95 queue
wait over the last minute against the SLA. A last row shows total GPUs in use per workload against
the company cap. matplotlib is imported here only, so the rest of the simulator runs without it.
Callers: `sim.cli` (`autoscaler simulate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from autoscaler.engine.types import NodeClass
from autoscaler.sim.runner import SimResult
from autoscaler.sim.trace import FloatArray

DEMAND_WINDOW_SECONDS = 10.0
# Regular pools in blues, virtual ones in oranges, so spill-over reads at a glance.
REGULAR_COLORS = ("#1f5fa8", "#5b8fd1", "#9dbce6")
VIRTUAL_COLORS = ("#e07b10", "#f0a64e", "#f7c98e")
WORKLOAD_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _moving_average(values: FloatArray, n: int) -> FloatArray:
    if n <= 1 or values.size == 0:
        return values
    kernel = np.ones(n) / n
    # Trailing average: the value at t covers (t - window, t], as a rate over the last 10 s would.
    return np.asarray(np.convolve(values, kernel)[: values.size], dtype=np.float64)


def write_plot(result: SimResult, path: Path) -> None:
    t = result.times / 60.0  # minutes read better than seconds over an hour
    rows = len(result.workloads) + 1
    # The object API draws with Agg and touches no global pyplot state or GUI backend.
    fig = Figure(figsize=(17, 3.3 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 3)
    first = None
    window = max(1, round(DEMAND_WINDOW_SECONDS / result.tick))
    for row, w in enumerate(result.workloads):
        ax_demand = fig.add_subplot(grid[row, 0], sharex=first)
        first = first or ax_demand
        ax_demand.plot(
            t, _moving_average(w.arrival_rate, window), color="#333333", lw=0.9, label="arrivals/s (10 s avg)"
        )
        ax_demand.set_ylabel("arrivals/s")
        ax_demand.set_title(f"{w.name}: demand and queue", loc="left", fontsize=10)
        ax_queue = ax_demand.twinx()
        ax_queue.fill_between(
            t, w.waiting, step="post", color="#c44e52", alpha=0.35, lw=0, label="queue (waiting)"
        )
        ax_queue.set_ylabel("requests waiting", color="#c44e52")
        ax_queue.tick_params(axis="y", colors="#c44e52")
        ax_queue.set_ylim(bottom=0)
        lines = ax_demand.get_legend_handles_labels()
        queue_lines = ax_queue.get_legend_handles_labels()
        ax_demand.legend(lines[0] + queue_lines[0], lines[1] + queue_lines[1], loc="upper left", fontsize=8)

        ax_rep = fig.add_subplot(grid[row, 1], sharex=first)
        bottom = np.zeros(t.size)
        regular = iter(REGULAR_COLORS * 4)
        virtual = iter(VIRTUAL_COLORS * 4)
        for p in w.pools:
            color = next(regular) if p.node_class is NodeClass.REGULAR else next(virtual)
            name = p.key.split("/", 1)[-1]
            top = bottom + p.ready
            ax_rep.fill_between(t, bottom, top, step="post", color=color, lw=0, label=f"{name} ready")
            pending = top + p.starting + p.unscheduled
            ax_rep.fill_between(
                t,
                top,
                pending,
                step="post",
                facecolor="white",
                edgecolor=color,
                hatch="////",
                lw=0,
                label=f"{name} starting/pending",
            )
            bottom = pending
        ax_rep.set_ylabel("replicas")
        ax_rep.set_ylim(bottom=0)
        ax_rep.set_title(f"{w.name}: replicas per pool", loc="left", fontsize=10)
        ax_rep.legend(loc="upper left", fontsize=8, ncol=2)

        ax_wait = fig.add_subplot(grid[row, 2], sharex=first)
        ax_wait.plot(t, w.p95_wait, color="#8172b3", lw=1.0, label="p95 queue wait (last 60 s)")
        ax_wait.axhline(w.sla_seconds, color="#c44e52", ls="--", lw=1.0, label=f"SLA {w.sla_seconds:g} s")
        ax_wait.set_ylabel("seconds")
        # Keep the SLA line in view even when waits stay far below it.
        worst = float(np.nanmax(w.p95_wait)) if np.any(np.isfinite(w.p95_wait)) else 0.0
        ax_wait.set_ylim(0, max(2 * w.sla_seconds, 1.08 * worst))
        ax_wait.set_title(f"{w.name}: queue wait", loc="left", fontsize=10)
        ax_wait.legend(loc="upper left", fontsize=8)

    ax_total = fig.add_subplot(grid[rows - 1, :], sharex=first)
    stack = [w.gpus for w in result.workloads]
    labels = [w.name for w in result.workloads]
    ax_total.stackplot(
        t, *stack, labels=labels, colors=WORKLOAD_COLORS[: len(stack)], step="post", alpha=0.85
    )
    if result.company_cap is not None:
        ax_total.axhline(
            result.company_cap, color="#c44e52", ls="--", lw=1.2, label=f"company cap {result.company_cap}"
        )
    ax_total.set_ylabel("GPUs in use")
    ax_total.set_xlabel("simulated time (minutes)")
    # Headroom above the cap line for the legend.
    peak = max(
        float(result.total_gpus.max()) if result.total_gpus.size else 0.0, float(result.company_cap or 0)
    )
    ax_total.set_ylim(0, max(1.0, 1.3 * peak))
    ax_total.set_title(
        "all workloads: GPUs held (incl. starting and draining pods) against the company cap",
        loc="left",
        fontsize=10,
    )
    ax_total.legend(loc="upper left", fontsize=8, ncol=len(labels) + 1)
    for ax in fig.axes:
        ax.grid(True, alpha=0.25)
        ax.set_xlim(t[0] if t.size else 0, t[-1] if t.size else 1)
    fig.savefig(path, dpi=90)
