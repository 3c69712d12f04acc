"""The shape of policy files: pydantic models of the `ScalingPolicy` and `ParallelismLimits` documents.

These models say what a well-formed document looks like, field by field, plus the rules that need
only one object to check (exactly one of `queue`/`queues`, a p95 startup not below the median, ...).
Rules that span documents (duplicate workloads, a pool's cluster and GPU type against the limits)
live in `config.compile`, which also turns these models into the engine's frozen dataclasses.
Callers: `config.loader` (validation and error translation), `config.compile`, and
`config.validate` (the JSON Schema for editors). A trigger's options for its source
(`RabbitMQOptions`, `PrometheusOptions`) are models here too, and the one place their defaults and
meanings live: the trigger models extend them, `config.compile` puts them into `TriggerSpec.options`,
and the live sources (`autoscaler.sources`) and the simulator (`autoscaler.sim`) read them as they are.

YAML spells fields in camelCase; the models use snake_case attributes with camelCase aliases and
accept either spelling. Every model forbids unknown fields (a typo must not silently become a
default) except the `policy:` block, whose extra keys are the chosen policy's own options. Models are
strict: YAML already types its scalars, so `"5"` for an integer or `yes` for a number is a mistake to
report, not to coerce.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_VERSION = "gpu-autoscaler/v1alpha1"
KINDS = ("ScalingPolicy", "ParallelismLimits")

# Kubernetes object names (RFC 1123). Deployments and workloads are subdomains; namespaces are labels.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Trigger names are referenced from policy options and become metric label values.
TRIGGER_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"

# What each pattern means, for messages: "should match pattern '^[a-z0-9]...'" helps nobody.
PATTERN_HINTS: dict[str, str] = {
    DNS1123_SUBDOMAIN: "a Kubernetes name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    DNS1123_LABEL: "a Kubernetes namespace: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit, at most 63 characters",
    ENV_VAR_NAME: "an environment variable name: letters, digits and '_', not starting with a digit",
    TRIGGER_NAME: "a trigger name: letters, digits, '_' and '-', starting with a letter or '_'",
}

KubeName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
EnvVarName = Annotated[str, Field(min_length=1, pattern=ENV_VAR_NAME)]
TriggerName = Annotated[str, Field(min_length=1, max_length=63, pattern=TRIGGER_NAME)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
MetricTypeName = Literal["AverageValue", "Value"]

# Bounds of every number in a policy file. Each is far beyond any sane setting and far inside what
# the engine's arithmetic handles: an unbounded integer (gpusPerReplica: 10^400) reached
# `limits.allocate` and raised OverflowError there, in the live loop. Floats must also be finite.
MAX_REPLICAS = 10_000  # of one workload or one pool, in replicas or replica units
# A replica is one pod; 64 GPUs is eight 8-GPU nodes, more than any multi-node model server spans
# today (as one pod, a replica cannot exceed one node's GPUs at all).
MAX_GPUS_PER_REPLICA = 64
MAX_GPUS = 1_000_000  # companyMaxGpus, per-cluster caps per GPU type, provider quotas
MAX_PRIORITY = 1_000_000  # priorities are compared, never summed; +-1e6 leaves room for any scheme
MIN_WEIGHT, MAX_WEIGHT = 1e-3, 1e6  # fair-share weights: a ratio of 1e9 between two workloads at most
MAX_SECONDS = 7 * 24 * 3600.0  # every duration: a week
MAX_COST_PER_GPU_HOUR = 1_000.0  # in any currency, well above list prices (an H100 is a few per hour)
MIN_TARGET, MAX_TARGET = 1e-6, 1e12  # trigger targets and activation thresholds, in the metric's unit
MIN_POLL_SECONDS = 0.1  # a source reads its server at most ten times a second
MAX_TIMEOUT_SECONDS = 300.0
# As the Kubernetes HPA validates them: windows of at most an hour, rate periods of at most 30 min.
MAX_STABILIZATION_SECONDS = 3600.0
MAX_PERIOD_SECONDS = 1800.0
MAX_FAILURE_THRESHOLD = 1_000

Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
Replicas = Annotated[int, Field(ge=0, le=MAX_REPLICAS)]
GpuCount = Annotated[int, Field(ge=0, le=MAX_GPUS)]

# A problem found by a model validator: a path relative to the model, and a message.
Problem = tuple[tuple[str | int, ...], str]


def problems_error(problems: list[Problem]) -> PydanticCustomError:
    """One pydantic error that carries several located problems.

    A model validator can raise only one error, and its location is the model itself; the loader
    (`config.loader`) unpacks `ctx["problems"]` so that each problem is reported at its own field.
    """
    summary = "; ".join(message for _, message in problems)
    return PydanticCustomError("config_problems", "{summary}", {"summary": summary, "problems": problems})


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        strict=True,
        allow_inf_nan=False,
        frozen=True,
    )


# ----------------------------------------------------------------------------------------------
# ScalingPolicy


class Metadata(_Model):
    name: KubeName
    namespace: Namespace = "default"


class LimitsMetadata(_Model):
    name: KubeName
    namespace: Namespace | None = None


class Pool(_Model):
    """One Deployment of the workload, pinned to one node class and GPU type."""

    deployment: KubeName
    node_class: Literal["regular", "virtual"]
    gpu_type: NonEmptyStr
    gpus_per_replica: int = Field(
        1,
        ge=1,
        le=MAX_GPUS_PER_REPLICA,
        description=f"GPUs one replica (pod) holds, 1 to {MAX_GPUS_PER_REPLICA}",
    )
    cost_per_gpu_hour: float = Field(
        0.0, ge=0, le=MAX_COST_PER_GPU_HOUR, description=f"0 to {MAX_COST_PER_GPU_HOUR:g}"
    )
    startup_seconds: Seconds = Field(60.0, description="median time from scale-up to ready, at most a week")
    startup_p95_seconds: Seconds | None = Field(None, description="the slow tail of startup, at most a week")
    relative_throughput: float = Field(
        1.0,
        ge=0.01,
        le=10,
        description="capacity of one replica in replica units (slower GPU: < 1), 0.01 to 10",
    )
    max_replicas: Replicas | None = Field(None, description=f"0 to {MAX_REPLICAS}")
    pending_timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=MAX_SECONDS,
        description="replicas Pending longer than this spill to the next pool; at most a week",
    )
    provider: NonEmptyStr | None = Field(None, description="virtual-kubelet provider, e.g. salad")
    cluster: NonEmptyStr | None = Field(
        None, description="defaults to the only cluster in ParallelismLimits, else the operator's cluster"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Pool:
        problems: list[Problem] = []
        if self.startup_p95_seconds is not None and self.startup_p95_seconds < self.startup_seconds:
            problems.append(
                (
                    ("startupP95Seconds",),
                    f"{self.startup_p95_seconds:g} is below startupSeconds {self.startup_seconds:g}; "
                    "the 95th percentile cannot be faster than the median",
                )
            )
        if self.node_class == "regular" and self.provider is not None:
            problems.append(
                (
                    ("provider",),
                    "only virtual pools have a provider; use nodeClass: virtual or drop the provider",
                )
            )
        if problems:
            raise problems_error(problems)
        return self


class _TriggerBase(_Model):
    name: TriggerName
    activation: float = Field(
        0.0, ge=0, le=MAX_TARGET, description=f"the workload is active above this value (0 to {MAX_TARGET:g})"
    )
    metric_type: MetricTypeName = "AverageValue"


class SourceOptions(_Model):
    """The options of a trigger that only its source reads (what to read and how), as opposed to the
    target, target type and activation the engine reads. Each trigger model below extends its source's
    options, so a field and its default are declared once; `config.compile` hands the options part to
    the source (through `TriggerSpec.options`) as an instance of this type, and the source parses
    nothing again."""

    @classmethod
    def of(cls, trigger: Self) -> Self:
        """The options part of a trigger that was already validated, as this type. Not validated a
        second time: the trigger's own validation covered every field and every rule of `cls`."""
        values = {name: getattr(trigger, name) for name in cls.model_fields}
        # The pydantic mypy plugin types model_construct as returning the class it is written in.
        return cast(Self, cls.model_construct(trigger.model_fields_set & set(values), **values))


RabbitMQMode = Literal["QueueLength", "MessageRate", "DeliverGetRate"]
# The modes that read a rate, which only the management API reports.
RATE_MODES: tuple[RabbitMQMode, ...] = ("MessageRate", "DeliverGetRate")
RabbitMQProtocol = Literal["amqp", "http"]
RabbitMQOperation = Literal["sum", "max"]
# KEDA's default for a RabbitMQ QueueLength trigger: 20 messages per replica.
DEFAULT_QUEUE_LENGTH_TARGET = 20.0


class RabbitMQOptions(SourceOptions):
    """Which RabbitMQ queues a rabbitmq trigger reads, and how (`sources.rabbitmq`)."""

    queue: NonEmptyStr | None = None
    queues: list[NonEmptyStr] | None = Field(None, min_length=1)
    operation: RabbitMQOperation = Field("sum", description="how several queues combine")
    # DeliverGetRate (KEDA 2.17+): messages delivered to consumers per second, i.e. requests that
    # started service; queue-sla learns a replica's service rate from it.
    mode: RabbitMQMode = "QueueLength"
    protocol: RabbitMQProtocol = Field(
        "amqp", description="amqp reads queue length only; http (management API) also reads rates"
    )
    vhost_name: str = "/"
    connection_from_env: EnvVarName = Field(
        "RABBITMQ_URL", description="environment variable holding the connection URL (a secret)"
    )
    exclude_unacknowledged: bool = False
    poll_seconds: float = Field(
        1.0, ge=MIN_POLL_SECONDS, le=3600, description=f"{MIN_POLL_SECONDS:g} to 3600"
    )

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The queues to read, whichever of `queue` and `queues` named them (exactly one does)."""
        if self.queues is not None:
            return tuple(self.queues)
        return (self.queue,) if self.queue is not None else ()

    def _option_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.queue is not None and self.queues is not None:
            problems.append((("queues",), "give either 'queue' or 'queues', not both"))
        elif self.queue is None and self.queues is None:
            problems.append((("queue",), "required: give 'queue' (one queue) or 'queues' (a list)"))
        if self.mode in RATE_MODES and self.protocol != "http":
            problems.append(
                (
                    ("protocol",),
                    f"mode {self.mode} needs protocol: http (only the management API reports message rates)",
                )
            )
        if self.exclude_unacknowledged and self.protocol != "http":
            problems.append(
                (
                    ("excludeUnacknowledged",),
                    "needs protocol: http (AMQP cannot tell ready from unacknowledged messages)",
                )
            )
        return problems

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._option_problems()
        if problems:
            raise problems_error(problems)
        return self


class RabbitMQTrigger(RabbitMQOptions, _TriggerBase):
    """Queue length or message rate of one or more RabbitMQ queues (KEDA's rabbitmq scaler)."""

    type: Literal["rabbitmq"]
    target_per_replica: float | None = Field(
        None,
        ge=MIN_TARGET,
        le=MAX_TARGET,
        description=f"{MIN_TARGET:g} to {MAX_TARGET:g}; default {DEFAULT_QUEUE_LENGTH_TARGET:g} for "
        "QueueLength, required for the rates",
    )

    # Overrides the options' validator (same name), so that every problem is reported at once.
    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._option_problems()
        if self.mode in RATE_MODES and self.target_per_replica is None:
            problems.append(
                (("targetPerReplica",), f"required for mode {self.mode} (messages/s per replica)")
            )
        if problems:
            raise problems_error(problems)
        return self

    def source_options(self) -> RabbitMQOptions:
        return RabbitMQOptions.of(self)


class PrometheusOptions(SourceOptions):
    """Which PromQL query a prometheus trigger runs, where and how (`sources.prometheus`)."""

    query: NonEmptyStr
    server_address: NonEmptyStr | None = None
    ignore_null_values: bool = Field(False, description="an empty result is an error unless true")
    auth_modes: Literal["bearer", "basic"] | None = None
    token_from_env: EnvVarName | None = None
    username_from_env: EnvVarName | None = None
    password_from_env: EnvVarName | None = None
    custom_headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(
        5.0, ge=0.1, le=MAX_TIMEOUT_SECONDS, description=f"0.1 to {MAX_TIMEOUT_SECONDS:g}"
    )
    poll_seconds: float = Field(
        15.0, ge=MIN_POLL_SECONDS, le=3600, description=f"{MIN_POLL_SECONDS:g} to 3600"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[Problem] = []
        if self.server_address is not None and not self.server_address.startswith(("http://", "https://")):
            problems.append((("serverAddress",), f"'{self.server_address}' is not an http(s) URL"))
        if self.auth_modes == "bearer" and self.token_from_env is None:
            problems.append((("tokenFromEnv",), "required with authModes: bearer"))
        if self.auth_modes == "basic":
            for key, value in (
                ("usernameFromEnv", self.username_from_env),
                ("passwordFromEnv", self.password_from_env),
            ):
                if value is None:
                    problems.append(((key,), "required with authModes: basic"))
        if problems:
            raise problems_error(problems)
        return self


class PrometheusTrigger(PrometheusOptions, _TriggerBase):
    """The value of one PromQL query (KEDA's prometheus scaler)."""

    type: Literal["prometheus"]
    target: float = Field(ge=MIN_TARGET, le=MAX_TARGET, description=f"{MIN_TARGET:g} to {MAX_TARGET:g}")

    def source_options(self) -> PrometheusOptions:
        return PrometheusOptions.of(self)


Trigger = Annotated[RabbitMQTrigger | PrometheusTrigger, Field(discriminator="type")]


class PolicyBlock(BaseModel):
    """Which policy decides the capacity: a registered `type` or `python: module:Class`. Every other
    key is an option of that policy, validated by the policy's own model when it is built."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: NonEmptyStr | None = Field(None, description="a registered policy: target, queue-sla, ...")
    python: NonEmptyStr | None = Field(
        None, description="package.module:Class, for modules the operator allows"
    )

    @model_validator(mode="after")
    def _one_source(self) -> PolicyBlock:
        if self.type is not None and self.python is not None:
            raise problems_error([(("python",), "give either 'type' or 'python', not both")])
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RatePolicyModel(_Model):
    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0, le=MAX_REPLICAS, description=f"pods or percent per period, 1 to {MAX_REPLICAS}")
    period_seconds: float = Field(
        gt=0, le=MAX_PERIOD_SECONDS, description=f"at most {MAX_PERIOD_SECONDS:g}, as the HPA allows"
    )


class ScalingRulesModel(_Model):
    """One direction of the HPA `behavior` block; a missing part keeps the HPA default."""

    stabilization_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_STABILIZATION_SECONDS,
        description=f"at most {MAX_STABILIZATION_SECONDS:g}, as the HPA allows",
    )
    policies: list[RatePolicyModel] | None = Field(None, min_length=1)
    select_policy: Literal["Max", "Min", "Disabled"] | None = None


class BehaviorModel(_Model):
    scale_up: ScalingRulesModel | None = None
    scale_down: ScalingRulesModel | None = None
    cooldown_seconds: Seconds = Field(300.0, description="idle time before scaling to zero, at most a week")


class FallbackModel(_Model):
    failure_threshold: int = Field(
        3, ge=1, le=MAX_FAILURE_THRESHOLD, description=f"1 to {MAX_FAILURE_THRESHOLD}"
    )
    behavior: Literal["hold", "static", "currentIfHigher"] = "hold"
    replicas: Replicas = Field(0, description=f"0 to {MAX_REPLICAS}")


class ScalingPolicySpec(_Model):
    priority: int = Field(
        0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description=f"higher first; -{MAX_PRIORITY} to {MAX_PRIORITY}"
    )
    weight: float = Field(
        1.0,
        ge=MIN_WEIGHT,
        le=MAX_WEIGHT,
        description=f"fair-share weight among workloads of equal priority, {MIN_WEIGHT:g} to {MAX_WEIGHT:g}",
    )
    min_replicas: Replicas = Field(0, description=f"in replica units, 0 to {MAX_REPLICAS}")
    max_replicas: int = Field(
        100, ge=1, le=MAX_REPLICAS, description=f"in replica units, 1 to {MAX_REPLICAS}"
    )
    pools: list[Pool] = Field(min_length=1, description="preference order for scale-up; reverse for scale-in")
    triggers: list[Trigger] = Field(min_length=1)
    policy: PolicyBlock = Field(default_factory=lambda: PolicyBlock(type="target"))
    behavior: BehaviorModel = Field(default_factory=BehaviorModel)
    fallback: FallbackModel = Field(default_factory=FallbackModel)

    @model_validator(mode="after")
    def _consistent(self) -> ScalingPolicySpec:
        problems: list[Problem] = []
        if self.min_replicas > self.max_replicas:
            problems.append(
                (("minReplicas",), f"{self.min_replicas} is greater than maxReplicas {self.max_replicas}")
            )
        first_index: dict[str, int] = {}
        for i, trigger in enumerate(self.triggers):
            if trigger.name in first_index:
                problems.append(
                    (
                        ("triggers", i, "name"),
                        f"trigger name '{trigger.name}' is already used by "
                        f"triggers[{first_index[trigger.name]}]",
                    )
                )
            else:
                first_index[trigger.name] = i
        if self.fallback.behavior == "static" and self.fallback.replicas > self.max_replicas:
            problems.append(
                (
                    ("fallback", "replicas"),
                    f"{self.fallback.replicas} is greater than maxReplicas {self.max_replicas}",
                )
            )
        if problems:
            raise problems_error(problems)
        return self


class ScalingPolicyDocument(_Model):
    """How one workload scales: its pools, its triggers and the policy that reads them."""

    api_version: Literal["gpu-autoscaler/v1alpha1"]
    kind: Literal["ScalingPolicy"]
    metadata: Metadata
    spec: ScalingPolicySpec


# ----------------------------------------------------------------------------------------------
# ParallelismLimits


class ClusterLimit(_Model):
    name: NonEmptyStr
    gpu_types: dict[NonEmptyStr, GpuCount] = Field(
        default_factory=dict,
        description=f"GPU type -> the most GPUs of that type in use at once, 0 to {MAX_GPUS}",
    )


class ProviderQuota(_Model):
    max_gpus: GpuCount = Field(description=f"0 to {MAX_GPUS}")


class ParallelismLimitsSpec(_Model):
    company_max_gpus: GpuCount | None = Field(
        None, description=f"all workloads, all clusters; 0 to {MAX_GPUS}"
    )
    clusters: list[ClusterLimit] = Field(default_factory=list)
    providers: dict[NonEmptyStr, ProviderQuota] = Field(
        default_factory=dict, description="quota of each virtual-kubelet provider"
    )

    @model_validator(mode="after")
    def _unique_clusters(self) -> ParallelismLimitsSpec:
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for i, cluster in enumerate(self.clusters):
            if cluster.name in seen:
                problems.append(
                    (
                        ("clusters", i, "name"),
                        f"cluster '{cluster.name}' is already listed at clusters[{seen[cluster.name]}]",
                    )
                )
            else:
                seen[cluster.name] = i
        if problems:
            raise problems_error(problems)
        return self


class ParallelismLimitsDocument(_Model):
    """The company's GPU cap, per cluster caps per GPU type, and virtual provider quotas."""

    api_version: Literal["gpu-autoscaler/v1alpha1"]
    kind: Literal["ParallelismLimits"]
    metadata: LimitsMetadata
    spec: ParallelismLimitsSpec


Document = ScalingPolicyDocument | ParallelismLimitsDocument
DOCUMENT_MODELS: dict[str, type[ScalingPolicyDocument] | type[ParallelismLimitsDocument]] = {
    "ScalingPolicy": ScalingPolicyDocument,
    "ParallelismLimits": ParallelismLimitsDocument,
}


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one policy-file document, either kind, for editors."""
    adapter: TypeAdapter[Document] = TypeAdapter(Annotated[Document, Field(discriminator="kind")])
    schema = adapter.json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gpu-autoscaler policy document",
        "description": f"One YAML document of a policy file (apiVersion {API_VERSION}): "
        + " or ".join(KINDS),
        **schema,
    }
