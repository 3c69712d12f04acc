"""The dry-run cluster, structured logs, and `autoscaler run`'s exits for what the operator must fix."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from autoscaler.cli import main
from autoscaler.dryrun import DryRunCluster, initial_sizes
from autoscaler.engine.types import Plan, ScaleAction
from autoscaler.logs import JsonFormatter, TextFormatter
from tests.factories import pool, workload


def test_sizes_start_from_min_replicas_on_the_first_pool() -> None:
    slow_first = workload("slow", (pool("slow-4090", thr=0.5), pool("slow-a100")), min_replicas=3)
    plain = workload("plain", min_replicas=2)
    assert initial_sizes([slow_first, plain]) == {"ns/slow-4090": 6, "ns/slow-a100": 0, "ns/plain-a100": 2}
    assert initial_sizes([plain], assume_replicas=5) == {"ns/plain-a100": 5}


def test_a_plan_is_applied_to_the_view_and_logged_one_line_per_workload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = DryRunCluster(
        [workload("chat", (pool("chat-a100"), pool("chat-salad", virtual=True)))], clock=lambda: 9.0
    )
    plan = Plan(
        (
            ScaleAction("ns/chat-a100", "chat", 0, 4, "target: 40 / 10 = 4"),
            ScaleAction("ns/chat-salad", "chat", 0, 2, "target: 40 / 10 = 4"),
        ),
        {},
    )
    with caplog.at_level(logging.INFO, logger="autoscaler.dryrun"):
        asyncio.run(cluster.apply(plan))
    assert cluster.snapshot().pools["ns/chat-a100"].spec_replicas == 4
    assert cluster.snapshot().pools["ns/chat-salad"].ready == 2
    (record,) = caplog.records
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "scale (dry run)" and line["workload"] == "chat"
    assert line["pools"] == {"ns/chat-a100": {"from": 0, "to": 4}, "ns/chat-salad": {"from": 0, "to": 2}}
    assert line["reason"] == "target: 40 / 10 = 4"
    assert 'workload="chat"' in TextFormatter().format(record)
    (applied,) = cluster.history
    assert applied.at == 9.0 and applied.scaled_up


def test_run_without_a_cluster_configuration_exits_2_and_suggests_the_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("AUTOSCALER_KUBECONFIG", raising=False)
    assert main(["run", "--policies", "policies/salad"]) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes configuration" in err and "--dry-run" in err


def test_run_with_a_missing_kubeconfig_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOSCALER_KUBECONFIG", str(tmp_path / "nope"))
    assert main(["run", "--policies", "policies/salad"]) == 2
    assert f"AUTOSCALER_KUBECONFIG: {tmp_path / 'nope'}: no such file" in capsys.readouterr().err


def test_run_prints_config_errors_with_their_location_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    broken = Path("tests/config/broken/unknown-field.yaml")
    assert main(["run", "--dry-run", "--once", "--policies", str(broken)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{broken}:") and ": " in out


def test_run_once_with_a_prometheus_trigger_and_no_server_holds_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat}
spec:
  minReplicas: 1
  pools: [{deployment: chat-a100, nodeClass: regular, gpuType: A100}]
  triggers: [{name: ttft, type: prometheus, query: 'sum(up)', target: 1}]
"""
    )
    monkeypatch.setenv("AUTOSCALER_LOG_FORMAT", "text")
    assert main(["run", "--dry-run", "--once", "--policies", str(policy)]) == 0
    out = capsys.readouterr().out
    # The decision's time as a date (the live engine runs on the wall clock), not `t=<seconds>`.
    assert re.search(r"chat at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z:", out), out
    assert "default/chat-a100=1" in out
