"""The dry-run cluster: its starting sizes, and a plan applied to its view and logged."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

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
