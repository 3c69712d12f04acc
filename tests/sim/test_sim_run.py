"""Whole runs: determinism, the decision log and `autoscaler explain`, the report, and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler.engine.types import Limits, NodeClass
from autoscaler.sim.report import format_table, summarize
from autoscaler.sim.runner import Simulation, decision_from_record, run
from autoscaler.sim.scenario import Overrides, default_scenario_path, load_scenario
from tests.sim.simfakes import Scripted, model, pool, spec

try:  # the CLI smoke test needs the real engine and config loader
    from autoscaler.config import load_config  # noqa: F401
    from autoscaler.engine.reconcile import reconcile  # noqa: F401

    MISSING = ""
except ImportError as exc:
    MISSING = f"the real engine or config loader does not import yet: {exc}"

GROUP = ("sim", "A100")


def short(seed: int = 1) -> Simulation:
    return load_scenario(default_scenario_path(), Overrides(window=(0, 900), seed=seed))


def test_same_seed_same_summary_and_decisions() -> None:
    a, b = run(short()), run(short())
    assert summarize(a) == summarize(b)
    assert a.decisions == b.decisions
    assert np.array_equal(a.total_gpus, b.total_gpus)


def test_another_seed_gives_another_run() -> None:
    assert summarize(run(short(1))) != summarize(run(short(2)))


def test_the_default_scenario_shares_the_cap_and_serves_everything() -> None:
    result = run(load_scenario(default_scenario_path()))
    summary = summarize(result)
    assert summary["total"]["served"] == summary["total"]["requests"] == 8819 + 19366
    cap = result.company_cap
    assert cap is not None
    # The two workloads together reach the cap, so the limits stage has to share it.
    assert result.total_gpus.max() >= cap
    assert all(w.gpus.max() < cap for w in result.workloads)
    # Both spill over to their virtual pools at some point.
    for w in result.workloads:
        virtual = [p for p in w.pools if p.node_class is NodeClass.VIRTUAL]
        assert virtual[0].spec.max() > 0, w.name


def test_per_tick_series_line_up_with_the_clock() -> None:
    result = run(short())
    n = result.times.size
    assert np.array_equal(result.times, np.arange(n) * result.tick)
    for w in result.workloads:
        for series in (w.arrival_rate, w.waiting, w.in_service, w.gpus, w.p95_wait):
            assert series.size == n
        for p in w.pools:
            assert np.all(p.ready + p.starting + p.unscheduled == p.spec)
    assert np.array_equal(result.total_gpus, sum(w.gpus for w in result.workloads))
    # Every arrival is counted once in the per-tick rates.
    for w in result.workloads:
        assert w.arrival_rate.sum() * result.tick == pytest.approx(len(w.arrival))


def scripted_run() -> Simulation:
    a = pool("a", startup=5.0)
    return Simulation(
        workloads=(spec("w", [a]),),
        models=(model("w", [a], [float(i) for i in range(30)], service=0.5),),
        limits=Limits(company_max_gpus=2),
        node_groups={GROUP: 2},
    )


def test_the_decision_log_keeps_changes_actions_and_the_last_decision() -> None:
    sim = scripted_run()
    key = sim.workloads[0].pools[0].key
    result = run(sim, Scripted({0: {key: 1}, 10: {key: 2}, 20: {key: 1}}))
    assert [r["at"] for r in result.decisions] == [0.0, 10.0, 20.0, result.end]
    assert [r["targets"] for r in result.decisions] == [{key: 1}, {key: 2}, {key: 1}, {key: 1}]
    assert result.workloads[0].scale_actions == 3
    record = result.decisions[1]
    assert set(record) == {
        "workload",
        "at",
        "recommended_units",
        "desired_units",
        "granted_units",
        "targets",
        "steps",
        "failed_triggers",
    }
    assert decision_from_record(json.loads(json.dumps(record))).explain() == (
        f"w at t=10.0s:\n  - scripted\n  => {key}=2"
    )


def test_the_table_names_every_workload_and_the_cap() -> None:
    sim = scripted_run()
    key = sim.workloads[0].pools[0].key
    table = format_table(summarize(run(sim, Scripted({0: {key: 1}}))))
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["workload", "requests"]
    assert any(line.startswith("w ") for line in lines)
    assert any(line.startswith("total ") for line in lines)
    assert lines[-1] == "peak total GPUs / company cap: 1 / 2"


def test_unserved_requests_are_misses_and_are_listed() -> None:
    sim = scripted_run()
    summary = summarize(run(sim, Scripted({})), sla_override=5)  # nothing ever scaled up
    (w,) = summary["workloads"]
    assert w["served"] == 0
    assert w["within_sla"] == 0.0
    assert w["wait_p95_s"] is None
    assert format_table(summary).splitlines()[-1] == "never served (counted as SLA misses): w 30"


@pytest.mark.skipif(bool(MISSING), reason=MISSING or "-")
def test_cli_simulate_then_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoscaler.cli import main

    out = tmp_path / "results"
    assert main(["simulate", "--window", "0:300", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    table = printed.out
    assert "llm-code" in table
    assert "llm-conv" in table
    assert "peak total GPUs / company cap:" in table
    assert printed.err == ""  # --quiet: no progress
    assert (out / "simulation.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert [w["workload"] for w in summary["workloads"]] == ["llm-code", "llm-conv"]

    log = str(out / "decisions.jsonl")
    assert main(["explain", "llm-conv", "--log", log]) == 0
    assert capsys.readouterr().out.startswith("llm-conv at t=")
    assert main(["explain", "llm-conv", "--log", log, "--at", "30"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert float(first_line.split("t=")[1].rstrip("s:")) <= 30

    assert main(["explain", "llm-nope", "--log", log]) == 1
    assert "no decisions for workload 'llm-nope'" in capsys.readouterr().err
    assert main(["explain", "llm-conv", "--log", str(tmp_path / "none.jsonl")]) == 1
    assert "no decision log at" in capsys.readouterr().err


@pytest.mark.skipif(bool(MISSING), reason=MISSING or "-")
def test_cli_reports_scenario_errors_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoscaler.cli import main

    assert main(["simulate", "--trace", "llm-x=code", "--out", str(tmp_path), "--quiet", "--no-plot"]) == 2
    assert capsys.readouterr().err == "--trace: no workload 'llm-x' (workloads: llm-code, llm-conv)\n"


def test_progress_without_a_terminal_prints_a_few_milestones() -> None:
    from autoscaler.sim.cli import _Progress

    stream = io.StringIO()
    progress = _Progress(stream)
    for t in range(101):
        progress(float(t), 100.0)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "simulated 25% (t=25s of 100s)",
        "simulated 50% (t=50s of 100s)",
        "simulated 75% (t=75s of 100s)",
        "simulated 100% (t=100s of 100s)",
    ]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    from autoscaler.sim.cli import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = _Progress(stream)
    for t in range(1000):
        progress(float(t), 999.0)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\r[")
    assert text.endswith("] 100% t=999s\n")
    assert text.count("\r") < 20  # paced by wall time, not once per tick
