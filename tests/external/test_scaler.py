"""The KEDA external scaler over a real gRPC connection on loopback: every method of KEDA's
`externalscaler.ExternalScaler` answers from real engine decisions (`engine.reconcile`, or the
controller's loop), the push stream follows a changed decision, the HPA lands exactly on our
replica count, and a scaler without a trustworthy answer returns a gRPC error, never a 0."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from autoscaler.app import _external_scaler, _run
from autoscaler.controller import Controller, TriggerKey, observers
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    UNLIMITED,
    ClusterSnapshot,
    EngineState,
    FallbackSpec,
    PoolStatus,
    Reconciled,
    WorkloadSpec,
)
from autoscaler.external import externalscaler_pb2 as pb
from autoscaler.external.scaler import METRIC_NAME, SERVICE, DecisionBoard, ExternalScalerServer
from autoscaler.live import LiveAutoscaler
from autoscaler.settings import Settings
from tests.factories import pool, read, trigger, workload
from tests.live.fakes import FakeSource

CHAT = workload("chat", triggers=(trigger("q", target=10.0),))  # one pool: ns/chat-a100
TWO_POOLS = workload("spill", pools=(pool("spill-a100"), pool("spill-salad", virtual=True)))
OURS = {"workload": "chat"}


class Client:
    """KEDA's side: one callable per method of the service, built from the proto's descriptor."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.rpc: dict[str, Any] = {}
        for method in SERVICE.methods:
            request = getattr(pb, method.input_type.name)
            response = getattr(pb, method.output_type.name)
            factory = channel.unary_stream if method.server_streaming else channel.unary_unary
            self.rpc[method.name] = factory(
                f"/{SERVICE.full_name}/{method.name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

    async def is_active(self, ref: pb.ScaledObjectRef) -> bool:
        return bool((await self.rpc["IsActive"](ref, timeout=5)).result)

    async def metric_spec(self, ref: pb.ScaledObjectRef) -> pb.MetricSpec:
        (spec,) = (await self.rpc["GetMetricSpec"](ref, timeout=5)).metricSpecs
        return spec

    async def metric(self, ref: pb.ScaledObjectRef, name: str = METRIC_NAME) -> pb.MetricValue:
        request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=name)
        (value,) = (await self.rpc["GetMetrics"](request, timeout=5)).metricValues
        return value


def ref(metadata: Mapping[str, str] = OURS, namespace: str = "ns") -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="so", namespace=namespace, scalerMetadata=dict(metadata))


@asynccontextmanager
async def serving(board: DecisionBoard) -> AsyncIterator[Client]:
    server = ExternalScalerServer(board, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Client(channel)
    finally:
        await server.stop(0)


def decide(
    board: DecisionBoard,
    value: float | None,
    *,
    current: int = 1,
    workloads: tuple[WorkloadSpec, ...] = (CHAT,),
    now: float = 100.0,
) -> None:
    """One real engine decision with trigger `q` reading `value` (10 per replica), told to `board`
    as the controller tells its observers."""
    snapshot = ClusterSnapshot(
        {p.key: PoolStatus(current, ready=current) for w in workloads for p in w.pools}
    )
    readings = {w.name: {"q": read(value, at=now)} for w in workloads}
    plan, _ = reconcile(workloads, snapshot, readings, EngineState(), UNLIMITED, now)
    board.observe(
        Reconciled(
            now=now,
            workloads=workloads,
            limits=UNLIMITED,
            snapshot=snapshot,
            readings=readings,
            plan=plan,
            duration_seconds=0.0,
        )
    )


def leader_board() -> DecisionBoard:
    board = DecisionBoard()
    board.set_leader(True)
    return board


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_every_method_answers_from_the_leaders_decision() -> None:
    async def scenario() -> None:
        board = leader_board()
        decide(board, 35.0)  # 35 waiting, 10 per replica: 4 replicas
        async with serving(board) as keda:
            assert await keda.is_active(ref())
            spec = await keda.metric_spec(ref())
            assert (spec.metricName, spec.targetSize, spec.targetSizeFloat) == (METRIC_NAME, 1, 1.0)
            value = await keda.metric(ref())
            assert (value.metricName, value.metricValue, value.metricValueFloat) == (METRIC_NAME, 4, 4.0)
            # KEDA strips its `s0-` prefix and sends the name back; an empty name is accepted too.
            assert (await keda.metric(ref(), name="")).metricValue == 4
            stream = keda.rpc["StreamIsActive"](ref())
            assert (await stream.read()).result is True
            stream.cancel()

    run(scenario)


def test_each_pool_of_a_workload_gets_its_own_replicas() -> None:
    async def scenario() -> None:
        board = leader_board()
        capped = workload(
            "spill", pools=(pool("spill-a100", max_replicas=2), pool("spill-salad", virtual=True))
        )
        decide(board, 50.0, current=0, workloads=(capped,))  # 5 wanted: 2 on the A100s, 3 spill
        async with serving(board) as keda:
            a100 = ref({"workload": "spill", "deployment": "spill-a100"})
            salad = ref({"workload": "spill", "deployment": "spill-salad"})
            assert (await keda.metric(a100)).metricValue == 2
            assert (await keda.metric(salad)).metricValue == 3

    run(scenario)


def hpa_desired(value: pb.MetricValue, spec: pb.MetricSpec) -> int:
    """The HPA's AverageValue arithmetic on what KEDA hands it: the float fields when > 0, else the
    ints, as milli-quantities; desired = ceil(value / target)."""
    metric = value.metricValueFloat if value.metricValueFloat > 0 else value.metricValue
    target = spec.targetSizeFloat if spec.targetSizeFloat > 0 else spec.targetSize
    return math.ceil(round(metric * 1000) / round(target * 1000))


@pytest.mark.parametrize(
    ("current", "desired"),
    [(1, 1), (0, 1), (1, 4), (4, 1), (3, 7), (10, 11), (10, 25), (25, 10), (40, 39), (99, 400), (5, 0)],
)
def test_the_hpa_lands_exactly_on_our_replica_count(current: int, desired: int) -> None:
    async def scenario() -> None:
        board = leader_board()
        wide = workload("chat", triggers=(trigger("q", target=10.0),), max_replicas=1000)
        decide(board, desired * 10.0, current=current, workloads=(wide,))
        async with serving(board) as keda:
            spec, value = await keda.metric_spec(ref()), await keda.metric(ref())
            assert hpa_desired(value, spec) == desired
            # Zero is KEDA's to do (the HPA stops at one): inactive exactly when we want none.
            assert await keda.is_active(ref()) is (desired > 0)

    run(scenario)


def test_the_push_stream_follows_the_controllers_decisions() -> None:
    """Through the live loop: a reading changes, the controller reconciles, its observer (the board)
    wakes the stream, KEDA gets `false`, then `true` again; an unchanged decision sends nothing."""

    async def scenario() -> None:
        board = DecisionBoard()
        source = FakeSource(35.0, clock=time.time)
        cluster = DryRunCluster([CHAT], clock=time.time)
        controller = Controller(
            [CHAT],
            UNLIMITED,
            {TriggerKey("chat", "q"): source},
            cluster,
            cluster,
            resync_seconds=0.05,
            observer=observers(board),
        )
        controller.leadership_changed(True)
        loop = asyncio.create_task(controller.run())
        try:
            async with serving(board) as keda:
                stream = keda.rpc["StreamIsActive"](ref())
                assert (await stream.read()).result is True
                source.set(0.0)
                # Resyncs every 50 ms observe the same decision many times: only the change is sent.
                assert (await stream.read()).result is False
                source.set(12.0)
                assert (await stream.read()).result is True
                assert await keda.is_active(ref())
                assert (await keda.metric(ref())).metricValue == 2
                stream.cancel()
        finally:
            controller.stop()
            await loop

    run(scenario)


def test_a_failing_trigger_is_an_error_for_every_method_never_zero() -> None:
    async def scenario() -> None:
        board = leader_board()
        held = workload(
            "chat", triggers=(trigger("q", target=10.0),), fallback=FallbackSpec(failure_threshold=1)
        )
        decide(board, None, current=3, workloads=(held,))  # the engine holds 3: not our number to give
        async with serving(board) as keda:
            for call in (keda.is_active, keda.metric_spec, keda.metric):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call(ref())
                assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "q" in str(failed.value.details())
            stream = keda.rpc["StreamIsActive"](ref())
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stream.read()
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_the_stream_ends_with_an_error_when_the_trigger_starts_failing() -> None:
    async def scenario() -> None:
        board = leader_board()
        decide(board, 35.0)
        async with serving(board) as keda:
            stream = keda.rpc["StreamIsActive"](ref())
            assert (await stream.read()).result is True
            decide(board, None, now=101.0)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stream.read()
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    run(scenario)


# Each case: how the board is prepared, the metadata KEDA sends (and namespace), the status expected.
def _never_leader(board: DecisionBoard) -> None:
    """Started, never told it leads (a dry run against a cluster, or a follower from the start)."""


def _no_decision(board: DecisionBoard) -> None:
    board.set_leader(True)


def _follower(board: DecisionBoard) -> None:
    board.set_leader(True)
    decide(board, 35.0)
    board.set_leader(False)  # lost the Lease: its decisions are no longer the applied ones
    decide(board, 35.0)  # a follower's reconcile is not kept either


def _decided(board: DecisionBoard) -> None:
    board.set_leader(True)
    decide(board, 35.0, workloads=(CHAT, TWO_POOLS))


@pytest.mark.parametrize(
    ("prepare", "metadata", "namespace", "code"),
    [
        (_no_decision, OURS, "ns", grpc.StatusCode.UNAVAILABLE),  # started, nothing decided yet
        (_never_leader, OURS, "ns", grpc.StatusCode.UNAVAILABLE),
        (_follower, OURS, "ns", grpc.StatusCode.UNAVAILABLE),
        (_decided, {"workload": "nope"}, "ns", grpc.StatusCode.NOT_FOUND),  # no such workload
        (_decided, {}, "ns", grpc.StatusCode.INVALID_ARGUMENT),  # metadata names no workload
        (_decided, OURS, "other", grpc.StatusCode.NOT_FOUND),  # our pool is in another namespace
        (_decided, {"workload": "chat", "deployment": "x"}, "ns", grpc.StatusCode.NOT_FOUND),
        (_decided, {"workload": "spill"}, "ns", grpc.StatusCode.INVALID_ARGUMENT),  # which pool?
    ],
)
def test_no_trustworthy_answer_is_an_error_status(
    prepare: Callable[[DecisionBoard], None],
    metadata: Mapping[str, str],
    namespace: str,
    code: grpc.StatusCode,
) -> None:
    async def scenario() -> None:
        board = DecisionBoard()
        prepare(board)
        async with serving(board) as keda:
            for call in (keda.is_active, keda.metric_spec, keda.metric):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call(ref(metadata, namespace))
                assert failed.value.code() is code

    run(scenario)


def test_another_metric_name_and_stream_metric_spec_are_refused() -> None:
    async def scenario() -> None:
        board = leader_board()
        decide(board, 35.0)
        async with serving(board) as keda:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await keda.metric(ref(), name="queue-length")
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            # The spec never changes: newer KEDA asks for this stream and, told Unimplemented, polls.
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await keda.rpc["StreamMetricSpec"](ref()).read()
            assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED

    run(scenario)


def test_the_scaler_is_off_unless_its_port_is_set() -> None:
    assert Settings().external_scaler_port is None
    assert _external_scaler(Settings()) is None
    server = _external_scaler(Settings(external_scaler_port=9105, external_scaler_bind_address="127.0.0.1"))
    assert server is not None and (server.host, server.port) == ("127.0.0.1", 9105)


def test_autoscaler_run_serves_keda_from_its_in_memory_dry_run(tmp_path: Any) -> None:
    """The composition `autoscaler run --dry-run` uses: the scaler starts with the run, observes the
    controller beside telemetry, answers from its decisions, and stops with it."""
    path = tmp_path / "policies.yaml"
    path.write_text(
        "apiVersion: gpu-autoscaler/v1alpha1\nkind: ScalingPolicy\nmetadata: {name: chat, namespace: ns}\n"
        "spec:\n  maxReplicas: 20\n  pools: [{deployment: chat-a100, nodeClass: regular, gpuType: A100}]\n"
        "  triggers: [{name: q, type: rabbitmq, queue: jobs, targetPerReplica: 10}]\n"
    )

    async def scenario() -> None:
        settings = Settings(dry_run=True, leader_election=False, policy_reload_seconds=60)
        live = LiveAutoscaler(
            settings, [path], build_source=lambda *_: FakeSource(25.0, clock=time.time), in_memory=True
        )
        server = ExternalScalerServer(DecisionBoard(), host="127.0.0.1", port=0)
        live.observer = observers(None, server.board)
        running = asyncio.create_task(_run(live, once=False, stop_signals=False, scaler=server))
        try:
            while server.port == 0:
                await asyncio.sleep(0.01)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                keda = Client(channel)
                while True:
                    try:
                        value = await keda.metric(ref())
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() is grpc.StatusCode.UNAVAILABLE  # until the first decision
                        await asyncio.sleep(0.05)
                assert value.metricValue == 3  # 25 waiting, 10 per replica
        finally:
            live.stop()
            await running
        assert server.board.closed

    run(scenario)
