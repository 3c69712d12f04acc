"""`autoscaler validate` and `autoscaler schema`: the policy-file checks as commands.

`validate_main` loads the given files with the operator's settings (allowed policy modules, cluster
name) so it judges them exactly as the controller would, prints each problem as
`file:line: field: message` on stdout, each warning (a setting with no effect, which does not fail
the check) as `file:line: field: warning: message` on stderr, and a one-line summary on stderr.
`schema_main` prints the JSON Schema of policy documents for editors (yaml-language-server and the
like). Callers: `autoscaler.cli`.
"""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError

from autoscaler.config import load_config
from autoscaler.config.access import SecretAccess
from autoscaler.config.models import json_schema
from autoscaler.engine.types import UNLIMITED, Limits
from autoscaler.settings import Settings


def describe_limits(limits: Limits) -> str:
    if limits == UNLIMITED:
        return "none (unlimited)"
    parts: list[str] = []
    if limits.company_max_gpus is not None:
        parts.append(f"company {limits.company_max_gpus} GPUs")
    by_cluster: dict[str, list[str]] = {}
    for (cluster, gpu_type), count in sorted(limits.cluster_gpu_types.items()):
        by_cluster.setdefault(cluster, []).append(f"{gpu_type} {count}")
    parts.extend(f"{cluster}: {', '.join(caps)}" for cluster, caps in by_cluster.items())
    if limits.provider_max_gpus:
        quotas = ", ".join(f"{name} {count}" for name, count in sorted(limits.provider_max_gpus.items()))
        parts.append(f"providers: {quotas}")
    return "; ".join(parts) or "none (unlimited)"


def validate_main(paths: list[str]) -> int:
    """Exit status 0 when every file is clean, 1 when anything is wrong."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = "AUTOSCALER_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"{name}: {err['msg']}", file=sys.stderr)
        print("the environment's AUTOSCALER_* settings are invalid; nothing was validated", file=sys.stderr)
        return 1
    config = load_config(
        paths, settings.allowed_policy_modules, settings.cluster_name, SecretAccess.from_settings(settings)
    )
    for error in config.errors:
        print(error)
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    if config.errors:
        files = {error.file for error in config.errors}
        print(f"{len(config.errors)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
    print(
        f"ok: {len(config.workloads)} workload(s) in {len(config.files)} file(s), "
        f"limits: {describe_limits(config.limits)}{warned}",
        file=sys.stderr,
    )
    return 0


def schema_main() -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
