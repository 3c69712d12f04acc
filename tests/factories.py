"""Small builders for engine values, so tests read like the situation they pin down."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from autoscaler.config.compile import compile_trigger
from autoscaler.config.models import RabbitMQOptions, Trigger
from autoscaler.engine.types import (
    BehaviorSpec,
    FallbackSpec,
    NodeClass,
    PoolSpec,
    Reading,
    ScalingRules,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.policies.target import TargetOptions, TargetPolicy


def pool(
    deployment: str,
    *,
    virtual: bool = False,
    gpu: str = "A100",
    cluster: str = "c1",
    gpus: int = 1,
    cost: float = 1.0,
    startup: float = 60.0,
    thr: float = 1.0,
    max_replicas: int | None = None,
    timeout: float = 300.0,
    provider: str | None = None,
    namespace: str = "ns",
) -> PoolSpec:
    return PoolSpec(
        deployment=deployment,
        namespace=namespace,
        node_class=NodeClass.VIRTUAL if virtual else NodeClass.REGULAR,
        gpu_type=gpu,
        cluster=cluster,
        gpus_per_replica=gpus,
        cost_per_gpu_hour=cost,
        startup_seconds=startup,
        relative_throughput=thr,
        max_replicas=max_replicas,
        pending_timeout_seconds=timeout,
        provider=provider if provider or not virtual else "salad",
    )


def trigger(name: str = "q", target: float = 10.0, activation: float = 0.0) -> TriggerSpec:
    """A rabbitmq trigger reading the queue of its own name, with every other option at its default."""
    return TriggerSpec(
        name=name, type="rabbitmq", target=target, activation=activation, options=RabbitMQOptions(queue=name)
    )


def compiled_trigger(**fields: Any) -> TriggerSpec:
    """One trigger as a policy file spells it (`type`, `queue`, `pollSeconds`, ...), validated and
    compiled as `load_config` does: the way to give a test the options a source really receives."""
    return compile_trigger(TypeAdapter(Trigger).validate_python(fields))


# Rules that let tests see the engine's allocation in one step: no stabilization, no rate limit.
INSTANT = BehaviorSpec(scale_up=ScalingRules(0.0, ()), scale_down=ScalingRules(0.0, ()), cooldown_seconds=0.0)


def workload(
    name: str,
    pools: tuple[PoolSpec, ...] | None = None,
    *,
    triggers: tuple[TriggerSpec, ...] = (trigger(),),
    min_replicas: int = 0,
    max_replicas: int = 1000,
    priority: int = 0,
    weight: float = 1.0,
    behavior: BehaviorSpec = INSTANT,
    fallback: FallbackSpec | None = None,
    policy: Any = None,
) -> WorkloadSpec:
    return WorkloadSpec(
        name=name,
        namespace="ns",
        pools=pools if pools is not None else (pool(f"{name}-a100"),),
        triggers=triggers,
        policy=policy if policy is not None else TargetPolicy(TargetOptions(tolerance=0.0)),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        priority=priority,
        weight=weight,
        behavior=behavior,
        fallback=fallback or FallbackSpec(),
    )


def read(value: float | None, at: float = 0.0) -> Reading:
    return Reading(value=value, at=at, error=None if value is not None else "failed")
