"""Plain frozen data the engine takes and gives.

Everything `engine.reconcile` needs arrives as one of these values, and everything it decides leaves
as one of them. The pydantic models in `autoscaler.config` are compiled into these at the edge, so
nothing inside the engine depends on how a policy file was spelled. Callers: `config.compile`,
`sim`, and later the live controller.

Units. GPUs are whole GPUs. Replicas are pod counts of one pool. "Units" (replica units) measure
capacity: one replica of a pool with `relative_throughput` 1.0 is one unit, a replica on a GPU half as
fast is half a unit. A workload's min/max replicas and every policy recommendation are in units, so
a policy never needs to know which pool will serve it.

The image compiles this module with mypyc (setup.py), so every class here is a native class there:
its attributes are read as struct fields by the compiled engine, not looked up by name. Opaque
fields are typed `object | None` rather than `object` (the same type to mypy) because mypyc's
dataclass support rejects a bare `object` with a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from pydantic import BaseModel


# A dimension a GPU counts against: ("company",), ("type", cluster, gpu_type), ("provider", name), or
# ("free", cluster, gpu_type) for the free GPUs of regular nodes that new replicas would land on.
Dim = tuple[str, ...]
COMPANY: Dim = ("company",)


class Frozen:
    """Base of the frozen dataclasses of every module the image compiles (setup.py): they pickle
    and copy through their constructor.

    `pickle` and `copy` restore an object field by field by default, and a compiled frozen
    dataclass refuses the assignment, so a Simulation sent to a worker process, or a state copied,
    would fail in the image and work from the sources. Rebuilt from its init fields
    (`__match_args__`, which dataclasses generate in field order) it works both ways, and the
    derived fields (`PoolSpec.key`) are computed again.

    The classes built for every workload at every reconcile (the policy context and recommendation,
    the behavior's result, the placement, the grant, the decision...) also write their own
    `__init__`, one `object.__setattr__` per field. The generated one is Python code even in a
    compiled module, and a compiled `__init__` turns those calls into direct field writes: a
    14-field frozen class builds in 30 ns instead of 1.5 us, and the full reconcile at 10,000
    workloads takes about a quarter less CPU (benchmarks/engine.py). Interpreted, both cost the same.
    Classes with a default_factory field (`WorkloadState`, the behavior's input) keep the generated
    one: a hand-written default would be one mapping shared by every object, and the read-only
    one the standard library has (MappingProxyType) does not pickle.

    tests/engine/test_frozen.py checks that every frozen dataclass of the compiled modules derives
    from this class, and that every hand-written `__init__` takes the class's fields, in their
    order, with their defaults."""

    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]]

    def __reduce__(self) -> tuple[type[Frozen], tuple[object, ...]]:
        return (type(self), tuple(getattr(self, name) for name in self.__match_args__))


class NodeClass(StrEnum):
    REGULAR = "regular"
    VIRTUAL = "virtual"


class MetricType(StrEnum):
    """KEDA/HPA target types: per replica (AverageValue) or for the whole workload (Value)."""

    AVERAGE_VALUE = "AverageValue"
    VALUE = "Value"


class SelectPolicy(StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


class RateKind(StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class FallbackBehavior(StrEnum):
    HOLD = "hold"
    STATIC = "static"
    CURRENT_IF_HIGHER = "currentIfHigher"


@dataclass(frozen=True, slots=True)
class PoolSpec(Frozen):
    """One Deployment of a workload, pinned to one node class and GPU type."""

    deployment: str
    namespace: str
    node_class: NodeClass
    gpu_type: str
    cluster: str
    gpus_per_replica: int = 1
    cost_per_gpu_hour: float = 0.0
    startup_seconds: float = 60.0
    # The slow tail of startup (virtual providers: minutes to tens of minutes); None = no tail known.
    startup_p95_seconds: float | None = None
    relative_throughput: float = 1.0
    max_replicas: int | None = None
    pending_timeout_seconds: float = 300.0
    provider: str | None = None
    # `namespace/deployment`: how snapshots, plans and states name this pool. Stored, not a
    # property, because the engine looks it up for every pool on every reconcile.
    key: str = field(init=False, repr=False, compare=False)
    # Every dimension a replica counts under, capped or not: the company, its cluster's GPU type
    # (virtual pools too: a VKS per-type parallelism limit counts every GPU of the type), its
    # provider. The one rule the limits stage and the dashboards share (`placement.usage_dims`);
    # stored for the same reason as `key`.
    usage_dims: tuple[Dim, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.deployment}")
        dims: tuple[Dim, ...] = (COMPANY, ("type", self.cluster, self.gpu_type))
        if self.provider is not None:
            dims = (*dims, ("provider", self.provider))
        object.__setattr__(self, "usage_dims", dims)

    @property
    def gpus_per_unit(self) -> float:
        """GPUs per replica unit of throughput: what a unit of capacity costs in GPU-hours."""
        return self.gpus_per_replica / self.relative_throughput

    @property
    def cost_per_unit_hour(self) -> float:
        """Dollars per hour of one replica unit of throughput: what a unit of capacity costs."""
        return self.gpus_per_unit * self.cost_per_gpu_hour


@dataclass(frozen=True, slots=True)
class TriggerSpec(Frozen):
    """One signal source of a workload. The engine only needs the target, the target type and the
    activation threshold. `options` is what the trigger's source reads (queue, query, ...): the
    validated options object of `config.models` (`RabbitMQOptions`, `PrometheusOptions`), opaque
    here, since the engine never looks inside and must not know the policy-file models; the sources
    and the simulator narrow it by type. None for a trigger that no source reads (engine tests)."""

    name: str
    type: str
    target: float
    metric_type: MetricType = MetricType.AVERAGE_VALUE
    activation: float = 0.0
    options: object | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class RatePolicy(Frozen):
    kind: RateKind
    value: int
    period_seconds: float


@dataclass(frozen=True, slots=True)
class ScalingRules(Frozen):
    """One direction of the HPA `behavior` block."""

    stabilization_seconds: float
    policies: tuple[RatePolicy, ...]
    select: SelectPolicy = SelectPolicy.MAX


# Kubernetes HPA defaults (autoscaling/v2): see ../shared/REFERENCE.md.
DEFAULT_SCALE_UP = ScalingRules(
    stabilization_seconds=0.0,
    policies=(RatePolicy(RateKind.PODS, 4, 15.0), RatePolicy(RateKind.PERCENT, 100, 15.0)),
)
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_seconds=300.0,
    policies=(RatePolicy(RateKind.PERCENT, 100, 15.0),),
)


@dataclass(frozen=True, slots=True)
class BehaviorSpec(Frozen):
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    # Time since the workload was last active before it may go to zero (KEDA cooldownPeriod).
    cooldown_seconds: float = 300.0
    # The policy's recommendation is final (only the missing-data guard and min/max apply). A policy
    # class with `owns_behavior = True` (one that emulates a whole controller of its own, such as
    # the KEDA + HPA baseline) gets this whatever the file says.
    passthrough: bool = False


@dataclass(frozen=True, slots=True)
class FallbackSpec(Frozen):
    """What to do once a trigger has failed `failure_threshold` times in a row."""

    failure_threshold: int = 3
    behavior: FallbackBehavior = FallbackBehavior.HOLD
    replicas: int = 0


@dataclass(frozen=True, slots=True)
class WorkloadSpec(Frozen):
    name: str
    namespace: str
    pools: tuple[PoolSpec, ...]
    triggers: tuple[TriggerSpec, ...]
    policy: Policy = field(compare=False, hash=False)
    min_replicas: int = 0
    max_replicas: int = 100
    priority: int = 0
    weight: float = 1.0
    behavior: BehaviorSpec = BehaviorSpec()
    fallback: FallbackSpec = FallbackSpec()
    # How loaded each pod is, for idle-first scale-in (`config.models.PodLoadOptions`): opaque here,
    # like `TriggerSpec.options`; the engine decides how many replicas go, never which. None: off.
    pod_load: object | None = field(default=None, compare=False, hash=False)
    # Move running replicas to an earlier (preferred) pool when it has room, a bounded step at a
    # time (`engine.placement`); off: a running replica stays where it is.
    rebalance: bool = False


@dataclass(frozen=True, slots=True)
class Limits(Frozen):
    """Parallelism limits: the company's GPU cap, per (cluster, GPU type) caps and provider quotas.
    None or an absent key means unlimited."""

    company_max_gpus: int | None = None
    cluster_gpu_types: Mapping[tuple[str, str], int] = field(default_factory=dict)
    provider_max_gpus: Mapping[str, int] = field(default_factory=dict)


UNLIMITED = Limits()


# ----------------------------------------------------------------------------------------------
# What the edges observed


@dataclass(frozen=True, slots=True)
class Reading(Frozen):
    """One observed value of one trigger. `value is None` means the read failed (`error` says why);
    a failed reading is never the same as zero."""

    value: float | None
    at: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class PoolStatus(Frozen):
    """One pool's Deployment as the cluster shows it now."""

    spec_replicas: int
    ready: int = 0
    # Creation times of pods not yet bound to a node (Unschedulable). A pod bound to a node, regular or
    # virtual, that is still pulling or provisioning is starting, not pending: it counts in
    # spec_replicas - ready, and its wait is the pool's startup time, not its pending timeout.
    pending_since: tuple[float, ...] = ()
    # Set when the pool is paused by annotation: the engine leaves it exactly as it is.
    paused: bool = False
    # Pods removed from the Deployment but not yet gone (finishing in-flight work): they hold GPUs
    # outside spec_replicas, so the caps must count them until they exit.
    terminating: int = 0
    # Pods beyond spec_replicas that are not terminating yet: a rollout's surge pods, or pods a
    # scale-down has not removed yet. They hold GPUs too; the caps count every pod, not the spec.
    surplus: int = 0


@dataclass(frozen=True, slots=True)
class UnmanagedPool(Frozen):
    """GPUs held by a Deployment no workload manages any more (its workload left the policy files,
    or its pool was renamed): they count against every cap the pool counted against until they
    are gone, or a hot reload could provision past the caps."""

    pool: PoolSpec
    replicas: int  # pods holding GPUs, terminating ones included


@dataclass(frozen=True, slots=True)
class ClusterSnapshot(Frozen):
    pools: Mapping[str, PoolStatus]
    # Free `nvidia.com/gpu` on regular nodes per (cluster, GPU type). Absent: not known, no bound.
    free_gpus: Mapping[tuple[str, str], int] = field(default_factory=dict)
    unmanaged: tuple[UnmanagedPool, ...] = ()
    # Pool key -> the previous reconcile's action on it that did not land (`Outcome.not_landed`):
    # the controller carries the actuator's outcomes into the next decision as data, so its
    # explanation says why the pool is not at the size planned last time. Sizes still come from
    # `pools` alone (the cluster view counts only writes the API server accepted).
    failed_writes: Mapping[str, ActionResult] = field(default_factory=dict)
    # Cluster -> since when (engine time) it cannot be reached: its pools come in as last seen, and
    # the engine holds them exactly as if paused (nothing can be written there, and their GPUs,
    # pending and terminating pods included, keep counting against the caps) and says why.
    unreachable: Mapping[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# What the engine decided


class ActionKind(StrEnum):
    """Why the engine resized a pool, as a small fixed set (a metric label must not carry the
    engine's free-text reasons: one series per distinct sentence). Decided by the engine, which
    knows it; telemetry reports it and derives nothing."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    SPILL = "spill"  # replicas moved past a preferred pool: it is full, blocked or its pods stuck Pending
    CAP = "cap"  # the limits stage granted less than the workload wanted (company, type or provider cap)
    FALLBACK = "fallback"  # set by the fallback: a trigger failed failureThreshold times in a row
    COOLDOWN = "cooldown"  # scale to zero after the cooldown
    # A migration step to a preferred pool (`WorkloadSpec.rebalance`): replicas added there, or the
    # later pool's replicas their Ready capacity replaced
    REBALANCE = "rebalance"


@dataclass(frozen=True, slots=True)
class ScaleAction(Frozen):
    pool: str  # PoolSpec.key
    workload: str
    from_replicas: int
    to_replicas: int
    reason: str
    # None only for an action built outside the engine (by hand in a test or a tool): it is then
    # reported by its direction alone.
    kind: ActionKind | None = None

    @property
    def is_scale_down(self) -> bool:
        return self.to_replicas < self.from_replicas


@dataclass(frozen=True, slots=True)
class Decision(Frozen):
    """Why a workload's pools have the sizes the plan gives them: one line per stage."""

    workload: str
    at: float
    recommended_units: float | None
    desired_units: int
    granted_units: float
    targets: Mapping[str, int]
    steps: tuple[str, ...]
    failed_triggers: tuple[str, ...] = ()
    # The fallback set the size (a trigger failed `failureThreshold` times in a row); a failed
    # trigger below the threshold leaves the decision to the policy.
    fallback: bool = False

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        workload: str,
        at: float,
        recommended_units: float | None,
        desired_units: int,
        granted_units: float,
        targets: Mapping[str, int],
        steps: tuple[str, ...],
        failed_triggers: tuple[str, ...] = (),
        fallback: bool = False,
    ) -> None:
        object.__setattr__(self, "workload", workload)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "recommended_units", recommended_units)
        object.__setattr__(self, "desired_units", desired_units)
        object.__setattr__(self, "granted_units", granted_units)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "failed_triggers", failed_triggers)
        object.__setattr__(self, "fallback", fallback)

    def explain(self) -> str:
        lines = [f"{self.workload} at t={self.at:.1f}s:"]
        lines += [f"  - {s}" for s in self.steps]
        sizes = ", ".join(f"{k}={v}" for k, v in self.targets.items())
        lines.append(f"  => {sizes}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class GpuUsage(Frozen):
    """GPUs under one dimension: ("company",), ("type", cluster, gpu_type) or ("provider", name)."""

    held: int  # every pod now (spec, surplus, terminating) and Deployments no longer managed
    granted: int  # what the plan's targets will hold, with the pods still on their way out
    cap: int | None  # None: no cap on this dimension


@dataclass(frozen=True, slots=True)
class Plan(Frozen):
    """Scale-downs come before scale-ups so that freed GPUs exist before they are claimed again.
    `usage`: the GPUs the limits stage counted under each dimension, as it counted them (the
    dashboards report this, never a count of their own)."""

    actions: tuple[ScaleAction, ...]
    decisions: Mapping[str, Decision]
    usage: Mapping[tuple[str, ...], GpuUsage] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# What became of the plan


class Outcome(StrEnum):
    """What the edge that carries plans out (`kube.actuator`, the dry run) did with one action. A
    fixed set: it is a metric label (`autoscaler_scale_actions_total{outcome}`)."""

    SCALED = "scaled"  # written: the API server accepted the new spec.replicas
    UNCHANGED = "unchanged"  # already at the target: nothing written
    DRY_RUN = "dry-run"  # not written anywhere: a dry run
    NOT_LEADER = "not-leader"  # this replica does not lead (or stopped leading mid-plan)
    PAUSED = "paused"  # the Deployment is paused by annotation
    STALE = "stale"  # resized by someone else since the snapshot: left for the next reconcile
    CONFLICT = "conflict"  # 409 Conflict on every attempt: others kept writing the Deployment
    FAILED = "failed"  # refused by the API server (status in the detail) or unreachable, after retries
    SKIPPED = "skipped"  # a scale-up held back after a failed scale-down

    @property
    def not_landed(self) -> bool:
        """The engine wanted the write and nothing decided against it: the write itself went wrong
        (or was held back because another did), so the next decision should say so."""
        return self in _NOT_LANDED


_NOT_LANDED = frozenset({Outcome.CONFLICT, Outcome.FAILED, Outcome.SKIPPED})


@dataclass(frozen=True, slots=True)
class ActionResult(Frozen):
    """One action of a plan and what became of it."""

    action: ScaleAction
    outcome: Outcome
    detail: str = ""  # why, for the log and `explain` (an API error's status and reason, say)
    writes: int = 0  # scale requests sent for it (retries included)

    def describe(self) -> str:
        a = self.action
        said = f": {self.detail}" if self.detail else ""
        return f"{a.pool} {a.from_replicas}->{a.to_replicas} {self.outcome}{said}"


# ----------------------------------------------------------------------------------------------
# What the engine remembers between calls


@dataclass(frozen=True, slots=True)
class WorkloadState(Frozen):
    # (time, desired units) recorded at each reconcile, for the stabilization windows.
    recommendations: tuple[tuple[float, int], ...] = ()
    # (time, change in units) of each scale event, for the rate policies' periods.
    scale_events: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None
    # Consecutive failures per trigger name.
    failures: Mapping[str, int] = field(default_factory=dict)
    # Opaque memory a policy keeps between calls (e.g. a rate forecast).
    policy_memory: object | None = None
    # Pool key -> time until which the pool takes no new replicas (its pods sat Pending too long).
    blocked_until: Mapping[str, float] = field(default_factory=dict)
    # Units the behavior stage last settled on; the "current" of the next HPA step.
    last_desired: int | None = None
    # Trigger -> `Reading.at` of the last failed reading counted in `failures`: reconciles can
    # outnumber polls, and the same failed poll seen twice is one failure, not two.
    failure_seen: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineState(Frozen):
    workloads: Mapping[str, WorkloadState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reconciled(Frozen):
    """One reconcile as its observers are told it (telemetry, the KEDA external scaler): what it
    got, the plan it returned, its wall time, and what the actuator did with each action.
    `outcomes` None: every action was written (the simulator, whose cluster obeys every plan); empty
    when the plan had none or the actuator raised. `now` is the engine's clock."""

    now: float
    workloads: Sequence[WorkloadSpec]
    limits: Limits
    snapshot: ClusterSnapshot
    readings: Mapping[str, Mapping[str, Reading]]
    plan: Plan
    duration_seconds: float
    outcomes: Sequence[ActionResult] | None = None


# ----------------------------------------------------------------------------------------------
# The policy contract (`engine.policy` is where policies import it from)


@dataclass(frozen=True, slots=True)
class PolicyContext(Frozen):
    workload: WorkloadSpec
    # Valid readings only, by trigger name. A failed trigger is in `failed`, never here as 0.
    values: Mapping[str, float]
    failed: frozenset[str]
    # Capacity the pools are asked for now, and the part of it that is ready, in replica units.
    current_units: float
    ready_units: float
    # Startup time (median, seconds) of the pool new replicas would go to first.
    startup_seconds: float
    now: float
    memory: object | None = None
    # Pods per pool of `workload.pools`, in that order: asked for now, and ready. For controllers that
    # count pods rather than capacity (the HPA, Knative's KPA); empty when the caller gives none.
    pool_replicas: tuple[int, ...] = ()
    pool_ready: tuple[int, ...] = ()
    # New pods each pool could take now as far as this workload can tell: its maxReplicas, a pause or
    # a pending-timeout block, the free GPUs of regular nodes less its own unscheduled pods. None: no
    # bound known. Caps shared with other workloads are the limits stage's and not counted here.
    pool_room: tuple[int | None, ...] = ()

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        workload: WorkloadSpec,
        values: Mapping[str, float],
        failed: frozenset[str],
        current_units: float,
        ready_units: float,
        startup_seconds: float,
        now: float,
        memory: object | None = None,
        pool_replicas: tuple[int, ...] = (),
        pool_ready: tuple[int, ...] = (),
        pool_room: tuple[int | None, ...] = (),
    ) -> None:
        object.__setattr__(self, "workload", workload)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "failed", failed)
        object.__setattr__(self, "current_units", current_units)
        object.__setattr__(self, "ready_units", ready_units)
        object.__setattr__(self, "startup_seconds", startup_seconds)
        object.__setattr__(self, "now", now)
        object.__setattr__(self, "memory", memory)
        object.__setattr__(self, "pool_replicas", pool_replicas)
        object.__setattr__(self, "pool_ready", pool_ready)
        object.__setattr__(self, "pool_room", pool_room)


@dataclass(frozen=True, slots=True)
class Recommendation(Frozen):
    """`units is None`: the policy cannot tell (its inputs failed); the engine then holds.

    `wake_at`, for the incremental engine (`engine.incremental`): until when this recommendation and
    this memory stay what the policy would return with the same inputs (the `PolicyContext` less its
    `now` and `memory`). None, the default: no such promise, the policy runs at every reconcile.
    math.inf: until an input changes. A time: the same until then. A policy that gives a time
    promises more: called again at any time t before it, with the same inputs and this memory, it
    returns the memory it would have reached had it been called at every reconcile up to t (the
    engine replays one such call to catch a skipped workload up before it recomputes it)."""

    units: float | None
    reason: str
    memory: object | None = None
    wake_at: float | None = None

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self, units: float | None, reason: str, memory: object | None = None, wake_at: float | None = None
    ) -> None:
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "memory", memory)
        object.__setattr__(self, "wake_at", wake_at)


class Policy(Protocol):
    """What the registry builds from a policy file's `policy:` block."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    # A policy may also set `owns_behavior: ClassVar[bool] = True` when it emulates a controller's
    # own smoothing and rate limits (the KEDA + HPA baseline); the behavior stage then passes its
    # recommendation through (see BehaviorSpec.passthrough).
    #
    # A policy may also set `reads_pool_room: ClassVar[bool] = False` when it never looks at
    # `PolicyContext.pool_room` (True, or no such attribute: it may). The incremental engine then
    # leaves its workload alone when only the free GPU count moves (it moves with every pod
    # scheduled anywhere), while no pool's room opens or closes (`reconcile.free_gpus_read`).
    #
    # A policy may also define `triggers_read(self, workload) -> frozenset[str] | None`: the triggers
    # its recommendation depends on (None, or no such method: all of them). Only those triggers can
    # hold the workload when they fail or make it active: a trigger kept for dashboards only (a TTFT
    # query beside a queue policy) must not freeze scaling while its exporter is down.
    #
    # A policy that keeps `Recommendation.memory` may also define the optional pair
    # `dump_memory(memory) -> JSON-able` and `load_memory(data) -> memory` (raising on data it did not
    # write), so that a new leader resumes with the old leader's memory (`engine.statecodec`); without
    # them its memory is not carried over and the policy starts fresh in the new leader, which the
    # controller logs.

    def recommend(self, ctx: PolicyContext) -> Recommendation: ...
