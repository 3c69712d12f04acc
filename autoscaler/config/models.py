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
The GPU-inference presets (`vllm`, `triton`, `dcgm`, `tgi` triggers) are prometheus triggers whose
query `config.presets` writes: they have no options of their own and compile to `PrometheusOptions`.

YAML spells fields in camelCase; the models use snake_case attributes with camelCase aliases and
accept either spelling. Every model forbids unknown fields (a typo must not silently become a
default) except the `policy:` block, whose extra keys are the chosen policy's own options. Models are
strict: YAML already types its scalars, so `"5"` for an integer or `yes` for a number is a mistake to
report, not to coerce.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from autoscaler.config.presets import (
    LABEL_NAME,
    PODS_PLACEHOLDER,
    PRESETS,
    RANGE_DURATION,
    Aggregation,
    PresetMetric,
    Scope,
    control_character,
    deployment_pod_regex,
    pod_load_query,
    preset_query,
)

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


class _TriggerCommon(_Model):
    name: TriggerName
    activation: float = Field(
        0.0, ge=0, le=MAX_TARGET, description=f"the workload is active above this value (0 to {MAX_TARGET:g})"
    )


class _TriggerBase(_TriggerCommon):
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


class PrometheusConnection(SourceOptions):
    """Where and how a Prometheus-reading trigger queries (everything but the query itself): the
    prometheus trigger and the inference presets share these fields."""

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

    def _connection_problems(self) -> list[Problem]:
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
        return problems

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._connection_problems()
        if problems:
            raise problems_error(problems)
        return self


class PrometheusOptions(PrometheusConnection):
    """Which PromQL query a prometheus trigger runs, where and how (`sources.prometheus`)."""

    query: NonEmptyStr


class PrometheusTrigger(PrometheusOptions, _TriggerBase):
    """The value of one PromQL query (KEDA's prometheus scaler)."""

    type: Literal["prometheus"]
    target: float = Field(ge=MIN_TARGET, le=MAX_TARGET, description=f"{MIN_TARGET:g} to {MAX_TARGET:g}")

    def source_options(self) -> PrometheusOptions:
        return PrometheusOptions.of(self)


# ----------------------------------------------------------------------------------------------
# GPU-inference presets: prometheus triggers whose query `config.presets` writes

PromLabelName = Annotated[str, Field(min_length=1, max_length=128, pattern=LABEL_NAME)]


class _PresetTrigger(PrometheusConnection, _TriggerCommon):
    """A metric of an inference server (`metric`, one of `PRESETS[type]`), scoped to the pods of a
    workload, read from Prometheus. Compiles to a `PrometheusOptions` whose query `preset_query`
    writes; the target type follows from the metric (a count: AverageValue, per replica; a level:
    Value, for the workload), so the file does not set `metricType`."""

    type: str
    metric: str
    namespace: Namespace | None = Field(None, description="defaults to the policy's metadata.namespace")
    deployment: KubeName | None = Field(None, description="read the pods of this Deployment")
    deployments: list[KubeName] | None = Field(None, min_length=1, description="read the pods of these")
    pod: NonEmptyStr | None = Field(None, description="read the pods whose name matches this regex")
    selector: dict[PromLabelName, str] = Field(
        default_factory=dict, description="further label equalities, e.g. {model_name: llama-3-8b}"
    )
    namespace_label: PromLabelName = Field("namespace", description="the label holding the pod's namespace")
    pod_label: PromLabelName = Field("pod", description="the label holding the pod's name")
    aggregation: Aggregation | None = Field(
        None, description="levels only: avg (the default) or max over the pods; counts are summed"
    )
    target_per_replica: float | None = Field(
        None,
        ge=MIN_TARGET,
        le=MAX_TARGET,
        description=f"counts: per replica, {MIN_TARGET:g} to {MAX_TARGET:g}",
    )
    target: float | None = Field(
        None,
        ge=MIN_TARGET,
        le=MAX_TARGET,
        description=f"levels: the level to hold, {MIN_TARGET:g} to {MAX_TARGET:g}",
    )

    @property
    def preset(self) -> PresetMetric:
        return PRESETS[self.type][self.metric]

    @property
    def metric_type(self) -> MetricTypeName:
        return "AverageValue" if self.preset.kind == "count" else "Value"

    @property
    def resolved_target(self) -> float:
        """The target the engine compares with: the file's, else the metric's default (validation
        made sure one of them exists)."""
        given = self.target_per_replica if self.preset.kind == "count" else self.target
        target = given if given is not None else self.preset.default_target
        assert target is not None
        return target

    def _scope_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.deployment is not None and self.deployments is not None:
            problems.append((("deployments",), "give either 'deployment' or 'deployments', not both"))
        if self.pod is not None and (self.deployment is not None or self.deployments is not None):
            problems.append((("pod",), "give either 'pod' (a regex) or 'deployment(s)', not both"))
        if self.deployment is None and self.deployments is None and self.pod is None and not self.selector:
            problems.append(
                (
                    ("deployment",),
                    "required: say which pods to read with 'deployment', 'deployments', 'pod' (a regex) "
                    "or 'selector'; the namespace alone would add up every server in it",
                )
            )
        if self.pod is not None:
            bad = control_character(self.pod)
            if bad is not None:
                problems.append((("pod",), f"holds a control character {bad}"))
            else:
                try:
                    re.compile(self.pod)
                except re.error as exc:
                    problems.append((("pod",), f"not a regular expression: {exc}"))
        for key, value in self.selector.items():
            if key in (self.namespace_label, self.pod_label):
                field = "namespace" if key == self.namespace_label else "pod' or 'deployment"
                problems.append((("selector", key), f"'{key}' is scoped by '{field}'; set it there"))
            elif key.startswith("__"):
                problems.append((("selector", key), "labels starting with '__' are Prometheus' own"))
            bad = control_character(value)
            if bad is not None:
                problems.append((("selector", key), f"holds a control character {bad}"))
        return problems

    def _target_problems(self) -> list[Problem]:
        spec = self.preset
        count = spec.kind == "count"
        own, own_key = (self.target_per_replica, "targetPerReplica") if count else (self.target, "target")
        wrong, wrong_key = (self.target, "target") if count else (self.target_per_replica, "targetPerReplica")
        what = "a count" if count else "a level"
        how = "summed over the pods" if count else "held for the whole workload"
        problems: list[Problem] = []
        if wrong is not None:
            problems.append(
                (
                    (wrong_key,),
                    f"{self.type} {self.metric} is {what} ({spec.unit}) {how}: "
                    f"set {own_key}, not {wrong_key}",
                )
            )
        if own is None and spec.default_target is None:
            problems.append(((own_key,), f"required for {self.metric}: {spec.no_default}"))
        if own is not None and spec.max_target is not None and own > spec.max_target:
            problems.append(
                (
                    (own_key,),
                    f"{own:g} is above {spec.max_target:g}, the most {self.metric} can read ({spec.unit})",
                )
            )
        if count and self.aggregation is not None:
            problems.append(
                (
                    ("aggregation",),
                    f"{self.type} {self.metric} is a count, always summed over the pods "
                    "(targetPerReplica divides the sum); aggregation applies to levels",
                )
            )
        return problems

    def _preset_problems(self) -> list[Problem]:
        return self._connection_problems() + self._scope_problems() + self._target_problems()

    # Overrides the connection's validator (same name), so that every problem is reported at once.
    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._preset_problems()
        if problems:
            raise problems_error(problems)
        return self

    def _rate_window(self) -> str:
        return "1m"

    def source_options(self, namespace: str = "default") -> PrometheusOptions:
        """The prometheus options this preset stands for; `namespace` is the policy's, used when
        the trigger names none."""
        pods = [self.deployment] if self.deployment is not None else self.deployments
        scope = Scope(
            namespace=self.namespace or namespace,
            pod_regex=deployment_pod_regex(pods) if pods else self.pod,
            selector=self.selector,
            namespace_label=self.namespace_label,
            pod_label=self.pod_label,
        )
        query = preset_query(self.type, self.metric, scope, self.aggregation or "avg", self._rate_window())
        values = {name: getattr(self, name) for name in PrometheusConnection.model_fields}
        fields_set = (self.model_fields_set & set(values)) | {"query"}
        return PrometheusOptions.model_construct(fields_set, query=query, **values)


class VllmTrigger(_PresetTrigger):
    """vLLM's requests waiting or running, or its KV-cache usage."""

    type: Literal["vllm"]
    metric: Literal["waiting", "running", "kvCacheUsage"]


class TritonTrigger(_PresetTrigger):
    """Triton's pending requests, or the mean time a request waits in its scheduling queue."""

    type: Literal["triton"]
    metric: Literal["pending", "queueDuration"]
    rate_window: str = Field(
        "1m", pattern=RANGE_DURATION, description="queueDuration: the window of the rates, e.g. 1m"
    )

    def _preset_problems(self) -> list[Problem]:
        problems = super()._preset_problems()
        if "rate_window" in self.model_fields_set and not self.preset.rate_ratio:
            problems.append((("rateWindow",), f"applies to queueDuration only, not {self.metric}"))
        return problems

    def _rate_window(self) -> str:
        return self.rate_window


class DcgmTrigger(_PresetTrigger):
    """The NVIDIA DCGM exporter's GPU utilisation or framebuffer used, per pod (pod attribution on)."""

    type: Literal["dcgm"]
    metric: Literal["gpuUtil", "fbUsed"]


class TgiTrigger(_PresetTrigger):
    """Text Generation Inference's queue size or current batch size."""

    type: Literal["tgi"]
    metric: Literal["queueSize", "batchSize"]


PresetTrigger = VllmTrigger | TritonTrigger | DcgmTrigger | TgiTrigger
Trigger = Annotated[
    RabbitMQTrigger | PrometheusTrigger | VllmTrigger | TritonTrigger | DcgmTrigger | TgiTrigger,
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------------------------
# Idle-first scale-in: which pods a scale-in removes

# The placeholder a custom pod-load query may hold for the workload's namespace.
NAMESPACE_PLACEHOLDER = "$namespace"
MAX_BUDGET_SECONDS = 30.0


class PodLoadOptions(PrometheusOptions):
    """What the pod-load reader runs (`sources.podload`): `query` returns one series per pod, with
    `PODS_PLACEHOLDER` replaced by a regex of the pods to rank. `budget_seconds` bounds the reading
    and the annotating together (`kube.idlefirst`); the scale-in is written when it runs out."""

    pod_label: PromLabelName = "pod"
    namespace_label: PromLabelName = "namespace"
    budget_seconds: float = 2.0


class PodLoad(PrometheusConnection):
    """`spec.scaleIn.podLoad`: a per-pod load, read from Prometheus just before a scale-in, so that
    the ReplicaSet removes the idlest pods first. Either a preset metric (`type: vllm`,
    `metric: running`) or `type: prometheus` with a `query` returning one series per pod."""

    type: Literal["prometheus", "vllm", "triton", "dcgm", "tgi"]
    metric: NonEmptyStr | None = Field(None, description="a preset's metric, e.g. running for vllm")
    query: NonEmptyStr | None = Field(
        None,
        description=f"type prometheus: one series per pod; {PODS_PLACEHOLDER} becomes a regex of the pods' "
        f"names, {NAMESPACE_PLACEHOLDER} the workload's namespace",
    )
    namespace_label: PromLabelName = Field("namespace", description="the label holding the pod's namespace")
    pod_label: PromLabelName = Field("pod", description="the label holding the pod's name")
    budget_seconds: float = Field(
        2.0,
        ge=0.1,
        le=MAX_BUDGET_SECONDS,
        description=f"time for reading and annotating before the scale-in is written anyway, 0.1 to "
        f"{MAX_BUDGET_SECONDS:g}",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._connection_problems()
        if self.type == "prometheus":
            if self.query is None:
                problems.append(
                    (
                        ("query",),
                        f"required with type: prometheus (one series per pod, "
                        f'e.g. my_inflight{{pod=~"{PODS_PLACEHOLDER}"}})',
                    )
                )
            if self.metric is not None:
                problems.append(
                    (("metric",), "applies to the presets (vllm, triton, dcgm, tgi), not to prometheus")
                )
        else:
            known = PRESETS[self.type]
            if self.query is not None:
                problems.append(
                    (("query",), f"type {self.type} writes its own query; use type: prometheus for yours")
                )
            if self.metric is None:
                problems.append((("metric",), f"required with type {self.type}: one of {', '.join(known)}"))
            elif self.metric not in known:
                problems.append(
                    (("metric",), f"'{self.metric}' is not a {self.type} metric: one of {', '.join(known)}")
                )
        for key in ("timeout_seconds", "poll_seconds"):
            if key in self.model_fields_set:
                problems.append(
                    (
                        (to_camel(key),),
                        "does not apply: the load is read once per scale-in, within budgetSeconds",
                    )
                )
        if problems:
            raise problems_error(problems)
        return self

    def options(self, namespace: str) -> PodLoadOptions:
        """The reader's options for a workload in `namespace`: the query written (a preset's) or
        with its namespace filled in (a prometheus query), timed out by the budget."""
        if self.type == "prometheus":
            assert self.query is not None
            query = self.query.replace(NAMESPACE_PLACEHOLDER, namespace)
        else:
            assert self.metric is not None
            query = pod_load_query(self.type, self.metric, namespace, self.namespace_label, self.pod_label)
        values = {name: getattr(self, name) for name in PrometheusConnection.model_fields}
        values["timeout_seconds"] = self.budget_seconds
        fields_set = (self.model_fields_set & set(values)) | {"query", "timeout_seconds"}
        return PodLoadOptions.model_construct(
            fields_set,
            query=query,
            pod_label=self.pod_label,
            namespace_label=self.namespace_label,
            budget_seconds=self.budget_seconds,
            **values,
        )


class ScaleInModel(_Model):
    pod_load: PodLoad | None = Field(None, description="remove the idlest pods first, by this per-pod load")


class PlacementModel(_Model):
    rebalance: bool = Field(
        False,
        description="move running replicas to an earlier pool when it has room, a bounded step at a "
        "time: replacements start there first, the later pool shrinks once they are Ready",
    )


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
    scale_in: ScaleInModel = Field(default_factory=ScaleInModel)
    placement: PlacementModel = Field(default_factory=PlacementModel)

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
