"""A KEDA external scaler that answers from the engine's decisions.

Role: an edge beside telemetry. `DecisionBoard` is one more `Observer` of the live controller
(`autoscaler.controller`): after each reconcile it keeps the plan's per-workload `Decision`s, and
`ExternalScalerServer` serves KEDA's `externalscaler.ExternalScaler` gRPC service from them. Nothing
here decides anything or recomputes a decision: the engine is the one source of truth, and KEDA's
HPA only carries its replica count to the Deployment. Callers: `autoscaler run` (`autoscaler.app`,
when `AUTOSCALER_EXTERNAL_SCALER_PORT` is set), tests/external.

Which decision a ScaledObject gets. Its trigger's metadata names our workload (the ScalingPolicy's
`metadata.name`) and, when the workload has more than one pool, the pool's Deployment:

    triggers:
      - type: external            # or external-push
        metadata:
          scalerAddress: gpu-autoscaler-external-scaler.gpu-autoscaler.svc:9105
          workload: llm-chat
          deployment: llm-chat-a100   # optional with a single pool

The pool must live in the ScaledObject's namespace (a ScaledObject scales a Deployment of its own
namespace). The answer is the replicas the latest decision gives that pool (`Decision.targets`),
after the policy, the behavior stage, the caps and fair share, and placement.

The metric scheme. GetMetricSpec returns one metric, `gpu-autoscaler-replicas`, with
`targetSize` 1; GetMetrics returns our replica count N as its value. KEDA's default metric type for
an external trigger is `AverageValue`, for which the HPA computes ceil(value / target) = ceil(N / 1)
= N: exact, whole numbers, no rounding (KEDA hands the HPA milli-quantities, N*1000 / 1000).
IsActive is N > 0, and KEDA does 0 <-> 1 with it (the HPA never goes below one replica).

What can still move the HPA away from N, and what to set:
- Tolerance: the HPA leaves the Deployment alone while |N / current - 1| <= 0.1. Below 10 current
  replicas every change of one replica is more than 10 %, so nothing is lost; from 10 replicas up a
  change of at most 10 % is ignored by the HPA. No choice of value and target avoids it: the HPA
  landing on N needs value / target in (N-1, N], so the ratio it tests is within one replica of
  N / current. With the shipped Deployment the autoscaler keeps its own write access and resizes the
  Deployment to N itself; the HPA then sees current = N, ratio 1, and leaves it there, so the
  tolerance cannot distort our count, and KEDA adds its fallback and its ScaledObject workflow.
  A setup where only KEDA writes loses changes within 10 % until they grow: there, set
  `tolerance: 0` in the ScaledObject's `advanced.horizontalPodAutoscalerConfig.behavior.scaleUp`
  and `.scaleDown` (Kubernetes 1.33+, the HPAConfigurableTolerance feature gate, and a KEDA whose
  CRD carries the field), or `--horizontal-pod-autoscaler-tolerance=0` on kube-controller-manager.
- Behavior: the engine already applied the workload's stabilization windows and rate limits; the
  HPA's own would apply them twice and, with the default 300 s scale-down window, put back
  replicas the engine removed. Set `scaleDown.stabilizationWindowSeconds: 0` and rate policies at
  least as permissive as the engine's (README has the ScaledObject).
- minReplicaCount / maxReplicaCount: make them at least as wide as the pool's range, or KEDA clamps.

When there is no trustworthy answer the scaler says so with a gRPC error, never with a made-up 0,
so KEDA's own fallback (`fallback.failureThreshold`, `fallback.replicas`) applies:
- UNAVAILABLE: this replica is not the leader (its decisions are not the ones applied), or no
  decision was made yet, or a trigger the policy reads cannot be read, or the policy gave no
  recommendation (the engine is holding on missing data);
- NOT_FOUND: no such workload, or no such pool of it in the ScaledObject's namespace;
- INVALID_ARGUMENT: the metadata does not name a workload, names no pool of a multi-pool workload,
  or GetMetrics asks for another metric.
StreamIsActive (for `external-push`) sends the current activity at once and again whenever it
changes after a reconcile; it ends with the same error statuses when the answer becomes one, and
KEDA opens it again with its backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import grpc

from autoscaler.engine.policy import triggers_read
from autoscaler.engine.types import (
    Decision,
    PoolSpec,
    Reconciled,
    WorkloadSpec,
)
from autoscaler.external import externalscaler_pb2 as pb

if TYPE_CHECKING:
    from autoscaler.settings import Settings

log = logging.getLogger("autoscaler.external")

METRIC_NAME = "gpu-autoscaler-replicas"
# One replica per unit of the metric: the HPA's ceil(value / target) is then the value itself.
TARGET_SIZE = 1
SERVICE = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
# The trigger metadata keys a ScaledObject sets.
WORKLOAD_KEY = "workload"
DEPLOYMENT_KEY = "deployment"


class Code(Enum):
    """Why there is no answer; each maps to the gRPC status KEDA sees."""

    UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
    NOT_FOUND = grpc.StatusCode.NOT_FOUND
    INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


class NoAnswerError(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Ref:
    """What a ScaledObjectRef asks about: its namespace and trigger metadata."""

    name: str
    namespace: str
    metadata: Mapping[str, str]

    @classmethod
    def of(cls, message: pb.ScaledObjectRef) -> Ref:
        return cls(message.name, message.namespace, dict(message.scalerMetadata))


class DecisionBoard:
    """The leader's latest decision per workload, as the controller's observer.

    Only decisions observed while this replica leads are kept, and a change of leadership forgets
    them: a follower's or a former leader's decisions are not the ones applied. Called on the event
    loop thread (the `Observer` contract), as are the gRPC handlers reading it."""

    def __init__(self) -> None:
        self._leader = False
        # The workloads and decisions of the last reconcile observed while leading (None: none yet).
        self._workloads: dict[str, WorkloadSpec] | None = None
        self._decisions: dict[str, Decision] = {}
        self._changed = asyncio.Event()
        self._closed = False

    # -- the Observer protocol --------------------------------------------------------------------

    def observe(self, reconciled: Reconciled) -> None:
        if not self._leader:
            return
        plan = reconciled.plan
        self._workloads = {w.name: w for w in reconciled.workloads}
        # A workload the plan has no decision for keeps its last one; a dropped workload goes.
        self._decisions = {
            name: decision
            for name in self._workloads
            if (decision := plan.decisions.get(name, self._decisions.get(name))) is not None
        }
        self._wake()

    def set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            self._workloads, self._decisions = None, {}
            self._wake()

    def set_ready(self, ready: bool) -> None:
        """Readiness is the probes' business; the answers depend on decisions, not on it."""

    # -- answers ------------------------------------------------------------------------------------

    def replicas(self, ref: Ref) -> int:
        """The replicas the leader's latest decision gives the pool `ref` names; `NoAnswerError` when
        there is no trustworthy one (see the module doc)."""
        name = ref.metadata.get(WORKLOAD_KEY, "").strip()
        if not name:
            raise NoAnswerError(
                Code.INVALID_ARGUMENT,
                f"ScaledObject {ref.namespace}/{ref.name}: the trigger's metadata must name the "
                f"workload (`{WORKLOAD_KEY}: <ScalingPolicy name>`)",
            )
        if not self._leader:
            raise NoAnswerError(Code.UNAVAILABLE, "this autoscaler replica is not the leader")
        if self._workloads is None:
            raise NoAnswerError(Code.UNAVAILABLE, "no decision yet: the first reconcile has not run")
        workload = self._workloads.get(name)
        if workload is None:
            raise NoAnswerError(Code.NOT_FOUND, f"no workload {name!r} in the policy files")
        pool = _pool(workload, ref)
        decision = self._decisions.get(name)
        if decision is None:
            raise NoAnswerError(Code.UNAVAILABLE, f"workload {name!r}: no decision yet")
        unread = _unread_triggers(workload, decision)
        if unread:
            raise NoAnswerError(
                Code.UNAVAILABLE,
                f"workload {name!r}: trigger(s) {', '.join(unread)} cannot be read; the decision holds",
            )
        if decision.recommended_units is None:
            raise NoAnswerError(
                Code.UNAVAILABLE, f"workload {name!r}: the policy gave no recommendation; the decision holds"
            )
        return decision.targets.get(pool.key, 0)

    # -- change notification ----------------------------------------------------------------------

    def next_change(self) -> asyncio.Event:
        """Set at the next observed reconcile, leadership change or `close`."""
        return self._changed

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Ends every open stream (the server is stopping)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        # A fresh event for the next round: waiters of this one all run, none misses a change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _pool(workload: WorkloadSpec, ref: Ref) -> PoolSpec:
    deployment = ref.metadata.get(DEPLOYMENT_KEY, "").strip()
    pools = [p for p in workload.pools if p.namespace == ref.namespace]
    if deployment:
        pools = [p for p in pools if p.deployment == deployment]
    elif len(workload.pools) > 1:
        raise NoAnswerError(
            Code.INVALID_ARGUMENT,
            f"workload {workload.name!r} has {len(workload.pools)} pools: name the one this "
            f"ScaledObject scales (`{DEPLOYMENT_KEY}: <Deployment>`)",
        )
    if not pools:
        which = f"Deployment {deployment!r}" if deployment else "its pool"
        raise NoAnswerError(
            Code.NOT_FOUND,
            f"workload {workload.name!r} has no pool {which} in namespace {ref.namespace!r} "
            "(a ScaledObject scales a Deployment of its own namespace)",
        )
    return pools[0]


def _unread_triggers(workload: WorkloadSpec, decision: Decision) -> list[str]:
    """Failed triggers the policy reads: those hold the decision. A failed trigger the policy does
    not read changes nothing (the engine reports it and goes on)."""
    reads = triggers_read(workload.policy, workload)
    return [t for t in decision.failed_triggers if reads is None or t in reads]


class ExternalScalerServer:
    """KEDA's `externalscaler.ExternalScaler` over gRPC (grpc.aio), answering from `board`.

    `port` 0 picks a free port (tests); `port` is the bound one after `start()`. StreamMetricSpec,
    which newer KEDA versions try first, is answered Unimplemented (the metric spec never changes),
    and KEDA then uses GetMetricSpec."""

    def __init__(self, board: DecisionBoard, *, host: str = "0.0.0.0", port: int = 9105) -> None:
        self.board = board
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ExternalScalerServer:
        """Where `AUTOSCALER_EXTERNAL_SCALER_BIND_ADDRESS` and `..._PORT` say (the port must be set)."""
        if settings.external_scaler_port is None:
            raise ValueError("AUTOSCALER_EXTERNAL_SCALER_PORT is not set: the external scaler is off")
        return cls(
            DecisionBoard(),
            host=str(settings.external_scaler_bind_address),
            port=settings.external_scaler_port,
        )

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handler(),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        log.info("KEDA external scaler listening", extra={"fields": {"address": address, "port": self.port}})

    async def stop(self, grace_seconds: float = 1.0) -> None:
        self.board.close()
        if self._server is not None:
            await self._server.stop(grace_seconds)
            self._server = None

    def _handler(self) -> Any:
        # The messages and the streaming kind of each method come from the proto's descriptor, as
        # KEDA's client takes them; a method with no implementation here (StreamMetricSpec) gets no
        # handler, so gRPC answers it UNIMPLEMENTED.
        implemented: dict[str, Callable[..., Any]] = {
            "IsActive": self.is_active,
            "StreamIsActive": self.stream_is_active,
            "GetMetricSpec": self.get_metric_spec,
            "GetMetrics": self.get_metrics,
        }
        served = {}
        for method in SERVICE.methods:
            serve = implemented.get(method.name)
            if serve is None:
                continue
            kind = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            served[method.name] = kind(
                serve,
                request_deserializer=getattr(pb, method.input_type.name).FromString,
                response_serializer=getattr(pb, method.output_type.name).SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE.full_name, served)

    # -- the service's methods ------------------------------------------------------------------

    async def is_active(self, request: pb.ScaledObjectRef, context: Any) -> pb.IsActiveResponse:
        replicas = await _answer(self.board, Ref.of(request), context)
        return pb.IsActiveResponse(result=replicas > 0)

    async def stream_is_active(
        self, request: pb.ScaledObjectRef, context: Any
    ) -> AsyncIterator[pb.IsActiveResponse]:
        ref = Ref.of(request)
        last: bool | None = None
        while not self.board.closed:
            # Taken before the answer is read: a change landing while it is sent still wakes us.
            changed = self.board.next_change()
            active = await _answer(self.board, ref, context) > 0
            if active != last:
                yield pb.IsActiveResponse(result=active)
                last = active
            await changed.wait()

    async def get_metric_spec(self, request: pb.ScaledObjectRef, context: Any) -> pb.GetMetricSpecResponse:
        # The ScaledObject must be answerable: a spec for a workload that does not exist would give
        # KEDA an HPA whose metric always fails, with the cause far from here.
        await _answer(self.board, Ref.of(request), context)
        spec = pb.MetricSpec(
            metricName=METRIC_NAME, targetSize=TARGET_SIZE, targetSizeFloat=float(TARGET_SIZE)
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def get_metrics(self, request: pb.GetMetricsRequest, context: Any) -> pb.GetMetricsResponse:
        if request.metricName not in ("", METRIC_NAME):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown metric {request.metricName!r}: this scaler serves {METRIC_NAME!r}",
            )
        replicas = await _answer(self.board, Ref.of(request.scaledObjectRef), context)
        # Both fields: KEDA reads metricValueFloat when it is > 0, the deprecated int otherwise (0).
        value = pb.MetricValue(metricName=METRIC_NAME, metricValue=replicas, metricValueFloat=float(replicas))
        return pb.GetMetricsResponse(metricValues=[value])


async def _answer(board: DecisionBoard, ref: Ref, context: Any) -> int:
    try:
        return board.replicas(ref)
    except NoAnswerError as no:
        log.debug(
            "no answer for KEDA",
            extra={"fields": {"scaled_object": f"{ref.namespace}/{ref.name}", "reason": no.message}},
        )
        await context.abort(no.code.value, no.message)
        raise  # context.abort raises; this line only tells the type checker so
