"""`autoscaler validate` and `autoscaler schema`, in process and as the real command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.config.validate import schema_main, validate_main

ROOT = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).resolve().parent / "broken"
CORPUS = sorted(p for p in BROKEN.iterdir() if p.is_dir() or p.suffix in (".yaml", ".yml"))
SHIPPED_DIRS = sorted({p.parent for p in (ROOT / "policies").rglob("*.yaml")})
ERROR_LINE = re.compile(r"^\S.*:\d+: \S+: .+$")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCALER_")}
    return subprocess.run(
        [sys.executable, "-m", "autoscaler", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def test_validate_main_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(d) for d in SHIPPED_DIRS[:1]]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ok: ") and "workload(s)" in err and "limits: " in err


@pytest.mark.parametrize("entry", CORPUS, ids=lambda p: p.name)
def test_validate_main_broken(entry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(entry)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines and all(ERROR_LINE.match(line) for line in lines), out
    assert re.fullmatch(r"\d+ problem\(s\) in \d+ file\(s\)\n", err), err


def test_validate_main_reads_allowed_modules_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `autoscaler validate` judges a file as the controller would, with the operator's settings.
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: gpu-autoscaler/v1alpha1\nkind: ScalingPolicy\nmetadata: {name: a}\nspec:\n"
        "  pools: [{deployment: a, nodeClass: regular, gpuType: A100}]\n"
        "  triggers: [{name: q, type: rabbitmq, queue: q}]\n"
        "  policy: {python: 'autoscaler.policies.target:TargetPolicy'}\n"
    )
    monkeypatch.delenv("AUTOSCALER_ALLOWED_POLICY_MODULES", raising=False)
    assert validate_main([str(path)]) == 1
    monkeypatch.setenv("AUTOSCALER_ALLOWED_POLICY_MODULES", "autoscaler.policies")
    assert validate_main([str(path)]) == 0
    capsys.readouterr()


def test_validate_main_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTOSCALER_METRICS_PORT", "not-a-port")
    assert validate_main([str(SHIPPED_DIRS[0])]) == 1
    assert "AUTOSCALER_METRICS_PORT" in capsys.readouterr().err


def test_schema_main_describes_both_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_main() == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(schema["discriminator"]["mapping"]) == {"ScalingPolicy", "ParallelismLimits"}
    pool = schema["$defs"]["Pool"]
    # the schema speaks the YAML spelling, and unknown fields are refused as in the loader
    assert "gpuType" in pool["properties"] and pool["additionalProperties"] is False
    assert schema["$defs"]["PolicyBlock"]["additionalProperties"] is True


@pytest.mark.slow
def test_command_fails_cleanly_on_every_broken_entry() -> None:
    for entry in CORPUS:
        result = run_cli("validate", str(entry))
        assert result.returncode == 1, (entry, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, entry
        assert result.stdout.splitlines() and all(ERROR_LINE.match(x) for x in result.stdout.splitlines())
        assert "problem(s) in" in result.stderr


def test_command_accepts_the_shipped_policies() -> None:
    result = run_cli("validate", *map(str, SHIPPED_DIRS[:1]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.startswith("ok: ")


def test_command_prints_the_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert {"ScalingPolicyDocument", "ParallelismLimitsDocument"} <= set(schema["$defs"])


def test_validate_refuses_one_workload_name_in_two_namespaces(capsys: pytest.CaptureFixture[str]) -> None:
    # The engine keys workloads by name alone: before this check, the pair validated and the
    # controller raised KeyError at its first reconcile.
    entry = BROKEN / "same-name-two-namespaces"
    assert validate_main([str(entry / "a.yaml"), str(entry / "b.yaml")]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"{entry / 'b.yaml'}:7: metadata.name: workload name 'demo' is already used by workload "
        f"'ml/demo' at {entry / 'a.yaml'}:4; workload names must be unique across namespaces: "
        "rename one of them"
    ]


ATTACK = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: inference}
spec:
  pools: [{deployment: chat-a100, nodeClass: regular, gpuType: A100}]
  triggers:
    - {name: backlog, type: rabbitmq, queue: chat}
    - name: ttft
      type: prometheus
      query: up
      target: 1
      serverAddress: http://collector.example:8080
      authModes: bearer
      tokenFromEnv: RABBITMQ_URL
"""


def test_autoscaler_validate_reports_what_the_settings_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text(ATTACK)
    assert validate_main([str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}:12: spec.triggers[1].serverAddress: credentials (authModes) go only to a Prometheus the "
        "operator names; add 'collector.example:8080' to AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS, or set "
        "AUTOSCALER_PROMETHEUS_URL to it and drop serverAddress",
        f"{path}:14: spec.triggers[1].tokenFromEnv: environment variable RABBITMQ_URL is allowed only for "
        "connectionFromEnv; to let triggers read it as tokenFromEnv, add 'RABBITMQ_URL:tokenFromEnv' to "
        "AUTOSCALER_ALLOWED_SECRET_ENV",
    ]
    # The operator's say: this host, and this variable as a token (not that one should).
    monkeypatch.setenv("AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS", "collector.example:8080")
    monkeypatch.setenv(
        "AUTOSCALER_ALLOWED_SECRET_ENV", "RABBITMQ_URL:connectionFromEnv,RABBITMQ_URL:tokenFromEnv"
    )
    assert validate_main([str(path)]) == 0
