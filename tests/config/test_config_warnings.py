"""Settings that have no effect are warnings: reported as `file:line: field: warning: message`,
never a reason to refuse the files (issue 16: the shipped Salad example sets `behavior` for
queue-sla, which ignores it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.config import load_config
from autoscaler.config.validate import validate_main

WriteFile = Callable[[str, str], Path]

DOC = """\
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: ml}}
spec:
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: chat}}
    - {{name: ttft, type: prometheus, query: 'sum(x)', target: 0.5}}
  policy: {policy}
{behavior}"""
BEHAVIOR = "  behavior:\n    scaleDown: {stabilizationSeconds: 300}\n    cooldownSeconds: 120\n"


@pytest.mark.parametrize(
    ("policy", "name"),
    [
        ("{type: queue-sla, serviceRatePerReplica: 1.2}", "queue-sla"),
        ("{type: keda-hpa}", "keda-hpa"),
        ("{type: knative-kpa}", "knative-kpa"),
        ("{type: static, replicas: 2}", "static"),
    ],
)
def test_behavior_for_a_policy_that_owns_its_behavior_is_a_warning(
    write: WriteFile, policy: str, name: str
) -> None:
    path = write("p.yaml", DOC.format(policy=policy, behavior=BEHAVIOR))
    config = load_config([path])
    assert config.errors == () and [w.name for w in config.workloads] == ["chat"]
    assert _behavior_warnings(config.warnings) == [
        f"{path}:10: spec.behavior: warning: policy '{name}' makes its own scaling decisions and "
        "ignores behavior (scaleDown, cooldownSeconds); remove them, or tune the policy's own options"
    ]


@pytest.mark.parametrize(
    ("policy", "behavior"),
    [
        # the target policy goes through the behavior stage: its behavior counts
        ("{type: target}", BEHAVIOR),
        # queue-sla without a behavior block: nothing is ignored
        ("{type: queue-sla, serviceRatePerReplica: 1.2}", ""),
    ],
)
def test_behavior_that_applies_is_no_warning(write: WriteFile, policy: str, behavior: str) -> None:
    config = load_config([write("p.yaml", DOC.format(policy=policy, behavior=behavior))])
    assert config.errors == () and _behavior_warnings(config.warnings) == []


def _behavior_warnings(warnings: object) -> list[str]:
    # The fixture's ttft trigger is unread by every built-in but target (another warning, tested below).
    return [str(w) for w in warnings if ": spec.behavior: " in str(w)]  # type: ignore[attr-defined]


READER = """
from typing import ClassVar
from pydantic import BaseModel, ConfigDict

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reads: list[str] | None = None

class Reader:
    name: ClassVar[str] = "reader"
    Options: ClassVar[type[BaseModel]] = Options

    def __init__(self, options):
        self.reads = options.reads

    def recommend(self, ctx):
        raise AssertionError("not called while loading")

    def triggers_read(self, workload):
        return None if self.reads is None else frozenset(self.reads)
"""


@pytest.mark.parametrize(
    ("options", "unread"),
    [
        # the policy reads only the backlog: the ttft trigger is polled for nothing
        ("reads: [backlog]", ["ttft"]),
        ("reads: [backlog, ttft]", []),
        # None: the policy reads every trigger
        ("{}", []),
    ],
)
def test_a_trigger_the_policy_never_reads_is_a_warning(
    write: WriteFile, monkeypatch: pytest.MonkeyPatch, options: str, unread: list[str]
) -> None:
    module = write("acme_reader_under_test.py", READER)
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.delitem(sys.modules, "acme_reader_under_test", raising=False)
    extra = "" if options == "{}" else f", {options}"
    policy = f"{{python: 'acme_reader_under_test:Reader'{extra}}}"
    path = write("p.yaml", DOC.format(policy=policy, behavior=""))
    config = load_config([path], allowed_modules=["acme_reader_under_test"])
    assert config.errors == ()
    assert [str(w) for w in config.warnings] == [
        f"{path}:8: spec.triggers[1].name: warning: policy 'reader' never reads trigger '{name}': "
        "it is polled but cannot change a decision; remove it, or name it in the policy's options"
        for name in unread
    ]


def test_a_policy_that_reads_every_trigger_gets_no_trigger_warning(write: WriteFile) -> None:
    path = write("p.yaml", DOC.format(policy="{type: target}", behavior=""))
    assert load_config([path]).warnings == ()


def test_queue_sla_names_the_triggers_it_reads(write: WriteFile) -> None:
    path = write("p.yaml", DOC.format(policy="{type: queue-sla, serviceRatePerReplica: 1.2}", behavior=""))
    assert [str(w) for w in load_config([path]).warnings] == [
        f"{path}:8: spec.triggers[1].name: warning: policy 'queue-sla' never reads trigger 'ttft': "
        "it is polled but cannot change a decision; remove it, or name it in the policy's options"
    ]
    rate = "{type: queue-sla, serviceRatePerReplica: 1.2, rateTrigger: ttft}"
    assert load_config([write("q.yaml", DOC.format(policy=rate, behavior=""))]).warnings == ()


def test_validate_prints_warnings_on_stderr_and_exits_zero(
    write: WriteFile, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        "p.yaml", DOC.format(policy="{type: queue-sla, serviceRatePerReplica: 1.2}", behavior=BEHAVIOR)
    )
    assert validate_main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:8: spec.triggers[1].name: warning: policy 'queue-sla' never reads")
    assert lines[1].startswith(f"{path}:10: spec.behavior: warning: policy 'queue-sla' makes its own")
    assert lines[2].startswith("ok: 1 workload(s) in 1 file(s)") and lines[2].endswith(", 2 warning(s)")
    assert len(lines) == 3
