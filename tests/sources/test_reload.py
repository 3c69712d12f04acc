"""Configuration swaps between reconciles (`Controller.update_config`), the observer hooks, and
policy hot reload (`autoscaler.reload`): ConfigMap-style symlink swaps are noticed by content, a
broken file is reported as `file:line: field: message` while the last good configuration keeps
scaling, and a fixed file is applied."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from autoscaler.config import LoadedConfig, load_config
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.types import (
    UNLIMITED,
    ActionResult,
    ClusterSnapshot,
    Limits,
    Plan,
    Reading,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.live import SourceSet
from autoscaler.reload import PolicyReloader, fingerprint
from autoscaler.settings import Settings
from autoscaler.sources import Source, SourceContext
from tests.factories import trigger, workload
from tests.sources.fakes import FakeSource


async def _eventually(check: object, wait: float = 2.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + wait
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


class RecordingObserver:
    def __init__(self) -> None:
        self.observed: list[dict[str, object]] = []
        self.leader: list[bool] = []
        self.ready: list[bool] = []

    def observe(
        self,
        *,
        now: float,
        workloads: Sequence[WorkloadSpec],
        limits: Limits,
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        plan: Plan,
        duration_seconds: float,
        outcomes: Sequence[ActionResult] | None = None,
    ) -> None:
        self.observed.append(
            {"now": now, "workloads": len(workloads), "plan": plan, "took": duration_seconds}
        )

    def set_leader(self, leader: bool) -> None:
        self.leader.append(leader)

    def set_ready(self, ready: bool) -> None:
        self.ready.append(ready)


def test_update_config_keeps_kept_sources_and_state_and_closes_the_dropped() -> None:
    chat = workload("chat", triggers=(trigger("a", target=10.0),))
    batch = workload("batch", triggers=(trigger("b"),))
    a, b, c = FakeSource(30.0), FakeSource(5.0), FakeSource(0.0)
    cluster = DryRunCluster([chat, batch])
    controller = Controller(
        [chat, batch],
        UNLIMITED,
        {TriggerKey("chat", "a"): a, TriggerKey("batch", "b"): b},
        cluster,
        cluster,
        resync_seconds=3600,
    )

    async def go() -> None:
        task = asyncio.create_task(controller.run())
        try:
            await _eventually(lambda: cluster.sizes["ns/chat-a100"] == 3)
            chat_state = controller.state.workloads["chat"]
            assert "batch" in controller.state.workloads
            chat2 = workload("chat", triggers=(trigger("a", target=10.0), trigger("c", target=10.0)))
            await controller.update_config(
                [chat2], UNLIMITED, {TriggerKey("chat", "a"): a, TriggerKey("chat", "c"): c}
            )
            assert b.closed and not a.closed
            assert controller.readings["chat"]["a"].value == 30.0  # kept, not re-awaited
            assert set(controller.state.workloads) == {"chat"}
            assert controller.state.workloads["chat"].recommendations[: len(chat_state.recommendations)]
            calls = b.calls
            await _eventually(lambda: c.calls > 0 and controller.stats.reconciles >= 2)
            await asyncio.sleep(0.05)
            assert b.calls == calls  # no longer polled
            c.set(60.0)  # the new trigger drives the workload: max(30, 60) / 10
            await _eventually(lambda: cluster.sizes["ns/chat-a100"] == 6)
            assert set(controller.decisions) == {"chat"}
        finally:
            controller.stop()
            await task

    asyncio.run(go())


def test_the_observer_sees_every_reconcile_and_readiness_after_the_first_readings() -> None:
    chat = workload("chat")
    slow = FakeSource(10.0, poll_seconds=60)
    observer = RecordingObserver()
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat], UNLIMITED, {TriggerKey("chat", "q"): slow}, cluster, cluster, observer=observer
    )

    async def go() -> None:
        await controller.reconcile_once()  # before any reading: not ready
        assert observer.ready == [] and not controller.ready
        task = asyncio.create_task(controller.run())
        try:
            await _eventually(lambda: observer.ready == [True])
            assert controller.ready
            controller.leadership_changed(True)
            assert observer.leader == [True]
            assert len(observer.observed) == controller.stats.reconciles
            assert all(isinstance(o["took"], float) and o["took"] >= 0 for o in observer.observed)
        finally:
            controller.stop()
            await task

    asyncio.run(go())


def test_an_observer_that_raises_does_not_stop_the_loop() -> None:
    class Broken(RecordingObserver):
        def observe(self, **kwargs: object) -> None:
            raise RuntimeError("metrics bug")

    chat = workload("chat")
    cluster = DryRunCluster([chat])
    controller = Controller(
        [chat], UNLIMITED, {TriggerKey("chat", "q"): FakeSource(20.0)}, cluster, cluster, observer=Broken()
    )
    asyncio.run(controller.run(once=True))
    assert controller.stats.observer_errors == 1 and cluster.sizes["ns/chat-a100"] == 2


POLICY = """apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: inference}}
spec:
  maxReplicas: 40
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: chat, targetPerReplica: {target}, activation: 0}}
  behavior:
    scaleUp: {{stabilizationSeconds: 0, policies: [{{type: Pods, value: 100, periodSeconds: 1}}]}}
"""
BROKEN = POLICY.replace("maxReplicas: 40", "maxReplicas: 40\n  maxReplicaz: 3")


def _configmap_volume(root: Path, files: dict[str, str], generation: int) -> None:
    """What the kubelet does on a ConfigMap update: write a fresh timestamped directory, then swap
    the `..data` symlink to it in one rename; the visible files are symlinks through `..data`."""
    data = root / f"..2026_11_23_{generation:02d}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
        os.utime(data / name, (0, 0))  # same mtime in every generation: only contents differ
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data.name)
    tmp_link.replace(root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_a_configmap_symlink_swap_is_noticed_by_content(tmp_path: Path) -> None:
    _configmap_volume(tmp_path, {"chat.yaml": POLICY.format(target=10)}, 1)
    before = fingerprint([tmp_path])
    assert fingerprint([tmp_path]) == before
    _configmap_volume(tmp_path, {"chat.yaml": POLICY.format(target=10)}, 2)
    assert fingerprint([tmp_path]) == before  # a new generation with the same content
    _configmap_volume(tmp_path, {"chat.yaml": POLICY.format(target=5)}, 3)
    assert fingerprint([tmp_path]) != before


def test_a_broken_file_keeps_the_last_good_config_scaling_and_a_fixed_one_is_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _configmap_volume(tmp_path, {"chat.yaml": POLICY.format(target=10)}, 1)
    settings = Settings()
    config = load_config([tmp_path])
    assert config.ok, config.errors
    backlog = FakeSource(30.0)

    def build(w: WorkloadSpec, t: TriggerSpec, s: Settings, context: SourceContext) -> Source:
        return backlog

    sources = SourceSet(settings, SourceContext({}), build)
    cluster = DryRunCluster(config.workloads)
    controller = Controller(
        config.workloads,
        config.limits,
        sources.rebuild(config.workloads),
        cluster,
        cluster,
        resync_seconds=3600,
    )

    async def apply(new: LoadedConfig) -> None:
        await controller.update_config(new.workloads, new.limits, sources.rebuild(new.workloads))

    reloader = PolicyReloader([tmp_path], settings, apply, current=config)

    async def go() -> None:
        task = asyncio.create_task(controller.run())
        try:
            await _eventually(lambda: cluster.sizes["inference/chat-a100"] == 3)
            assert not (await reloader.check()).changed

            _configmap_volume(tmp_path, {"chat.yaml": BROKEN.format(target=5)}, 2)
            with caplog.at_level(logging.ERROR, logger="autoscaler.reload"):
                result = await reloader.check()
            assert result.changed and not result.applied and result.errors
            assert any(
                f"{tmp_path / 'chat.yaml'}:6: spec.maxReplicaz:" in r.getMessage() for r in caplog.records
            ), [r.getMessage() for r in caplog.records]
            assert not (await reloader.check()).changed  # reported once, not at every poll
            # The last good configuration (10 per replica) keeps scaling.
            backlog.set(50.0)
            await _eventually(lambda: cluster.sizes["inference/chat-a100"] == 5)
            assert controller.stats.config_updates == 0

            _configmap_volume(tmp_path, {"chat.yaml": POLICY.format(target=5)}, 3)
            result = await reloader.check()
            assert result.applied and reloader.last_errors == ()
            await _eventually(lambda: cluster.sizes["inference/chat-a100"] == 10)  # 50 / 5
            assert not backlog.closed  # the trigger did not change: its source was kept
        finally:
            controller.stop()
            await task

    asyncio.run(go())


class RecordingApply:
    """The reloader's `apply` callback, recording what it was handed."""

    def __init__(self) -> None:
        self.applied: list[LoadedConfig] = []

    async def __call__(self, config: LoadedConfig) -> None:
        self.applied.append(config)


def _reloader(paths: Sequence[Path]) -> tuple[PolicyReloader, RecordingApply]:
    config = load_config(paths)
    assert config.ok and config.workloads, config.errors
    apply = RecordingApply()
    return PolicyReloader(paths, Settings(), apply, current=config), apply


def _check_rejected(
    reloader: PolicyReloader, apply: RecordingApply, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """One poll that must reject the files and keep the running configuration; its errors, each
    of which was logged."""
    running = reloader.current
    with caplog.at_level(logging.ERROR, logger="autoscaler.reload"):
        result = asyncio.run(reloader.check())
    assert result.changed and not result.applied
    assert apply.applied == [] and reloader.current is running
    logged = [r.getMessage() for r in caplog.records]
    assert any("keeping the last good configuration" in line for line in logged), logged
    errors = [str(e) for e in result.errors]
    assert all(any(error in line for line in logged) for error in errors), logged
    return errors


def test_a_workload_name_reused_in_another_namespace_is_rejected_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The engine keys workloads by name: applying this pair crashed the live loop with KeyError.
    (tmp_path / "a.yaml").write_text(POLICY.format(target=10))
    reloader, apply = _reloader([tmp_path])
    other = POLICY.format(target=10).replace("namespace: inference", "namespace: research")
    (tmp_path / "b.yaml").write_text(other)
    assert _check_rejected(reloader, apply, caplog) == [
        f"{tmp_path / 'b.yaml'}:3: metadata.name: workload name 'chat' is already used by workload "
        f"'inference/chat' at {tmp_path / 'a.yaml'}:3; workload names must be unique across "
        "namespaces: rename one of them"
    ]


@pytest.mark.parametrize(
    "emptied",
    [
        "",  # truncated to 0 bytes, as an editor or the kubelet does while writing
        "# chat: being rewritten\n",  # comments only
        "---\n---\n",  # empty documents only
    ],
)
def test_a_file_that_suddenly_holds_no_document_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, emptied: str
) -> None:
    (tmp_path / "chat.yaml").write_text(POLICY.format(target=10))
    (tmp_path / "batch.yaml").write_text(
        POLICY.format(target=10).replace("chat", "batch")
        + "---\n"
        + POLICY.format(target=1).replace("chat", "b2")
    )
    reloader, apply = _reloader([tmp_path])
    (tmp_path / "batch.yaml").write_text(emptied)
    assert _check_rejected(reloader, apply, caplog) == [
        f"{tmp_path / 'batch.yaml'}:0: path: was 2 documents, now empty: keeping the last good "
        "configuration; delete the file to remove its workloads"
    ]

    # The file written in full again: its workloads were never dropped, so nothing changes for them.
    (tmp_path / "batch.yaml").write_text(POLICY.format(target=10).replace("chat", "batch"))
    result = asyncio.run(reloader.check())
    assert result.applied and [w.name for w in reloader.current.workloads] == ["batch", "chat"]


def test_deleting_a_file_still_removes_its_workloads(tmp_path: Path) -> None:
    (tmp_path / "chat.yaml").write_text(POLICY.format(target=10))
    (tmp_path / "batch.yaml").write_text(POLICY.format(target=10).replace("chat", "batch"))
    reloader, apply = _reloader([tmp_path])
    (tmp_path / "batch.yaml").unlink()
    result = asyncio.run(reloader.check())
    assert result.applied and [w.name for w in apply.applied[-1].workloads] == ["chat"]


def test_a_file_that_was_empty_may_stay_empty(tmp_path: Path) -> None:
    # Only a file that held documents in the running configuration is suspect when empty.
    (tmp_path / "chat.yaml").write_text(POLICY.format(target=10))
    (tmp_path / "later.yaml").write_text("# filled in later\n")
    reloader, apply = _reloader([tmp_path])
    (tmp_path / "later.yaml").write_text("")
    (tmp_path / "chat.yaml").write_text(POLICY.format(target=5))
    result = asyncio.run(reloader.check())
    assert result.applied and apply.applied


def test_warnings_are_logged_once_at_start_and_once_per_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # queue-sla owns its behavior: a behavior block is valid but ignored, which is worth a warning.
    policy = "  policy: {{type: queue-sla, serviceRatePerReplica: {target}}}\n"
    ignored = POLICY.replace("  behavior:", policy + "  behavior:")
    (tmp_path / "chat.yaml").write_text(ignored.format(target=10))

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="autoscaler.reload"):
        reloader, _ = _reloader([tmp_path])
        assert warned() == [
            f"policy files: {tmp_path / 'chat.yaml'}:10: spec.behavior: warning: policy 'queue-sla' "
            "makes its own scaling decisions and ignores behavior (scaleUp); remove them, or tune the "
            "policy's own options"
        ]
        assert not asyncio.run(reloader.check()).changed and len(warned()) == 1  # not at every poll
        (tmp_path / "chat.yaml").write_text(ignored.format(target=5))
        assert asyncio.run(reloader.check()).applied
        assert warned()[1:] == warned()[:1]
