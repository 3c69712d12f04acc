"""Policy files in, engine dataclasses out: the one entry point is `load_config`.

`load_config` reads policy files (or directories of them), validates every document against the
pydantic models, runs the checks that span documents, and compiles what passed into the engine's
frozen `WorkloadSpec`s and `Limits`. It reports every problem it can find in one pass as located
`ConfigError`s and never raises for bad input. Callers: `autoscaler validate` (`config.validate`),
the simulator, and the live controller, which keeps its last good config while `errors` is non-empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler.config.access import SecretAccess
from autoscaler.config.compile import ParsedDocument, compile_documents
from autoscaler.config.loader import ConfigError, ConfigWarning, SourceDocument, parse_document, read_sources
from autoscaler.config.models import ScalingPolicyDocument
from autoscaler.engine.types import Limits, WorkloadSpec

__all__ = ["ConfigError", "ConfigWarning", "LoadedConfig", "load_config"]


@dataclass(frozen=True)
class LoadedConfig:
    """The outcome of reading policy files. With errors, `workloads` holds only the workloads that
    passed every check; whether to use them is the caller's decision."""

    workloads: tuple[WorkloadSpec, ...]
    limits: Limits
    errors: tuple[ConfigError, ...]
    files: tuple[str, ...]
    # How many non-empty documents each file held (hot reload compares it with the running config).
    documents: Mapping[str, int] = field(default_factory=dict)
    # Settings that have no effect (a policy ignores them): worth saying, never a reason to refuse.
    warnings: tuple[ConfigWarning, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def load_config(
    paths: Sequence[str | Path],
    allowed_modules: Sequence[str] = (),
    default_cluster: str = "default",
    secret_access: SecretAccess | None = None,
) -> LoadedConfig:
    """Read, validate and compile policy files.

    `paths`: files, or directories whose `*.yaml`/`*.yml` are read in name order.
    `allowed_modules`: modules a `policy: {python: module:Class}` may name (the operator's settings).
    `default_cluster`: the cluster of a pool that names none, when ParallelismLimits does not settle it.
    `secret_access`: when given (`autoscaler validate`), triggers naming environment variables or
    credentialed servers the settings do not allow are errors; the live sources refuse them anyway.
    """
    files, sources, errors = read_sources(paths)
    parsed: list[ParsedDocument] = []
    documents = dict.fromkeys(files, 0)
    for source in sources:
        documents[source.file] += 1
        errors.extend(source.problems)
        model, document_errors = parse_document(source)
        errors.extend(document_errors)
        if model is not None:
            parsed.append(ParsedDocument(source, model, clean=not source.problems))
            if secret_access is not None and isinstance(model, ScalingPolicyDocument):
                errors.extend(_refused_secrets(source, model, secret_access))
    workloads, limits, semantic_errors, warnings = compile_documents(parsed, allowed_modules, default_cluster)
    errors.extend(semantic_errors)
    # File order, then line: the order a person reads the files in. Path-level errors come first.
    order = {file: i for i, file in enumerate(files)}
    errors.sort(key=lambda e: (order.get(e.file, -1), e.line))
    warnings.sort(key=lambda w: (order.get(w.file, -1), w.line))
    return LoadedConfig(tuple(workloads), limits, tuple(errors), tuple(files), documents, tuple(warnings))


def _refused_secrets(
    source: SourceDocument, model: ScalingPolicyDocument, access: SecretAccess
) -> list[ConfigError]:
    errors = [
        source.error(("spec", "triggers", i, option), message)
        for i, trigger in enumerate(model.spec.triggers)
        for option, message in access.trigger_refusals(trigger.type, trigger.model_dump(by_alias=True))
    ]
    # The pod-load reader queries Prometheus with the same credentials rules as a trigger.
    pod_load = model.spec.scale_in.pod_load
    if pod_load is not None:
        errors.extend(
            source.error(("spec", "scaleIn", "podLoad", option), message)
            for option, message in access.trigger_refusals(pod_load.type, pod_load.model_dump(by_alias=True))
        )
    return errors
