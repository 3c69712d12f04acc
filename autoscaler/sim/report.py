"""The figures of a simulation run: per workload and in total, as a plain text table and as JSON.

Queue wait is the time from a request's arrival to the start of the service that completed it (a
request whose replica was interrupted waits again). "Within SLA" counts every request of the trace,
so a request never served is a miss, not left out. GPU-hours and cost come from the cluster's charge
per pod (creation to deletion). `work_floor` is the physical lower bound on both for a trace: no
policy, online or offline, serves its requests with fewer. Callers: `sim.cli` (`autoscaler simulate`),
`benchmarks/quality.py`, the tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler.engine.types import PoolSpec
from autoscaler.sim.cluster import WorkloadModel
from autoscaler.sim.runner import SimResult, WorkloadResult
from autoscaler.sim.trace import FloatArray


@dataclass(frozen=True, slots=True)
class WorkFloor:
    """The fewest GPU-hours and dollars that can serve some work, and the pools that give them."""

    service_seconds: float  # summed over the requests, on a replica of relative throughput 1.0
    concurrency: int
    gpu_hours: float
    cost: float
    gpu_pool: str  # key of the pool with the fewest GPUs per unit of throughput
    cost_pool: str  # key of the pool with the fewest dollars per unit of throughput


def work_floor(service_seconds: FloatArray, concurrency: int, pools: Sequence[PoolSpec]) -> WorkFloor:
    """The work floor: a lower bound on the GPU-hours (and cost) of serving requests that take
    `service_seconds` each, whatever decides the replica counts, derived from `sim.cluster`:

    - request i holds one of the `concurrency` slots of a READY replica of pool p for
      s_i / relativeThroughput_p seconds (`ServiceModel.seconds` is the time on throughput 1.0);
    - a replica of p is charged gpusPerReplica_p GPUs from the moment it gets them until it is gone,
      and while it is charged it serves at most `concurrency` requests at once.
    So pool p is charged at least gpus_p / rt_p / concurrency GPU-seconds per second of service it
    gives, and all pools together at least

        sum_i s_i / concurrency x min_p (gpusPerReplica_p / relativeThroughput_p)   GPU-seconds,
        sum_i s_i / concurrency x min_p (gpusPerReplica_p x costPerGpuHour_p / rt_p) / 3600   dollars.

    Startup, idle slots, draining and work redone after an interruption only add to that, and pool
    sizes and caps are ignored, so the bound holds for any policy; it is also not reachable in
    general (a queue with no idle slot at all has unbounded waits)."""
    if not pools:
        raise ValueError("work_floor needs at least one pool")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    work = float(np.sum(service_seconds))
    by_gpu = min(pools, key=lambda p: p.gpus_per_unit)
    by_cost = min(pools, key=lambda p: p.cost_per_unit_hour)
    slot_hours = work / concurrency / 3600.0
    return WorkFloor(
        service_seconds=work,
        concurrency=concurrency,
        gpu_hours=slot_hours * by_gpu.gpus_per_unit,
        cost=slot_hours * by_cost.cost_per_unit_hour,
        gpu_pool=by_gpu.key,
        cost_pool=by_cost.key,
    )


def model_work_floor(model: WorkloadModel, served: npt.NDArray[np.bool_] | None = None) -> WorkFloor:
    """`work_floor` of a simulated workload's trace, or of the requests `served` marks only (a run
    that left requests unserved is held to the work it did)."""
    trace = model.trace
    seconds = model.service.seconds(trace.context_tokens, trace.generated_tokens)
    if served is not None:
        seconds = seconds[served]
    return work_floor(seconds, model.concurrency, model.pools)


def _percentiles(waits: FloatArray) -> tuple[float | None, float | None, float | None]:
    if waits.size == 0:
        return None, None, None
    p50, p95, p99 = (float(v) for v in np.percentile(waits, [50, 95, 99]))
    return p50, p95, p99


def _workload(w: WorkloadResult, sla_override: float | None) -> dict[str, Any]:
    sla = w.sla_seconds if sla_override is None else sla_override
    waits = w.wait
    p50, p95, p99 = _percentiles(waits)
    requests = len(w.arrival)
    return {
        "workload": w.name,
        "requests": requests,
        "served": int(w.served.sum()),
        "wait_p50_s": p50,
        "wait_p95_s": p95,
        "wait_p99_s": p99,
        "sla_s": sla,
        "within_sla": float(np.count_nonzero(waits <= sla)) / requests if requests else None,
        "gpu_hours": sum(p.gpu_hours for p in w.pools),
        "cost": sum(p.cost for p in w.pools),
        "scale_actions": w.scale_actions,
        "peak_gpus": int(w.gpus.max()) if w.gpus.size else 0,
        "interruptions": sum(p.interruptions for p in w.pools),
        "pools": {
            p.key: {
                "gpu_hours": p.gpu_hours,
                "cost": p.cost,
                "pods_created": p.pods_created,
                "interruptions": p.interruptions,
                "peak_replicas": int(p.spec.max()) if p.spec.size else 0,
            }
            for p in w.pools
        },
    }


def summarize(result: SimResult, sla_override: float | None = None) -> dict[str, Any]:
    """Everything the table shows, JSON-ready (None where there is nothing to measure)."""
    rows = [_workload(w, sla_override) for w in result.workloads]
    waits = np.concatenate([w.wait for w in result.workloads]) if result.workloads else np.zeros(0)
    p50, p95, p99 = _percentiles(waits)
    requests = sum(r["requests"] for r in rows)
    within = sum(r["within_sla"] * r["requests"] for r in rows if r["within_sla"] is not None)
    return {
        "workloads": rows,
        "total": {
            "requests": requests,
            "served": sum(r["served"] for r in rows),
            "wait_p50_s": p50,
            "wait_p95_s": p95,
            "wait_p99_s": p99,
            # each request against its own workload's SLA
            "within_sla": within / requests if requests else None,
            "gpu_hours": sum(r["gpu_hours"] for r in rows),
            "cost": sum(r["cost"] for r in rows),
            "scale_actions": sum(r["scale_actions"] for r in rows),
            "peak_gpus": int(result.total_gpus.max()) if result.total_gpus.size else 0,
            "interruptions": sum(r["interruptions"] for r in rows),
        },
        "company_cap": result.company_cap,
        "simulated_seconds": result.end,
        "seed": result.seed,
        "tick": result.tick,
    }


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


COLUMNS = (
    "workload",
    "requests",
    "p50 wait",
    "p95 wait",
    "p99 wait",
    "SLA",
    "within SLA",
    "GPU-hours",
    "cost ($)",
    "actions",
    "peak GPUs",
)


def _cells(name: str, r: dict[str, Any], sla: str) -> list[str]:
    return [
        name,
        str(r["requests"]),
        _seconds(r["wait_p50_s"]),
        _seconds(r["wait_p95_s"]),
        _seconds(r["wait_p99_s"]),
        sla,
        _share(r["within_sla"]),
        f"{r['gpu_hours']:.2f}",
        f"{r['cost']:.2f}",
        str(r["scale_actions"]),
        str(r["peak_gpus"]),
    ]


def format_table(summary: dict[str, Any]) -> str:
    rows = [_cells(r["workload"], r, f"{r['sla_s']:g}s") for r in summary["workloads"]]
    rows.append(_cells("total", summary["total"], ""))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    rule = "-" * len(line(COLUMNS))
    out = [line(COLUMNS), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    cap = summary["company_cap"]
    cap_text = "none" if cap is None else str(cap)
    out.append(f"peak total GPUs / company cap: {summary['total']['peak_gpus']} / {cap_text}")
    unserved = [
        f"{r['workload']} {r['requests'] - r['served']}"
        for r in summary["workloads"]
        if r["served"] < r["requests"]
    ]
    if unserved:
        out.append("never served (counted as SLA misses): " + ", ".join(unserved))
    return "\n".join(out)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        # JSON has no NaN; a figure that cannot be measured is null.
        return None if isinstance(v, float) and not math.isfinite(v) else v

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return clean(v)

    path.write_text(json.dumps(walk(summary), indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Several policies on one scenario (`autoscaler simulate --policy A --policy B ...`)

COMPARISON_COLUMNS = ("policy", "workload", "GPU-hours", "p95 wait", "within SLA", "cost ($)", "actions")
CLAIRVOYANT_COLUMN = "GPU-h / clairvoyant"


def comparison(
    runs: Sequence[tuple[str, dict[str, Any]]], clairvoyant: str | None = None
) -> list[dict[str, Any]]:
    """One row per policy and workload, then the policy's total, from `(label, summarize(...))` pairs.

    `clairvoyant` is the label of the clairvoyant run, if any: each row then also gets its GPU-hours
    as a multiple of that run's for the same workload (None where it used none). A reference, not a
    bound: online policies beat it at some SLAs; `work_floor` is the bound."""
    reference: dict[str, float] = {}
    for label, summary in runs:
        if label == clairvoyant:
            reference = {r["workload"]: r["gpu_hours"] for r in summary["workloads"]}
            reference["total"] = summary["total"]["gpu_hours"]
    rows = []
    for label, summary in runs:
        for name, r in [*((r["workload"], r) for r in summary["workloads"]), ("total", summary["total"])]:
            row = {
                "policy": label,
                "workload": name,
                "gpu_hours": r["gpu_hours"],
                "wait_p95_s": r["wait_p95_s"],
                "within_sla": r["within_sla"],
                "cost": r["cost"],
                "scale_actions": r["scale_actions"],
            }
            if clairvoyant is not None:
                base = reference.get(name)
                row["gpu_hours_vs_clairvoyant"] = r["gpu_hours"] / base if base else None
            rows.append(row)
    return rows


def format_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of `comparison` as a text table, a rule between policies."""
    with_clairvoyant = any("gpu_hours_vs_clairvoyant" in r for r in rows)
    columns = (*COMPARISON_COLUMNS, CLAIRVOYANT_COLUMN) if with_clairvoyant else COMPARISON_COLUMNS
    cells = []
    for r in rows:
        line = [
            r["policy"],
            r["workload"],
            f"{r['gpu_hours']:.2f}",
            _seconds(r["wait_p95_s"]),
            _share(r["within_sla"]),
            f"{r['cost']:.2f}",
            str(r["scale_actions"]),
        ]
        if with_clairvoyant:
            ratio = r.get("gpu_hours_vs_clairvoyant")
            line.append("-" if ratio is None else f"{ratio:.2f}x")
        cells.append(line)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line_of(values: Sequence[str]) -> str:
        left = [v.ljust(w) for v, w in zip(values[:2], widths[:2], strict=True)]
        right = [v.rjust(w) for v, w in zip(values[2:], widths[2:], strict=True)]
        return "  ".join([*left, *right]).rstrip()

    rule = "-" * len(line_of(columns))
    out = [line_of(columns), rule]
    for i, (r, c) in enumerate(zip(rows, cells, strict=True)):
        if i and r["policy"] != rows[i - 1]["policy"]:
            out.append(rule)
        out.append(line_of(c))
    if with_clairvoyant:
        out.append(
            f"{CLAIRVOYANT_COLUMN}: GPU-hours as a multiple of the clairvoyant run's (an offline heuristic,"
            " not a bound: online policies beat it at some SLAs)"
        )
    return "\n".join(out)
