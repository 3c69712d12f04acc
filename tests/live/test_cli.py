"""`autoscaler run`'s exits for what the operator must fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoscaler.cli import main


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
