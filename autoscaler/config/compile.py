"""From validated documents to the engine's frozen dataclasses, with the checks that span documents.

The pydantic models (`config.models`) vouch for each document on its own. This module looks at all of
them together: one workload per name (across namespaces), one pool per Deployment, at most one
`ParallelismLimits`, every pool's cluster and GPU type known to the limits, and a policy that the
registry can build (and that accepts the workload, through its optional `check`). It then compiles
the documents into `WorkloadSpec`s and one `Limits`. Callers: `config.load_config`; the `compile_*`
functions also work on their own, for one model at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from autoscaler.config.loader import (
    ConfigError,
    ConfigWarning,
    FieldPath,
    SourceDocument,
    did_you_mean,
    translate_validation_error,
)
from autoscaler.config.models import (
    DEFAULT_QUEUE_LENGTH_TARGET,
    BehaviorModel,
    FallbackModel,
    ParallelismLimitsDocument,
    ParallelismLimitsSpec,
    PolicyBlock,
    Pool,
    PresetTrigger,
    RabbitMQTrigger,
    ScalingPolicyDocument,
    ScalingRulesModel,
    SourceOptions,
    Trigger,
)
from autoscaler.engine.policy import Policy
from autoscaler.engine.types import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    UNLIMITED,
    BehaviorSpec,
    FallbackBehavior,
    FallbackSpec,
    Limits,
    MetricType,
    NodeClass,
    PoolSpec,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
    TriggerSpec,
    WorkloadSpec,
)
from autoscaler.policies.registry import PolicyLoadError, build_policy, resolve_class

OptionsT = TypeVar("OptionsT", bound=SourceOptions)


@dataclass(frozen=True)
class ParsedDocument:
    """A document that passed its model. `clean` is False when the YAML layer already reported a
    problem in it (a duplicate key): it still takes part in the checks but yields no workload."""

    source: SourceDocument
    model: ScalingPolicyDocument | ParallelismLimitsDocument
    clean: bool = True


# ----------------------------------------------------------------------------------------------
# Compiling one part


def compile_pool(pool: Pool, namespace: str, cluster: str) -> PoolSpec:
    return PoolSpec(
        deployment=pool.deployment,
        namespace=namespace,
        node_class=NodeClass(pool.node_class),
        gpu_type=pool.gpu_type,
        cluster=cluster,
        gpus_per_replica=pool.gpus_per_replica,
        cost_per_gpu_hour=pool.cost_per_gpu_hour,
        startup_seconds=pool.startup_seconds,
        startup_p95_seconds=pool.startup_p95_seconds,
        relative_throughput=pool.relative_throughput,
        max_replicas=pool.max_replicas,
        pending_timeout_seconds=pool.pending_timeout_seconds,
        provider=pool.provider,
    )


def compile_trigger(trigger: Trigger, namespace: str = "default") -> TriggerSpec:
    """The engine sees target, target type and activation; the source (sources/) reads the rest from
    `options`, the trigger's validated options object (`RabbitMQOptions`, `PrometheusOptions`).
    An inference preset (`config.presets`) compiles into a prometheus trigger: its query written,
    scoped to `namespace` (the policy's) unless it names its own, so that every reader downstream
    sees an ordinary prometheus trigger."""
    if isinstance(trigger, PresetTrigger):
        return TriggerSpec(
            name=trigger.name,
            type="prometheus",
            target=trigger.resolved_target,
            metric_type=MetricType(trigger.metric_type),
            activation=trigger.activation,
            options=trigger.source_options(namespace),
        )
    if isinstance(trigger, RabbitMQTrigger):
        target = (
            trigger.target_per_replica
            if trigger.target_per_replica is not None
            else DEFAULT_QUEUE_LENGTH_TARGET
        )
    else:
        target = trigger.target
    return TriggerSpec(
        name=trigger.name,
        type=trigger.type,
        target=target,
        metric_type=MetricType(trigger.metric_type),
        activation=trigger.activation,
        options=trigger.source_options(),
    )


def trigger_options(trigger: TriggerSpec, kind: type[OptionsT]) -> OptionsT:
    """`trigger.options` as `kind`, for the readers of a trigger (the live sources, the simulator).
    A trigger of a source's type carries that source's options whenever it was compiled here; one
    that does not was built by hand without them, a bug of its builder, hence TypeError."""
    options = trigger.options
    if not isinstance(options, kind):
        raise TypeError(
            f"trigger {trigger.name} ({trigger.type}) carries {type(options).__name__} options, "
            f"not {kind.__name__}; build TriggerSpec.options from config.models.{kind.__name__}"
        )
    return options


def compile_rules(rules: ScalingRulesModel | None, default: ScalingRules) -> ScalingRules:
    """Part by part: `scaleDown: {stabilizationSeconds: 60}` keeps the default rate policies."""
    if rules is None:
        return default
    return ScalingRules(
        stabilization_seconds=(
            rules.stabilization_seconds
            if rules.stabilization_seconds is not None
            else default.stabilization_seconds
        ),
        policies=(
            tuple(RatePolicy(RateKind(p.type), p.value, p.period_seconds) for p in rules.policies)
            if rules.policies is not None
            else default.policies
        ),
        select=SelectPolicy(rules.select_policy) if rules.select_policy is not None else default.select,
    )


def compile_behavior(behavior: BehaviorModel) -> BehaviorSpec:
    return BehaviorSpec(
        scale_up=compile_rules(behavior.scale_up, DEFAULT_SCALE_UP),
        scale_down=compile_rules(behavior.scale_down, DEFAULT_SCALE_DOWN),
        cooldown_seconds=behavior.cooldown_seconds,
    )


def compile_fallback(fallback: FallbackModel) -> FallbackSpec:
    return FallbackSpec(
        failure_threshold=fallback.failure_threshold,
        behavior=FallbackBehavior(fallback.behavior),
        replicas=fallback.replicas,
    )


def compile_limits(spec: ParallelismLimitsSpec | None) -> Limits:
    if spec is None:
        return UNLIMITED
    return Limits(
        company_max_gpus=spec.company_max_gpus,
        cluster_gpu_types={
            (cluster.name, gpu_type): count
            for cluster in spec.clusters
            for gpu_type, count in cluster.gpu_types.items()
        },
        provider_max_gpus={name: quota.max_gpus for name, quota in spec.providers.items()},
    )


def resolve_cluster(pool: Pool, limits: ParallelismLimitsSpec | None, default_cluster: str) -> str:
    """Explicit `cluster`, else the only cluster the limits list, else the operator's cluster."""
    if pool.cluster is not None:
        return pool.cluster
    if limits is not None and len(limits.clusters) == 1:
        return limits.clusters[0].name
    return default_cluster


def compile_workload(
    document: ScalingPolicyDocument,
    policy: Policy,
    limits: ParallelismLimitsSpec | None = None,
    default_cluster: str = "default",
) -> WorkloadSpec:
    spec = document.spec
    namespace = document.metadata.namespace
    return WorkloadSpec(
        name=document.metadata.name,
        namespace=namespace,
        pools=tuple(
            compile_pool(pool, namespace, resolve_cluster(pool, limits, default_cluster))
            for pool in spec.pools
        ),
        triggers=tuple(compile_trigger(trigger, namespace) for trigger in spec.triggers),
        policy=policy,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        priority=spec.priority,
        weight=spec.weight,
        behavior=compile_behavior(spec.behavior),
        fallback=compile_fallback(spec.fallback),
        pod_load=None if spec.scale_in.pod_load is None else spec.scale_in.pod_load.options(namespace),
        rebalance=spec.placement.rebalance,
    )


# ----------------------------------------------------------------------------------------------
# Checks across documents


def _split_field(dotted: str) -> FieldPath:
    """`windows.0.start` (a PolicyLoadError field) -> ("windows", 0, "start")."""
    return tuple(int(part) if part.isdigit() else part for part in dotted.split(".") if part)


def _where(source: SourceDocument, path: FieldPath) -> str:
    return f"{source.file}:{source.line_of(path)}"


def _options_model(block: PolicyBlock, allowed_modules: Sequence[str]) -> type[BaseModel] | None:
    try:
        model = getattr(resolve_class(block.type, block.python, allowed_modules), "Options", None)
    except Exception:
        return None  # the class itself is the problem; the registry's message says which
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def build_workload_policy(
    source: SourceDocument, block: PolicyBlock, allowed_modules: Sequence[str]
) -> tuple[Policy | None, list[ConfigError]]:
    base: FieldPath = ("spec", "policy")
    try:
        return build_policy(block.type, block.python, block.options, allowed_modules), []
    except PolicyLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            # The registry reports only the first bad option; translate them all, with suggestions
            # drawn from the policy's own options model.
            options_model = _options_model(block, allowed_modules)
            if options_model is not None:
                return None, translate_validation_error(cause, source, options_model, block.options, base)
        return None, [source.error((*base, *_split_field(exc.field)), str(exc))]
    except Exception as exc:
        # Third-party policy code runs here (imports, constructors); its failure is a config error.
        return None, [source.error(base, f"policy could not be built: {type(exc).__name__}: {exc}")]


def _check_policy(source: SourceDocument, policy: Policy, workload: WorkloadSpec) -> list[ConfigError]:
    check = getattr(policy, "check", None)
    if not callable(check):
        return []
    base: FieldPath = ("spec", "policy")
    try:
        found: Any = check(workload)
        return [source.error((*base, *_split_field(str(f))), str(message)) for f, message in found]
    except Exception as exc:
        return [source.error(base, f"policy check failed: {type(exc).__name__}: {exc}")]


def ignored_settings(
    source: SourceDocument, document: ScalingPolicyDocument, workload: WorkloadSpec
) -> list[ConfigWarning]:
    """Settings the workload's policy ignores: `behavior` under a policy that owns its behavior,
    and triggers the policy says it never reads (through its optional `triggers_read`; None, or no
    such method, means it reads them all). Both are valid, so they are warnings, not errors."""
    policy = workload.policy
    name = getattr(policy, "name", type(policy).__name__)
    warnings: list[ConfigWarning] = []
    behavior = document.spec.behavior
    if getattr(policy, "owns_behavior", False) and behavior.model_fields_set:
        fields = ", ".join(
            info.alias or key
            for key, info in type(behavior).model_fields.items()
            if key in behavior.model_fields_set
        )
        warnings.append(
            source.warning(
                ("spec", "behavior"),
                f"policy '{name}' makes its own scaling decisions and ignores behavior ({fields}); "
                "remove them, or tune the policy's own options",
            )
        )
    triggers_read = getattr(policy, "triggers_read", None)
    if not callable(triggers_read):
        return warnings
    try:
        read: Any = triggers_read(workload)
    except Exception as exc:  # third-party code; the warning is advice, so its failure is one too
        return [
            *warnings,
            source.warning(("spec", "policy"), f"triggers_read failed: {type(exc).__name__}: {exc}"),
        ]
    names = {t.name for t in workload.triggers}
    if read is None or not set(read) <= names:
        # A policy naming a trigger the workload lacks is an error of its own (its `check`); the
        # triggers it does not read are then more likely misnamed than unused: no second message.
        return warnings
    for i, trigger in enumerate(workload.triggers):
        if trigger.name not in read:
            warnings.append(
                source.warning(
                    ("spec", "triggers", i, "name"),
                    f"policy '{name}' never reads trigger '{trigger.name}': it is polled but cannot "
                    "change a decision; remove it, or name it in the policy's options",
                )
            )
    return warnings


def _check_pool_placement(
    source: SourceDocument,
    index: int,
    pool: Pool,
    limits: ParallelismLimitsSpec,
    default_cluster: str,
) -> list[ConfigError]:
    path: FieldPath = ("spec", "pools", index)
    clusters = {cluster.name: cluster for cluster in limits.clusters}
    cluster = resolve_cluster(pool, limits, default_cluster)
    listed = ", ".join(clusters)
    if cluster not in clusters:
        if pool.cluster is None:
            message = (
                f"no cluster given, and the operator's cluster '{cluster}' is not among the "
                f"ParallelismLimits clusters ({listed}); set cluster"
            )
        else:
            hint = did_you_mean(cluster, clusters)
            message = f"unknown cluster '{cluster}' (ParallelismLimits lists: {listed}){hint}"
        return [source.error((*path, "cluster"), message)]
    gpu_types = clusters[cluster].gpu_types
    # A virtual provider with its own quota is capped by that quota, whatever the cluster lists.
    provider_capped = (
        pool.node_class == "virtual" and pool.provider is not None and pool.provider in limits.providers
    )
    if pool.gpu_type in gpu_types or provider_capped:
        return []
    message = (
        f"GPU type '{pool.gpu_type}' is not among the gpuTypes of cluster '{cluster}' "
        f"({', '.join(gpu_types) or 'none'}){did_you_mean(pool.gpu_type, gpu_types)}"
    )
    if pool.node_class == "virtual":
        who = f"provider '{pool.provider}'" if pool.provider else "the pool a provider and that provider"
        message += f"; or give {who} a quota under ParallelismLimits providers"
    return [source.error((*path, "gpuType"), message)]


def compile_documents(
    documents: Sequence[ParsedDocument],
    allowed_modules: Sequence[str] = (),
    default_cluster: str = "default",
) -> tuple[list[WorkloadSpec], Limits, list[ConfigError], list[ConfigWarning]]:
    """Every workload that passed every check, the limits, the problems found on the way, and the
    settings that have no effect."""
    errors: list[ConfigError] = []
    warnings: list[ConfigWarning] = []
    limits_source: SourceDocument | None = None
    limits_spec: ParallelismLimitsSpec | None = None
    for doc in documents:
        if not isinstance(doc.model, ParallelismLimitsDocument):
            continue
        if limits_source is None:
            limits_source, limits_spec = doc.source, doc.model.spec
        else:
            errors.append(
                doc.source.error(
                    ("kind",),
                    "a second ParallelismLimits document (the first is at "
                    f"{_where(limits_source, ('kind',))}); merge them into one",
                )
            )

    workloads: list[WorkloadSpec] = []
    first_workload: dict[str, tuple[SourceDocument, str]] = {}  # name -> (where, namespace/name)
    first_deployment: dict[str, tuple[SourceDocument, int, str]] = {}
    for doc in documents:
        model = doc.model
        if not isinstance(model, ScalingPolicyDocument):
            continue
        source = doc.source
        name = model.metadata.name
        key = f"{model.metadata.namespace}/{name}"
        problems: list[ConfigError] = []
        if name in first_workload:
            other, other_key = first_workload[name]
            where = _where(other, ("metadata", "name"))
            if other_key == key:
                message = f"workload '{key}' is already defined at {where}"
            else:
                # The engine, its state, the readings and the trigger sources are keyed by the
                # workload's name alone, so two namespaces cannot share one.
                message = (
                    f"workload name '{name}' is already used by workload '{other_key}' at {where}; "
                    "workload names must be unique across namespaces: rename one of them"
                )
            problems.append(source.error(("metadata", "name"), message))
        else:
            first_workload[name] = (source, key)
            for i, pool in enumerate(model.spec.pools):
                deployment = f"{model.metadata.namespace}/{pool.deployment}"
                if deployment in first_deployment:
                    other, j, owner = first_deployment[deployment]
                    problems.append(
                        source.error(
                            ("spec", "pools", i, "deployment"),
                            f"Deployment '{deployment}' is already managed by spec.pools[{j}] of workload "
                            f"'{owner}' at {_where(other, ('spec', 'pools', j, 'deployment'))}",
                        )
                    )
                else:
                    first_deployment[deployment] = (source, i, key)
        if limits_spec is not None and limits_spec.clusters:
            for i, pool in enumerate(model.spec.pools):
                problems.extend(_check_pool_placement(source, i, pool, limits_spec, default_cluster))
        policy, policy_errors = build_workload_policy(source, model.spec.policy, allowed_modules)
        problems.extend(policy_errors)
        if policy is not None:
            workload = compile_workload(model, policy, limits_spec, default_cluster)
            problems.extend(_check_policy(source, policy, workload))
            warnings.extend(ignored_settings(source, model, workload))
            if not problems and doc.clean:
                workloads.append(workload)
        errors.extend(problems)
    return workloads, compile_limits(limits_spec), errors, warnings
