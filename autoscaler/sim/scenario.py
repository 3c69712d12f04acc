"""Simulation scenarios: the YAML that says what to replay against which cluster, compiled to a `Simulation`.

A scenario names the policy files (the same ones the live controller reads), a trace and a service
model per workload, the regular node groups with their GPU counts, the virtual providers' behaviour,
and defaults for the run (seed, tick, speed, scale, window). The command line may override most of
it (`Overrides`). Every problem, in the scenario or in the policy files, comes back as a
`file:line: field: message` line in a `ScenarioError`; nothing half-built is returned.
Callers: `sim.cli` (`autoscaler simulate`) and the tests.

    apiVersion: gpu-autoscaler/v1alpha1
    kind: SimulationScenario
    policies: [default-policies.yaml]          # relative to this file
    seed: 1
    workloads:
      llm-chat:
        trace: conv                            # code | conv | a CSV path | a list of them
        serviceModel: {baseSeconds: 0.1, prefillSecondsPerToken: 0.0004, decodeSecondsPerToken: 0.03}
        concurrency: 8
    nodeGroups: [{cluster: vks-1, gpuType: A100, gpus: 8}]
    providers: {salad: {interruptionsPerHour: 0.2}}
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from autoscaler.config import load_config
from autoscaler.config.loader import ConfigError, SourceDocument, parse_text, translate_validation_error
from autoscaler.engine.types import NodeClass, WorkloadSpec
from autoscaler.sim.cluster import ProviderModel, ServiceModel, WorkloadModel
from autoscaler.sim.runner import DEFAULT_SLA_SECONDS, Simulation
from autoscaler.sim.sources import SourceError, TriggerOutage, build_sources
from autoscaler.sim.trace import BUNDLED, TraceError, load_trace, merge

API_VERSION = "gpu-autoscaler/v1alpha1"
KIND = "SimulationScenario"


class ScenarioError(Exception):
    """Everything wrong with a scenario and its policy files, one `file:line: field: message` each."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = tuple(errors)


class _Model(BaseModel):
    # The policy files' conventions: camelCase in YAML, unknown fields are errors, no coercion.
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, strict=True, allow_inf_nan=False
    )


TraceName = Annotated[str, Field(min_length=1)]


def _listed(value: object) -> object:
    """One trace is a list of one: the loader handles lists only, and errors name one field."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"must be code, conv, a CSV path or a list of them, not {value!r}")
    return value


class ServiceModelDoc(_Model):
    """Seconds one request holds one slot of a replica with relative throughput 1.0."""

    base_seconds: float = Field(ge=0)
    prefill_seconds_per_token: float = Field(ge=0)
    decode_seconds_per_token: float = Field(ge=0)


class WorkloadDoc(_Model):
    trace: Annotated[list[TraceName], BeforeValidator(_listed)] = Field(
        min_length=1,
        description="code, conv, or a CSV path relative to the scenario; a list of them is replayed "
        "into one queue (each derived with the run's window, speed and scale)",
    )
    service_model: ServiceModelDoc
    concurrency: int = Field(1, ge=1, description="requests one replica serves at once")
    sla: float | None = Field(None, gt=0, description="queue-wait SLA in seconds for the report")
    initial_replicas: dict[str, int] = Field(
        default_factory=dict,
        description="deployment -> replicas already running and ready when the replay starts",
    )


class NodeGroupDoc(_Model):
    cluster: str = Field(min_length=1)
    gpu_type: str = Field(min_length=1)
    gpus: int = Field(ge=0)


class ProviderDoc(_Model):
    interruptions_per_hour: float = Field(0.0, ge=0, description="per running replica")
    max_gpus: int | None = Field(None, ge=0, description="the provider's capacity; unlimited if absent")


class WindowDoc(_Model):
    start: float = Field(ge=0)
    end: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> WindowDoc:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:g} must be after start {self.start:g}")
        return self


class OutageDoc(_Model):
    workload: str
    trigger: str
    start: float = Field(ge=0)
    end: float = Field(gt=0)


class ScenarioDoc(_Model):
    api_version: Literal["gpu-autoscaler/v1alpha1"]
    kind: Literal["SimulationScenario"]
    metadata: dict[str, Any] = Field(default_factory=dict)
    policies: list[str] = Field(
        min_length=1, description="policy files or directories, relative to this file"
    )
    workloads: dict[str, WorkloadDoc] = Field(min_length=1)
    node_groups: list[NodeGroupDoc] = Field(default_factory=list)
    providers: dict[str, ProviderDoc] = Field(default_factory=dict)
    trigger_outages: list[OutageDoc] = Field(default_factory=list)
    seed: int = 0
    tick: float = Field(1.0, gt=0, description="seconds between reconciles (the queue poll interval)")
    speed: float = Field(1.0, gt=0)
    scale: float = Field(1.0, ge=0)
    window: WindowDoc | None = None
    max_drain_seconds: float = Field(3600.0, ge=0)


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line may change; None keeps the scenario's value."""

    policies: Sequence[str] | None = None
    traces: Mapping[str, str] = field(default_factory=dict)  # workload -> code | conv | path (from cwd)
    window: tuple[float, float] | None = None
    speed: float | None = None
    scale: float | None = None
    seed: int | None = None
    tick: float | None = None
    sla: float | None = None


def default_scenario_path() -> Path:
    return Path(str(resources.files("autoscaler.sim").joinpath("scenarios", "default.yaml")))


def load_scenario(path: str | Path, overrides: Overrides | None = None) -> Simulation:
    """Read, validate and compile a scenario. Raises ScenarioError listing every problem found."""
    o = overrides or Overrides()
    path = Path(path)
    source, doc = _read(path)
    base = path.parent

    policy_paths = list(o.policies) if o.policies is not None else [str(base / p) for p in doc.policies]
    loaded = load_config(policy_paths)
    errors = [str(e) for e in loaded.errors]
    if errors:
        raise ScenarioError(errors)
    workloads: tuple[WorkloadSpec, ...] = tuple(loaded.workloads)

    def at(loc: Sequence[str | int], message: str) -> str:
        return str(source.error(tuple(loc), message))

    names = {w.name for w in workloads}
    for name in doc.workloads:
        if name not in names:
            errors.append(
                at(("workloads", name), f"no policy file defines workload '{name}' (defined: {_list(names)})")
            )
    for w in workloads:
        if w.name not in doc.workloads:
            errors.append(
                at(("workloads",), f"workload '{w.name}' of the policies has no trace and service model here")
            )
    for name in o.traces:
        if name not in names:
            errors.append(f"--trace: no workload '{name}' (workloads: {_list(names)})")

    node_groups: dict[tuple[str, str], int] = {}
    for i, g in enumerate(doc.node_groups):
        key = (g.cluster, g.gpu_type)
        if key in node_groups:
            errors.append(
                at(("nodeGroups", i), f"a second node group for {g.gpu_type} in cluster {g.cluster}")
            )
        node_groups[key] = g.gpus
    for w in workloads:
        for p in w.pools:
            if p.node_class is NodeClass.REGULAR and (p.cluster, p.gpu_type) not in node_groups:
                errors.append(
                    at(
                        ("nodeGroups",),
                        f"pool {p.key} needs regular {p.gpu_type} nodes in cluster {p.cluster}; add "
                        f"{{cluster: {p.cluster}, gpuType: {p.gpu_type}, gpus: N}}",
                    )
                )

    window = o.window or ((doc.window.start, doc.window.end) if doc.window else None)
    speed = o.speed if o.speed is not None else doc.speed
    scale = o.scale if o.scale is not None else doc.scale
    seed = o.seed if o.seed is not None else doc.seed
    models: list[WorkloadModel] = []
    initial: dict[str, int] = {}
    for w in workloads:
        wdoc = doc.workloads.get(w.name)
        if wdoc is None:
            continue
        given = o.traces.get(w.name)
        # A bundled name as it is; a path in the file is relative to the scenario.
        sources = [given] if given is not None else [s if s in BUNDLED else str(base / s) for s in wdoc.trace]
        problem = None
        try:
            # The first part keeps the seed a single trace has, so a one-item list replays the same.
            trace = merge(
                [
                    load_trace(
                        source,
                        window=window,
                        speed=speed,
                        scale=scale,
                        seed=zlib.crc32((f"{seed}/{w.name}" + (f"/{i}" if i else "")).encode()),
                    )
                    for i, source in enumerate(sources)
                ]
            )
            if len(trace) == 0:
                problem = "no requests in the window" if window else "no requests"
        except (TraceError, ValueError) as exc:
            problem = str(exc)
        if problem is not None:
            errors.append(
                f"--trace {w.name}: {problem}" if given else at(("workloads", w.name, "trace"), problem)
            )
            continue
        pools_by_name = {p.deployment: p for p in w.pools}
        for deployment, n in wdoc.initial_replicas.items():
            if deployment not in pools_by_name:
                errors.append(
                    at(
                        ("workloads", w.name, "initialReplicas", deployment),
                        f"workload '{w.name}' has no pool '{deployment}' "
                        f"(pools: {_list(set(pools_by_name))})",
                    )
                )
            elif n < 0:
                errors.append(at(("workloads", w.name, "initialReplicas", deployment), "must be >= 0"))
            else:
                initial[pools_by_name[deployment].key] = n
        s = wdoc.service_model
        service = ServiceModel(s.base_seconds, s.prefill_seconds_per_token, s.decode_seconds_per_token)
        models.append(WorkloadModel(w.name, w.pools, trace, service, wdoc.concurrency))

    outages = tuple(TriggerOutage(d.workload, d.trigger, d.start, d.end) for d in doc.trigger_outages)
    try:
        # A workload whose trace failed above still gets its triggers checked, against no arrivals.
        arrivals = {w.name: np.zeros(0) for w in workloads} | {m.name: m.trace.arrival for m in models}
        build_sources(workloads, arrivals, outages)
    except SourceError as exc:
        errors += [at(("policies",), problem) for problem in exc.problems]
    if errors:
        raise ScenarioError(errors)

    sla = {w.name: _sla(w, doc.workloads[w.name], o.sla) for w in workloads}
    return Simulation(
        workloads=workloads,
        models=tuple(models),
        limits=loaded.limits,
        node_groups=node_groups,
        providers={
            name: ProviderModel(p.interruptions_per_hour, p.max_gpus) for name, p in doc.providers.items()
        },
        outages=outages,
        initial_replicas=initial,
        sla_seconds=sla,
        seed=seed,
        tick=o.tick if o.tick is not None else doc.tick,
        max_drain_seconds=doc.max_drain_seconds,
    )


def _read(path: Path) -> tuple[SourceDocument, ScenarioDoc]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ScenarioError(
            [str(ConfigError(file, 0, "path", f"cannot read: {exc.strerror or exc}"))]
        ) from exc
    docs, problems = parse_text(file, text)
    errors = [str(e) for e in problems] + [str(e) for d in docs for e in d.problems]
    if not errors and len(docs) != 1:
        errors.append(
            str(ConfigError(file, 1, "document", f"expected one {KIND} document, found {len(docs)}"))
        )
    if errors:
        raise ScenarioError(errors)
    source = docs[0]
    try:
        return source, ScenarioDoc.model_validate(source.data)
    except ValidationError as exc:
        raise ScenarioError(
            [str(e) for e in translate_validation_error(exc, source, ScenarioDoc, source.data)]
        ) from exc


def _sla(workload: WorkloadSpec, doc: WorkloadDoc, override: float | None) -> float:
    """--sla, else the scenario's, else the policy's own target (queue-sla's maxWaitSeconds), else 30 s."""
    if override is not None:
        return override
    if doc.sla is not None:
        return doc.sla
    policy_sla = getattr(workload.policy, "max_wait_seconds", None)
    if isinstance(policy_sla, int | float) and not isinstance(policy_sla, bool):
        return float(policy_sla)
    return DEFAULT_SLA_SECONDS


def _list(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"
