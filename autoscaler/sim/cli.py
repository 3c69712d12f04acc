"""`autoscaler simulate` and `autoscaler explain`: the simulator's command-line edge.

`autoscaler.cli` imports this module while it builds its parser, for `add_simulate_arguments`, so
importing it must stay cheap: numpy, matplotlib and the simulator itself are imported inside the
functions that run a command. The wall clock appears here only, to pace the progress bar; the
simulation itself runs on its virtual clock. `--policy NAME[=KNOB]` (repeatable) replays the scenario
once per named policy (`sim.presets`) and ends with a comparison table. Exit codes: 0 done, 1 nothing
to explain, 2 bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from autoscaler.sim.runner import SimResult, Simulation
    from autoscaler.sim.scenario import Overrides

# At most this many progress redraws per second of wall time.
PROGRESS_HZ = 5.0
MILESTONES = (0.25, 0.5, 0.75, 1.0)


def _window(text: str) -> tuple[float, float]:
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        window = (float(start), float(end))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not START:END in seconds, e.g. 0:600") from None
    if window[0] < 0 or window[1] <= window[0]:
        raise argparse.ArgumentTypeError(f"'{text}': need 0 <= START < END")
    return window


def _trace(text: str) -> tuple[str, str]:
    workload, sep, source = text.partition("=")
    if not sep or not workload or not source:
        raise argparse.ArgumentTypeError(f"'{text}' is not WORKLOAD=PATH (or WORKLOAD=code, WORKLOAD=conv)")
    return workload, source


def _policy(text: str) -> tuple[str, float | None]:
    """`NAME` or `NAME=KNOB`; the name is checked against the presets when the command runs, so that
    building the parser does not import the simulator."""
    name, sep, knob = text.partition("=")
    if not name or (sep and not knob):
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME or NAME=KNOB, e.g. keda-hpa or queue-sla=20")
    if not sep:
        return name, None
    try:
        value = float(knob)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': the knob '{knob}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}': the knob must be a finite number")
    return name, value


def _number(text: str, *, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value >= 0 if zero_ok else value > 0):
        raise argparse.ArgumentTypeError(f"'{text}' must be {'at least' if zero_ok else 'greater than'} 0")
    return value


def _positive(text: str) -> float:
    return _number(text, zero_ok=False)


def _non_negative(text: str) -> float:
    return _number(text, zero_ok=True)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", metavar="PATH", help="scenario file (default: the bundled demo)")
    parser.add_argument(
        "--policies", metavar="PATH", nargs="+", help="policy files or directories, instead of the scenario's"
    )
    parser.add_argument(
        "--trace",
        metavar="WORKLOAD=PATH",
        type=_trace,
        action="append",
        default=[],
        help="replay this trace for WORKLOAD: a CSV path, or code / conv (bundled); repeatable",
    )
    parser.add_argument(
        "--window", metavar="START:END", type=_window, help="replay only these seconds of the traces"
    )
    parser.add_argument(
        "--speed", metavar="X", type=_positive, help="compress time: arrivals come X times faster"
    )
    parser.add_argument(
        "--scale", metavar="K", type=_non_negative, help="load multiplier: each request K times on average"
    )
    parser.add_argument(
        "--seed", metavar="N", type=int, help="seed of every random draw (traces, startups, interruptions)"
    )
    parser.add_argument("--tick", metavar="S", type=_positive, help="seconds between reconciles (default 1)")
    parser.add_argument(
        "--out", metavar="DIR", default="sim-results", help="where results go (default: sim-results)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (and the matplotlib import)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--sla", metavar="SECONDS", type=_positive, help="queue-wait SLA for every workload in the report"
    )
    parser.add_argument(
        "--policy",
        metavar="NAME[=KNOB]",
        type=_policy,
        action="append",
        default=[],
        help="run the scenario once with every workload on this policy (same seed) and compare the runs;"
        " repeatable. NAME: clairvoyant (KNOB: SLA seconds), keda-expert (KEDA as an expert deploys it:"
        " http QueueLength + MessageRate, 10 s poll, HPA behavior; KNOB: target per replica),"
        " keda-hpa (KEDA's defaults; KNOB: target per replica),"
        " knative-kpa (target utilization), queue-sla (max wait seconds), static-peak (replicas),"
        " target (target per replica)",
    )


def _overrides(args: argparse.Namespace) -> Overrides:
    from autoscaler.sim.scenario import Overrides

    return Overrides(
        policies=args.policies,
        traces=dict(args.trace or []),
        window=args.window,
        speed=args.speed,
        scale=args.scale,
        seed=args.seed,
        tick=args.tick,
        sla=args.sla,
    )


class _Progress:
    """A `\\r[#####.....] 42% t=1470s` line on a terminal; a few milestone lines otherwise (CI logs)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last_draw = -math.inf
        self._milestone = 0
        self._at: tuple[float, float] | None = None

    def __call__(self, now: float, horizon: float) -> None:
        self._at = (now, horizon)
        if self._tty:
            wall = time.monotonic()
            if wall - self._last_draw >= 1.0 / PROGRESS_HZ:
                self._last_draw = wall
                self._draw()
            return
        share = self._share()
        while self._milestone < len(MILESTONES) and share >= MILESTONES[self._milestone]:
            self._stream.write(
                f"simulated {100 * MILESTONES[self._milestone]:.0f}% (t={now:.0f}s of {horizon:.0f}s)\n"
            )
            self._milestone += 1

    def _share(self) -> float:
        if self._at is None:
            return 0.0
        now, horizon = self._at
        return min(1.0, now / horizon) if horizon > 0 else 1.0

    def _draw(self) -> None:
        if self._at is not None:
            share = self._share()
            self._stream.write(f"\r[{'#' * round(share * 20):.<20}] {100 * share:3.0f}% t={self._at[0]:.0f}s")
            self._stream.flush()

    def close(self) -> None:
        """The final state, then a newline so that what follows starts on a line of its own."""
        if self._tty and self._at is not None:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()


def simulate_main(args: argparse.Namespace) -> int:
    from autoscaler.sim.report import format_table, summarize, write_summary
    from autoscaler.sim.runner import write_decision_log
    from autoscaler.sim.scenario import ScenarioError, default_scenario_path, load_scenario

    scenario = Path(args.scenario) if args.scenario else default_scenario_path()
    try:
        sim = load_scenario(scenario, _overrides(args))
    except ScenarioError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"--out {out}: cannot create the directory: {exc.strerror or exc}", file=sys.stderr)
        return 2

    if args.policy:
        return _compare(args, sim, out)

    result, elapsed = _run(sim, args.quiet)
    summary = summarize(result, args.sla)
    print(format_table(summary))
    written = [out / "summary.json", out / "decisions.jsonl"]
    write_summary(written[0], summary)
    write_decision_log(written[1], result.decisions)
    if not args.no_plot:
        from autoscaler.sim.plot import write_plot

        written.append(out / "simulation.png")
        write_plot(result, written[-1])
    print(
        f"simulated {result.end:.0f}s in {elapsed:.1f}s of wall time; wrote " + ", ".join(map(str, written))
    )
    return 0


def _run(sim: Simulation, quiet: bool) -> tuple[SimResult, float]:
    """One replay with the progress line (unless quiet); the result and its wall time in seconds."""
    from autoscaler.sim.runner import run

    progress = None if quiet else _Progress(sys.stderr)
    started = time.monotonic()
    try:
        result = run(sim, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    return result, time.monotonic() - started


def _slug(name: str, knob: float | None) -> str:
    """A file-name part for one `--policy`: `keda-hpa`, `queue-sla-20`, `knative-kpa-0.5`."""
    return name if knob is None else f"{name}-{knob:g}"


def _compare(args: argparse.Namespace, sim: Simulation, out: Path) -> int:
    """`--policy` given: one run per named policy on the same scenario and seed, each one's table, then
    the comparison. Files per policy: summary-<slug>.json, decisions-<slug>.jsonl,
    simulation-<slug>.png; the comparison goes to comparison.json."""
    from autoscaler.sim.presets import PresetError, apply_policy, describe
    from autoscaler.sim.report import comparison, format_comparison, format_table, summarize, write_summary
    from autoscaler.sim.runner import write_decision_log

    # Every name and knob is checked before the first run, so a typo in the last --policy does not
    # cost the runs before it.
    chosen: list[tuple[str, str, float | None, Simulation]] = []
    for name, knob in args.policy:
        try:
            chosen.append((describe(sim, name, knob), name, knob, apply_policy(sim, name, knob)))
        except PresetError as exc:
            print(f"--policy {name}{'' if knob is None else f'={knob:g}'}: {exc}", file=sys.stderr)
            return 2
    runs: list[tuple[str, dict[str, Any]]] = []
    written: list[Path] = []
    floor = None
    total_elapsed = 0.0
    for title, name, knob, variant in chosen:
        result, elapsed = _run(variant, args.quiet)
        total_elapsed += elapsed
        summary = summarize(result, args.sla)
        # The title names each workload's knob; the comparison's rows repeat the short form.
        label = name if knob is None else f"{name}={knob:g}"
        print(f"== {title}")
        print(format_table(summary))
        print()
        runs.append((label, summary))
        if name == "clairvoyant":
            floor = label
        slug = _slug(name, knob)
        written += [out / f"summary-{slug}.json", out / f"decisions-{slug}.jsonl"]
        write_summary(written[-2], summary)
        write_decision_log(written[-1], result.decisions)
        if not args.no_plot:
            from autoscaler.sim.plot import write_plot

            written.append(out / f"simulation-{slug}.png")
            write_plot(result, written[-1])
    rows = comparison(runs, floor)
    print("== comparison (same scenario and seed; only the policy differs)")
    print(format_comparison(rows))
    written.append(out / "comparison.json")
    write_summary(written[-1], {"seed": sim.seed, "rows": rows})
    print(
        f"simulated {len(runs)} policies in {total_elapsed:.1f}s of wall time; wrote "
        + ", ".join(map(str, written))
    )
    return 0


def explain_main(args: argparse.Namespace) -> int:
    from autoscaler.sim.runner import decision_from_record, read_decision_log

    log = Path(args.log)
    if not log.is_file():
        print(
            f"no decision log at {log}: run `autoscaler simulate` first, or pass --log PATH", file=sys.stderr
        )
        return 1
    try:
        records = read_decision_log(log)
    except (OSError, ValueError) as exc:
        print(f"cannot read the decision log {log}: {exc}", file=sys.stderr)
        return 1
    mine = [r for r in records if r.get("workload") == args.workload]
    if not mine:
        known = ", ".join(sorted({str(r.get("workload")) for r in records})) or "none"
        print(
            f"no decisions for workload '{args.workload}' in {log} (workloads there: {known})",
            file=sys.stderr,
        )
        return 1
    if args.at is not None:
        mine = [r for r in mine if float(r["at"]) <= args.at]
        if not mine:
            print(f"no decision for '{args.workload}' at or before t={args.at:g}s in {log}", file=sys.stderr)
            return 1
    latest = max(mine, key=lambda r: float(r["at"]))
    try:
        decision = decision_from_record(latest)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"{log}: a decision record of '{args.workload}' is malformed: {exc!r}", file=sys.stderr)
        return 1
    print(decision.explain())
    return 0
