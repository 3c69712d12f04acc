"""Scaling quality on real traces: GPU-hours, cost and queue wait, for our policy and the baselines.

    python benchmarks/quality.py [--jobs 2] [--seed 1] [--out benchmarks/results] [--quick]

For each real trace in ../shared/traces (bundled byte-exact in autoscaler/sim/data): the bursty code
trace at 20x its recorded load and the steady conversation trace at 10x (benchmarks/scenarios/), on
a regular A100 pool (~90 s startup, too small for the peaks) plus a SaladCloud pool (60 s to 10 min
startup, heavy-tailed, half the throughput, an eighth of the price per GPU-hour, interrupted now and
then). Every policy runs in the same simulated cluster with the same pools, spill-over and caps; only
the decision logic differs. The rows, per trace:

    work floor         the physical lower bound (`sim.report.work_floor`): the trace's total service
                       seconds / concurrency on the pool with the fewest GPUs per unit of throughput
                       (the cost floor: on the pool with the fewest dollars per unit of throughput).
                       Every row is shown as a multiple of it; one below it is reported as an error.
    ours               queue-sla with ONE configuration for both traces (maxWaitSeconds = the SLA);
                       whatever the scenarios give it per trace is printed as a disclosed leak
    ours, cost-first   the same policy and options with the pools listed cheapest per unit of
                       throughput first (`presets.cheapest_first`) and rebalance on (running
                       replicas move to the cheap pool when it has room, `presets.rebalanced`): the
                       cost operating point, judged on cost against the cheapest expert KEDA at an
                       equal or higher share
    queue-sla          the same policy with other maxWaitSeconds (operating points, not the headline)
    expert KEDA        `expert_keda_grid()`: the configurations an expert KEDA user would try; their
                       Pareto front (fewest GPU-hours for the share within the SLA) is the anchor
    KEDA defaults      the `keda-hpa` preset as is (KEDA's and the HPA's defaults), a labelled row
    knative-kpa        Knative's KPA on in-flight + queued requests, target utilisation swept
    static peak        a fixed fleet sized for the trace's busiest minute
    static search      offline, in hindsight: the smallest static fleet whose share of requests within
                       the SLA reaches a target (99 %, and the share of the expert KEDA configuration
                       the headline compares with), found by bisection on `static-peak=N` runs. A
                       static fleet is sized with the whole trace in hand: a reference, not a policy.
                       Bisection assumes the share grows with N; it nearly does (more replicas also
                       draw other Salad startups and interruptions), so N is the smallest bisection
                       found, not a proven minimum.
    clairvoyant        an offline heuristic that knows every arrival (not a bound: online policies
                       beat it on both axes at some SLAs)

Then the headline per trace: ours against the expert KEDA configuration chosen per trace (oracle-
tuned) with the fewest GPU-hours (and, separately, the lowest cost) among those at an equal or higher
share within the SLA, as ratios, next to issue 10's targets with PASS/MISS. Then the contention
scenario (both traces under one company cap below their combined peak): each policy's wait per
workload by priority and the peak GPUs against the cap. Writes quality.md, quality.json and
quality.png to --out. Deterministic for a seed: every run draws from its own seeded generators,
whatever the number of --jobs, and the searches depend only on the runs' results.

Budget: the issue asks for under 15 minutes on 2 cores with --jobs 2. Measured (seed 1): 280
simulations, 360-376 s of wall time on 2 cores (501 s with queue-sla's earlier defaults; 1264-1435 s
while other work shared them); --quick about a minute. A run takes 1.5-4 s of CPU, keda-hpa as it
overshoots to hundreds of replicas about 10 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from autoscaler.cli import tune_gc
from autoscaler.policies.queue_sla import QueueSlaPolicy
from autoscaler.sim.presets import (
    EXPERT_KEDA,
    KedaKnobs,
    apply_keda,
    apply_policy,
    cheapest_first,
    describe,
    keda_grid,
    knob_values,
    rebalanced,
    service_rate_per_replica,
)
from autoscaler.sim.report import WorkFloor, model_work_floor
from autoscaler.sim.runner import SimResult, Simulation, run
from autoscaler.sim.scenario import Overrides, load_scenario

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
SLA_SECONDS = 30.0
# Shares within the SLA are printed, and compared in the headline, in percent to this many decimals.
SHARE_DECIMALS = 2
TRACES = {"code": "quality-code.yaml", "conv": "quality-conv.yaml"}

# A preset's knob; None is the preset's own default.
# A preset's main knob, or a whole KEDA ScaledObject for the expert grid.
Knob = float | KedaKnobs | None

# Row families, in the order the tables show them.
OURS = "ours"
# The same policy and options with the pools listed cheapest per unit first (`cheapest_first`) and
# rebalance on (`rebalanced`: the replicas a replay starts with on the dear pool move to the cheap
# one): the cost operating point issue 10 allows beside the GPU-hours one. Its row answers the cost
# target. The GPU-hours row has no rebalance: it changes nothing on either trace (placement scales in
# from the last pool, so with one workload the first pool never has room while later ones run).
OURS_COST = "ours, cost-first"
QUEUE_SLA = "queue-sla"
EXPERT = "expert KEDA"
KEDA_DEFAULTS = "KEDA defaults"
KNATIVE = "knative-kpa"
STATIC_PEAK = "static peak"
STATIC_SEARCH = "static search"
CLAIRVOYANT = "clairvoyant"
FAMILIES = (
    OURS,
    OURS_COST,
    QUEUE_SLA,
    EXPERT,
    KEDA_DEFAULTS,
    KNATIVE,
    STATIC_PEAK,
    STATIC_SEARCH,
    CLAIRVOYANT,
)

# The share within the SLA a static fleet is searched for, besides the expert KEDA's.
STATIC_TARGET_SHARE = 0.99
# The windows of `Row.late_by_window` (seconds).
LATE_WINDOW_SECONDS = 300.0
# --quick replays only this much of each trace (seconds).
QUICK_WINDOW = (0.0, 900.0)


@dataclass(frozen=True)
class Targets:
    """Issue 10's headline targets: our figure / the expert KEDA's, at most."""

    gpu_hours: float
    cost: float
    p95: float = 1.0  # no worse


TARGETS = {"code": Targets(gpu_hours=0.75, cost=0.6), "conv": Targets(gpu_hours=0.95, cost=0.6)}


@dataclass(frozen=True)
class Config:
    """One configuration of one policy: what a row of the tables is a run of."""

    family: str
    label: str
    policy: str  # the preset's name
    knob: Knob = None
    cheapest_first: bool = False  # pools listed cheapest per unit of throughput first
    rebalance: bool = False  # running replicas move to earlier pools when they have room


def expert_keda_grid() -> list[tuple[str, str, Knob]]:
    """(label, preset, knobs) of every expert KEDA configuration the benchmark runs, through
    `apply_keda(sim, knobs)`. Issue 10's grid: protocol amqp/http, a MessageRate trigger on/off,
    pollingInterval 10/30 s, scaleDown stabilization 60/300/600 s (24 ScaledObjects), each with
    maxReplicaCount unset (the workload's 400), 60 or 120 pods; then around the expert's own choice
    (http + MessageRate, 10 s, the behavior block) the QueueLength value (the concurrency, 4, 16) and
    minReplicaCount (the workload's 1, or 8) too. 126 configurations per trace at ~2.5 s a run:
    about 5 minutes with --jobs 2. --quick takes every other one."""
    wide = keda_grid(max_replicas=(None, 60, 120))
    deep = keda_grid(
        EXPERT_KEDA,
        protocol=("http",),
        message_rate=(True,),
        polling_interval=(10.0,),
        value=(None, 4.0, 16.0),
        min_replicas=(None, 8),
        max_replicas=(None, 60, 120),
    )
    seen: set[KedaKnobs] = set()
    grid: list[tuple[str, str, Knob]] = []
    for knobs in (*wide, *deep):
        if knobs not in seen:
            seen.add(knobs)
            grid.append((knobs.label(), "keda-expert", knobs))
    return grid


def configs(quick: bool) -> list[Config]:
    """Every configuration run on each trace before the static searches."""
    grid = expert_keda_grid()
    if quick:
        grid = grid[::2]
    out = [
        Config(OURS, "queue-sla, one configuration", "queue-sla", None),
        Config(
            OURS_COST,
            "queue-sla, one configuration, pools cheapest first, rebalance",
            "queue-sla",
            None,
            cheapest_first=True,
            rebalance=True,
        ),
    ]
    out += [Config(QUEUE_SLA, f"queue-sla maxWait {w:g} s", "queue-sla", w) for w in (10, 60)]
    if not quick:
        out += [Config(QUEUE_SLA, f"queue-sla maxWait {w:g} s", "queue-sla", w) for w in (5, 20)]
    out += [Config(EXPERT, label, preset, knob) for label, preset, knob in grid]
    out.append(Config(KEDA_DEFAULTS, "keda-hpa, KEDA defaults", "keda-hpa", None))
    if not quick:
        out += [Config(KNATIVE, f"knative-kpa utilisation {u:g}", "knative-kpa", u) for u in (0.5, 0.7, 0.9)]
        out.append(Config(CLAIRVOYANT, "clairvoyant (offline heuristic, not a bound)", "clairvoyant", None))
    out.append(Config(STATIC_PEAK, "static, sized for the peak minute", "static-peak", None))
    return out


# Contention: each policy once, with its default knob, both workloads under one company cap.
CONTENTION = [
    Config(OURS, "queue-sla", "queue-sla"),
    Config(KEDA_DEFAULTS, "keda-hpa", "keda-hpa"),
    Config(KNATIVE, "knative-kpa", "knative-kpa"),
    Config(STATIC_PEAK, "static-peak", "static-peak"),
]


@dataclass(frozen=True)
class Row:
    scenario: str
    family: str
    label: str
    policy: str
    config: str  # the preset's own description of the run
    workload: str
    priority: int
    gpu_hours: float
    cost: float
    p50: float
    p95: float
    p99: float
    within_sla: float
    requests: int
    unserved: int
    peak_gpus: int
    cap: int | None
    actions: int
    seconds: float
    floor_gpu_hours: float  # the work floor of the whole trace
    floor_cost: float
    served_floor_gpu_hours: float  # the work floor of the requests this run served
    served_floor_cost: float
    # Requests that missed the SLA (late or never served) by the window they arrived in
    # (LATE_WINDOW_SECONDS each): where a policy loses its share, not only how much.
    late_by_window: tuple[int, ...] = ()


def _pct(wait: np.ndarray, q: float) -> float:
    return float(np.percentile(wait, q)) if wait.size else math.nan


def late_by_window(
    arrival: np.ndarray, served: np.ndarray, wait: np.ndarray, sla: float, window: float
) -> tuple[int, ...]:
    """Requests that missed `sla` per `window` of arrival time: served late, or never served
    (`served` indexes the served requests in `arrival`, `wait` is their wait in that order)."""
    if not arrival.size:
        return ()
    missed = np.ones(arrival.size, dtype=bool)
    missed[served] = wait > sla
    bins = (arrival // window).astype(np.int64)
    return tuple(int(n) for n in np.bincount(bins[missed], minlength=int(bins.max()) + 1))


def summarise(scenario: str, cfg: Config, sim: Simulation, result: SimResult, seconds: float) -> list[Row]:
    rows = []
    models = {m.name: m for m in sim.models}
    priorities = {w.name: w.priority for w in sim.workloads}
    if isinstance(cfg.knob, KedaKnobs):
        shown = cfg.label
    else:
        try:
            shown = describe(sim, cfg.policy, cfg.knob)
        except (TypeError, ValueError):
            shown = cfg.label  # a knob `describe` cannot print
    for w in result.workloads:
        wait = w.wait
        total = w.arrival.size
        floor = model_work_floor(models[w.name])
        served = model_work_floor(models[w.name], w.served)
        rows.append(
            Row(
                scenario=scenario,
                family=cfg.family,
                label=cfg.label,
                policy=cfg.policy,
                config=shown,
                workload=w.name,
                priority=priorities[w.name],
                gpu_hours=sum(p.gpu_hours for p in w.pools),
                cost=sum(p.cost for p in w.pools),
                p50=_pct(wait, 50),
                p95=_pct(wait, 95) if wait.size == total else math.inf,
                p99=_pct(wait, 99) if wait.size == total else math.inf,
                # A request never served is a miss, not a wait of zero.
                within_sla=float(np.count_nonzero(wait <= SLA_SECONDS)) / total if total else math.nan,
                requests=int(total),
                unserved=int(total - wait.size),
                peak_gpus=int(result.total_gpus.max()) if result.total_gpus.size else 0,
                cap=result.company_cap,
                actions=w.scale_actions,
                seconds=seconds,
                floor_gpu_hours=floor.gpu_hours,
                floor_cost=floor.cost,
                served_floor_gpu_hours=served.gpu_hours,
                served_floor_cost=served.cost,
                late_by_window=late_by_window(w.arrival, w.served, wait, SLA_SECONDS, LATE_WINDOW_SECONDS),
            )
        )
    return rows


Job = tuple[str, str, Config, Overrides]


def one_run(job: Job) -> list[Row]:
    """One simulation in a worker process: (label, scenario file, configuration, overrides)."""
    tune_gc()
    label, scenario, cfg, overrides = job
    sim = load_scenario(SCENARIOS / scenario, overrides)
    if isinstance(cfg.knob, KedaKnobs):
        sim = apply_keda(sim, cfg.knob)
    else:
        sim = apply_policy(sim, cfg.policy, cfg.knob)
    if cfg.cheapest_first:
        sim = cheapest_first(sim)
    if cfg.rebalance:
        sim = rebalanced(sim)
    t0 = time.process_time()
    result = run(sim)
    return summarise(label, cfg, sim, result, time.process_time() - t0)


# ----------------------------------------------------------------------------------------------
# Pure helpers (tests/sim/test_quality_benchmark.py)


def pareto(points: Sequence[tuple[float, float]]) -> set[int]:
    """Indices of the (GPU-hours, share within the SLA) points no other point beats: none has fewer
    or as many GPU-hours and as large or a larger share, better on at least one."""
    front = set()
    for i, (hours, share) in enumerate(points):
        dominated = any(
            oh <= hours and os_ >= share and (oh < hours or os_ > share)
            for j, (oh, os_) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def below_floor(row: Row) -> list[str]:
    """What of `row` is below the work floor of the requests it served: the simulator or the bound is
    wrong if anything is (a relative 1e-9 absorbs the float sums)."""
    out = []
    if row.gpu_hours < row.served_floor_gpu_hours * (1 - 1e-9):
        out.append(f"{row.gpu_hours:.3f} GPU-hours < the work floor {row.served_floor_gpu_hours:.3f}")
    if row.cost < row.served_floor_cost * (1 - 1e-9):
        out.append(f"${row.cost:.3f} < the cost floor ${row.served_floor_cost:.3f}")
    return out


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, with 0 / 0 = 1 (equal) and x / 0 = inf."""
    if theirs == 0:
        return 1.0 if ours == 0 else math.inf
    return ours / theirs


@dataclass(frozen=True)
class Verdict:
    measure: str
    ours: float
    theirs: float
    against: str  # the label of the configuration compared with
    ratio: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.ratio <= self.limit  # NaN (inf / inf) never passes


@dataclass(frozen=True)
class Headline:
    ours: Row
    by_gpu: Row  # the expert KEDA configuration compared on GPU-hours and p95
    by_cost: Row  # the one compared on cost
    same_share: bool  # False: no expert configuration reached our share (see `headline`)
    verdicts: tuple[Verdict, ...]


def headline(ours: Row, expert: Sequence[Row], targets: Targets) -> Headline | None:
    """Ours against the expert KEDA, oracle-tuned for the trace: among its configurations with an
    equal or higher share within the SLA, the one with the fewest GPU-hours (ties: higher share,
    then lower p95), compared on GPU-hours and p95, and the cheapest, compared on cost. Where none
    reaches our share, the ones with KEDA's highest share stand in (`same_share` False): that
    favours KEDA on GPU-hours and cost, since a lower share costs less. Shares are compared as the
    tables print them, in percent to two decimals (`SHARE_DECIMALS`): a configuration that misses 2
    of 281,850 requests (99.9993 %) reaches our 100.00 %. A difference no table shows, and no other
    seed would reproduce, must not decide which configuration we claim a lead over."""
    if not expert:
        return None
    reaching = [r for r in expert if reaches(r.within_sla, ours.within_sla)]
    same_share = bool(reaching)
    if not reaching:
        best = max(r.within_sla for r in expert)
        reaching = [r for r in expert if r.within_sla == best]
    by_gpu = min(reaching, key=lambda r: (r.gpu_hours, -r.within_sla, r.p95))
    by_cost = min(reaching, key=lambda r: (r.cost, -r.within_sla, r.p95))
    verdicts = (
        Verdict(
            "GPU-hours",
            ours.gpu_hours,
            by_gpu.gpu_hours,
            by_gpu.label,
            ratio(ours.gpu_hours, by_gpu.gpu_hours),
            targets.gpu_hours,
        ),
        Verdict(
            "cost $", ours.cost, by_cost.cost, by_cost.label, ratio(ours.cost, by_cost.cost), targets.cost
        ),
        Verdict("p95 wait s", ours.p95, by_gpu.p95, by_gpu.label, ratio(ours.p95, by_gpu.p95), targets.p95),
    )
    return Headline(ours, by_gpu, by_cost, same_share, verdicts)


def _shown(share: float) -> float:
    """A share within the SLA as the tables print it (percent, `SHARE_DECIMALS` decimals)."""
    return round(100.0 * share, SHARE_DECIMALS)


def reaches(share: float, target: float) -> bool:
    """`share` is at least `target` as the tables print them (see `headline`)."""
    return _shown(share) >= _shown(target)


def pct(share: float) -> str:
    """A share within the SLA as the tables print it: "93.38%"."""
    return f"{_shown(share):.{SHARE_DECIMALS}f}%"


@dataclass
class StaticSearch:
    """Bisection for the smallest static replica count whose share within the SLA reaches `target`
    (as the tables print them: `reaches`). `probe()` names the next count to run (None: done),
    `record(n, share)` takes its result; `found` is the answer, None if even `cap` replicas fall
    short. Starts from `hi`, doubling it up to `cap` until it reaches the target."""

    target: float
    hi: int
    cap: int
    lo: int = 1  # every count below lo is known to fall short
    hi_reaches: bool = False
    done: bool = False
    found: int | None = None

    def __post_init__(self) -> None:
        self.hi = max(1, min(self.hi, self.cap))

    def probe(self) -> int | None:
        if self.done:
            return None
        return self.hi if not self.hi_reaches else (self.lo + self.hi) // 2

    def record(self, n: int, share: float) -> None:
        if not self.hi_reaches:
            if reaches(share, self.target):
                self.hi_reaches = True
            elif self.hi >= self.cap:
                self.done = True
                return
            else:
                self.lo, self.hi = self.hi + 1, min(2 * self.hi, self.cap)
        elif reaches(share, self.target):
            self.hi = n
        else:
            self.lo = n + 1
        if self.hi_reaches and self.lo >= self.hi:
            self.done, self.found = True, self.hi


# ----------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Runs:
    rows: list[Row]  # of the jobs, in their order
    static: dict[tuple[str, int], Row]  # every static fleet run, per (trace, N)
    found: dict[tuple[str, float], int | None]  # the smallest fleet per (trace, target share)


def execute(
    pool: Executor,
    workers: int,
    jobs: Sequence[Job],
    overrides: Overrides,
    start: dict[str, int],
    cap: dict[str, int],
) -> Runs:
    """Run `jobs` and the static searches on `pool`, `workers` runs at a time. A search's probes
    wait for each other, so they go first whenever one is due and the jobs fill the other workers.
    Each trace searches for STATIC_TARGET_SHARE from the start, and for the share of the expert KEDA
    configuration the headline compares with once that trace's ours and expert runs are in. Every
    count is run once per trace; what runs depends on results only, not on the order they arrive."""
    rows_of: dict[int, list[Row]] = {}
    static: dict[tuple[str, int], Row] = {}
    searches = {(t, STATIC_TARGET_SHARE): StaticSearch(STATIC_TARGET_SHARE, start[t], cap[t]) for t in start}
    unanchored = set(start)
    queue = deque(range(len(jobs)))
    running: dict[Future[list[Row]], tuple[str, int] | int] = {}
    started: set[tuple[str, int]] = set()

    def due() -> list[tuple[str, int]]:
        out = []
        for (t, _), search in searches.items():
            while (n := search.probe()) is not None and (t, n) in static:
                search.record(n, static[(t, n)].within_sla)
            if n is not None and (t, n) not in started and (t, n) not in out:
                out.append((t, n))
        return out

    while True:
        for t in sorted(unanchored):
            mine = [i for i, j in enumerate(jobs) if j[0] == t and j[2].family in (OURS, EXPERT)]
            if all(i in rows_of for i in mine):
                unanchored.discard(t)
                picked = [r for i in mine for r in rows_of[i]]
                h = headline(ours_row(picked, t), family_rows(picked, t, EXPERT), TARGETS[t])
                if h is not None and (t, h.by_gpu.within_sla) not in searches:
                    searches[(t, h.by_gpu.within_sla)] = StaticSearch(h.by_gpu.within_sla, start[t], cap[t])
        probes = due()
        while len(running) < workers and (probes or queue):
            if probes:
                t, n = probes.pop(0)
                started.add((t, n))
                running[pool.submit(one_run, (t, TRACES[t], static_config(n), overrides))] = (t, n)
            else:
                i = queue.popleft()
                running[pool.submit(one_run, jobs[i])] = i
        if not running:
            break
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            key = running.pop(future)
            if isinstance(key, int):
                rows_of[key] = future.result()
            else:
                (static[key],) = future.result()
    rows = [r for i in range(len(jobs)) for r in rows_of[i]]
    return Runs(rows, static, {k: s.found for k, s in sorted(searches.items())})


def static_config(n: int) -> Config:
    return Config(STATIC_SEARCH, f"static {n}", "static-peak", float(n))


# ----------------------------------------------------------------------------------------------
# The report


def fmt(x: float, digits: int = 1) -> str:
    return "inf" if math.isinf(x) else ("-" if math.isnan(x) else f"{x:.{digits}f}")


def times(x: float) -> str:
    return "-" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2f}x")


def trace_table(label: str, rows: Sequence[Row], floor: WorkFloor) -> list[str]:
    rows = sorted(rows, key=lambda r: FAMILIES.index(r.family))
    front = pareto([(r.gpu_hours, r.within_sla) for r in rows])
    expert = [i for i, r in enumerate(rows) if r.family == EXPERT]
    expert_front = {expert[i] for i in pareto([(rows[i].gpu_hours, rows[i].within_sla) for i in expert])}
    out = [
        f"### {label}: {rows[0].workload}",
        "",
        f"Work floor: {floor.service_seconds:,.0f} s of service / concurrency {floor.concurrency} on "
        f"{floor.gpu_pool} = **{floor.gpu_hours:.1f} GPU-hours**; cost floor on {floor.cost_pool} = "
        f"**${floor.cost:.1f}**. No policy, online or offline, uses less.",
        "",
        f"| family | configuration | GPU-hours | x work floor | cost $ | x cost floor "
        f"| within {SLA_SECONDS:g} s | p95 wait s | p99 wait s | actions | front |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        f"| work floor | physical bound | {floor.gpu_hours:.1f} | 1.00x | {floor.cost:.1f} | 1.00x "
        "| - | - | - | - | |",
    ]
    for i, r in enumerate(rows):
        marks = ("*" if i in front else "") + ("K" if i in expert_front else "")
        unserved = f" ({r.unserved} never served)" if r.unserved else ""
        out.append(
            f"| {r.family} | {r.label}{unserved} | {r.gpu_hours:.1f} "
            f"| {times(r.gpu_hours / floor.gpu_hours)} | "
            f"{r.cost:.1f} | {times(r.cost / floor.cost)} | {pct(r.within_sla)} | {fmt(r.p95)} | "
            f"{fmt(r.p99)} | {r.actions} | {marks} |"
        )
    out += [
        "",
        "front: `*` on the Pareto front of all rows (fewest GPU-hours for the share within the SLA), "
        "`K` on the expert KEDA family's front (the anchor). Static search rows were sized in hindsight "
        "with the whole trace in hand; the clairvoyant row is an offline heuristic, not a bound.",
        "",
    ]
    return out


def headline_block(
    label: str,
    h: Headline | None,
    statics: Sequence[tuple[float, Row | None]],
    leaks: Sequence[str],
    cost_point: Headline | None = None,
) -> list[str]:
    out = [
        f"#### Headline, {label} trace: ours (one configuration) against the expert KEDA tuned for "
        "this trace",
        "",
    ]
    if h is None:
        return [*out, "No expert KEDA run: nothing to compare.", ""]
    o = h.ours
    out.append(
        f"Ours: {o.config}: {o.gpu_hours:.1f} GPU-h ({times(o.gpu_hours / o.floor_gpu_hours)} the work "
        f"floor), ${o.cost:.1f} ({times(o.cost / o.floor_cost)} the cost floor), {pct(o.within_sla)} "
        f"within {SLA_SECONDS:g} s, p95 {fmt(o.p95)} s."
    )
    for what, r in (("fewest GPU-hours", h.by_gpu), ("cheapest", h.by_cost)):
        out.append(
            f"Expert KEDA, {what} at {'an equal or higher' if h.same_share else 'its highest (below ours)'} "
            f"share: {r.label}: {r.gpu_hours:.1f} GPU-h, ${r.cost:.1f}, {pct(r.within_sla)}, "
            f"p95 {fmt(r.p95)} s."
        )
    out += [
        "",
        "| measure | ours | expert KEDA | ratio | issue 10 target | verdict |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for v in h.verdicts:
        target = "no worse (<= 1.00x)" if v.measure.startswith("p95") else f"<= {v.limit:.2f}x"
        out.append(
            f"| {v.measure} | {fmt(v.ours)} | {fmt(v.theirs)} | {times(v.ratio)} | {target} | "
            f"{'PASS' if v.passed else 'MISS'}{'' if h.same_share else ' (*)'} |"
        )
    if cost_point is not None:
        c, v = cost_point.ours, cost_point.verdicts[1]
        out.append(
            f"| cost $, pools cheapest first + rebalance | {fmt(v.ours)} | {fmt(v.theirs)} | "
            f"{times(v.ratio)} | "
            f"<= {v.limit:.2f}x | {'PASS' if v.passed else 'MISS'}{'' if cost_point.same_share else ' (*)'} |"
        )
        out += [
            "",
            f"Cost operating point (same policy and options, pools listed cheapest per unit first, "
            "rebalance on): "
            f"{c.gpu_hours:.1f} GPU-h, ${c.cost:.1f}, {pct(c.within_sla)} within {SLA_SECONDS:g} s, "
            f"p95 {fmt(c.p95)} s; compared on cost with the cheapest expert KEDA configuration at "
            f"{'an equal or higher' if cost_point.same_share else 'its highest'} share: "
            f"{cost_point.by_cost.label} (${cost_point.by_cost.cost:.1f}, "
            f"{pct(cost_point.by_cost.within_sla)}, p95 {fmt(cost_point.by_cost.p95)} s).",
        ]
    if not h.same_share:
        out += [
            "",
            "(*) No expert KEDA configuration reached our share: the ratios compare with its highest "
            "share, below ours, which favours KEDA; the targets are defined at an equal share.",
        ]
    out.append("")
    for share, fleet in statics:
        if fleet is None:
            out.append(
                f"Static search: no static fleet up to the cap reaches {pct(share)} within {SLA_SECONDS:g} s."
            )
        else:
            out.append(
                f"Static search (offline, whole trace in hand): {fleet.label} is the smallest fleet with "
                f">= {pct(share)} within {SLA_SECONDS:g} s: {fleet.gpu_hours:.1f} GPU-h (ours / it: "
                f"{times(ratio(o.gpu_hours, fleet.gpu_hours))}), ${fleet.cost:.1f}, "
                f"{pct(fleet.within_sla)}, p95 {fmt(fleet.p95)} s."
            )
    out += [f"Disclosed: {leak}" for leak in leaks]
    shown = [("ours", o), ("expert KEDA (GPU-hours row)", h.by_gpu)]
    if cost_point is not None:
        shown.insert(1, ("ours, cost-first", cost_point.ours))
    shown += [(f"static search: {r.label}", r) for _, r in statics if r is not None]
    return [*out, "", *late_table(shown), ""]


def late_table(rows: Sequence[tuple[str, Row]]) -> list[str]:
    """Where the share within the SLA is lost: missed requests per window of arrival time."""
    width = max((len(r.late_by_window) for _, r in rows), default=0)
    if not width:
        return []
    minutes = LATE_WINDOW_SECONDS / 60
    head = " | ".join(f"{k * minutes:g}-{(k + 1) * minutes:g}" for k in range(width))
    out = [
        f"Requests over {SLA_SECONDS:g} s (or never served) by minute of arrival:",
        "",
        f"| run | {head} | all |",
        "|---|" + "---:|" * (width + 1),
    ]
    for name, r in rows:
        cells = [*r.late_by_window, *([0] * (width - len(r.late_by_window)))]
        out.append(f"| {name} | " + " | ".join(f"{n:,}" for n in cells) + f" | {sum(cells):,} |")
    return out


def leak_notes(sims: dict[str, Simulation]) -> list[str]:
    """What ours is given per trace: queue-sla options that differ between the traces (a per-trace
    knob), and a serviceRatePerReplica equal to the trace's own mean (a whole-trace constant)."""
    options: dict[str, dict[str, object]] = {}
    notes = []
    for label, sim in sims.items():
        models = {m.name: m for m in sim.models}
        for spec in sim.workloads:
            if not isinstance(spec.policy, QueueSlaPolicy):
                continue
            opts = spec.policy.options.model_dump(by_alias=True)
            options[label] = opts
            derived = service_rate_per_replica(models[spec.name])
            if opts.get("serviceRatePerReplica") is None:
                notes.append(
                    f"{label}: queue-sla is given no service rate and learns it online "
                    "(deliveryTrigger, inFlightTrigger, concurrencyPerReplica); the expert KEDA rows' "
                    f"MessageRate target is {EXPERT_KEDA.message_rate_share:g} x concurrency / the mean "
                    f"service time of this whole trace ({derived:.3f}/s): a constant only KEDA is given."
                )
                continue
            given = float(opts["serviceRatePerReplica"])
            if math.isclose(given, derived, rel_tol=0.02):
                notes.append(
                    f"{label}: serviceRatePerReplica {given:g} in the policy file is concurrency / the mean "
                    f"service time of this whole trace ({derived:.3f}): a constant a live deployment does "
                    "not know in advance (a leak from the trace)."
                )
    if len(options) > 1:
        keys = sorted({k for o in options.values() for k in o})
        differ = [k for k in keys if len({json.dumps(o.get(k)) for o in options.values()}) > 1]
        shown = "; ".join(f"{k}: " + ", ".join(f"{t} {options[t].get(k)}" for t in options) for k in differ)
        notes.append(
            f"queue-sla options that differ between the traces (per-trace knobs): {shown}."
            if differ
            else "queue-sla has the same options on every trace."
        )
    return notes


def contention_table(rows: Sequence[Row]) -> list[str]:
    out = [
        "### contention: both traces under one company cap",
        "",
        "| policy | workload | priority | GPU-hours | x work floor | p95 wait s | within 30 s "
        "| peak GPUs / cap |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.policy, -r.priority)):
        out.append(
            f"| {r.policy} | {r.workload} | {r.priority} | {r.gpu_hours:.1f} | "
            f"{times(r.gpu_hours / r.floor_gpu_hours)} | {fmt(r.p95)} | {100 * r.within_sla:.1f}% | "
            f"{r.peak_gpus} / {r.cap} |"
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


def plot(rows: Sequence[Row], floors: dict[str, WorkFloor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(floors), figsize=(7 * len(floors), 5), squeeze=False)
    for ax, (label, floor) in zip(axes[0], floors.items(), strict=True):
        mine = [r for r in rows if r.scenario == label]
        for family in FAMILIES:
            # Ours is one of queue-sla's operating points: its curve passes through it.
            members = (QUEUE_SLA, OURS) if family == QUEUE_SLA else (family,)
            pts = sorted((r.gpu_hours, 100 * r.within_sla) for r in mine if r.family in members)
            if not pts:
                continue
            style = "-o" if len(pts) > 1 and family in (QUEUE_SLA, EXPERT, KNATIVE) else "D"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                label=family,
                markersize=9 if family == OURS else 5,
            )
        ax.axvline(floor.gpu_hours, color="black", linestyle="--", linewidth=1, label="work floor")
        ax.set_title(f"{label} trace: GPU-hours against requests within {SLA_SECONDS:g} s")
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel(f"% of requests waiting <= {SLA_SECONDS:g} s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the first {QUICK_WINDOW[1]:g} s of each trace and a few configurations: a smoke run",
    )
    parser.add_argument("--contention-scale", type=float, default=10.0)
    args = parser.parse_args()

    window = QUICK_WINDOW if args.quick else None
    overrides = Overrides(seed=args.seed, window=window)
    contention = Overrides(seed=args.seed, window=window, scale=args.contention_scale)
    sims = {t: load_scenario(SCENARIOS / f, overrides) for t, f in TRACES.items()}
    floors = {t: model_work_floor(s.models[0]) for t, s in sims.items()}
    jobs: list[Job] = [("contention", "contention.yaml", cfg, contention) for cfg in CONTENTION]
    jobs += [(t, f, cfg, overrides) for t, f in TRACES.items() for cfg in configs(args.quick)]
    # The slowest runs first (contention, then KEDA's), so that no straggler ends the batch alone;
    # ours and the expert KEDA before the rest of each trace, so that its second search starts early.
    jobs.sort(
        key=lambda j: (j[0] != "contention", j[2].family not in (EXPERT, KEDA_DEFAULTS, OURS, OURS_COST))
    )

    start = {t: int(knob_values(s, "static-peak", None)[s.workloads[0].name]) for t, s in sims.items()}
    cap = {t: s.workloads[0].max_replicas for t, s in sims.items()}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = execute(pool, args.jobs, jobs, overrides, start, cap)
    wall = time.perf_counter() - t0
    found, static_runs = runs.found, runs.static
    heads = {
        t: headline(ours_row(runs.rows, t), family_rows(runs.rows, t, EXPERT), TARGETS[t]) for t in TRACES
    }
    cost_points = {
        t: headline(r[0], family_rows(runs.rows, t, EXPERT), TARGETS[t])
        if (r := family_rows(runs.rows, t, OURS_COST))
        else None
        for t in TRACES
    }
    targets = {t: [share for (u, share) in found if u == t] for t in TRACES}
    rows = runs.rows + [static_runs[(t, n)] for (t, _), n in found.items() if n is not None]
    rows = list({(r.scenario, r.label, r.workload): r for r in rows}.values())  # two targets, one fleet
    simulations = len(jobs) + len(static_runs)

    quick = " --quick" if args.quick else ""
    command = f"python benchmarks/quality.py{quick} --seed {args.seed} --jobs {args.jobs}"
    lines = [
        "# Scaling quality on real traces",
        "",
        f"Seed {args.seed}; {simulations} simulations in {wall:.0f} s of wall time on {args.jobs} "
        f"process(es). SLA: {SLA_SECONDS:g} s queue wait. Command: `{command}`."
        + (f" QUICK: only the first {QUICK_WINDOW[1]:g} s of each trace." if args.quick else ""),
        "",
        "## Headline",
        "",
    ]
    # Against the whole traces, even in a --quick run: the constants in the files came from them.
    leaks = leak_notes(
        {t: load_scenario(SCENARIOS / f, Overrides(seed=args.seed)) for t, f in TRACES.items()}
    )
    for t in TRACES:
        statics = [
            (share, static_runs[(t, n)] if (n := found[(t, share)]) is not None else None)
            for share in targets[t]
        ]
        lines += headline_block(
            t, heads[t], statics, [n for n in leaks if n.startswith((t, "queue-sla"))], cost_points[t]
        )
    lines += ["## Every run", ""]
    for t in TRACES:
        lines += trace_table(t, [r for r in rows if r.scenario == t], floors[t])
    lines += contention_table([r for r in rows if r.scenario == "contention"])
    errors = [f"{r.scenario} {r.label} {r.workload}: {e}" for r in rows for e in below_floor(r)]
    if errors:
        lines += [
            "## ERROR: runs below the work floor (the simulator or the bound is wrong)",
            "",
            *errors,
            "",
        ]
    text = "\n".join(lines)
    print(text)
    for e in errors:
        print(f"ERROR: below the work floor: {e}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text + "\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str) + "\n")
    plot([r for r in rows if r.scenario in TRACES], floors, out / "quality.png")
    print(f"\nwrote {out / 'quality.md'}, {out / 'quality.json'}, {out / 'quality.png'}", file=sys.stderr)
    return 1 if errors else 0


def family_rows(rows: Iterable[Row], trace: str, family: str) -> list[Row]:
    """The rows of `family` run on `trace` (a row's scenario is its job's label)."""
    return [r for r in rows if r.scenario == trace and r.family == family]


def ours_row(rows: Iterable[Row], trace: str) -> Row:
    (ours,) = family_rows(rows, trace, OURS)
    return ours


if __name__ == "__main__":
    sys.exit(main())
