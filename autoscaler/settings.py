"""The operator's settings, read once at start from `AUTOSCALER_*` environment variables.

These are the knobs of the autoscaler itself (where policies live, which cluster it runs in, ports,
leader election), not of any workload: workloads are described by policy files (`autoscaler.config`).
No secret is ever a field here, so printing or logging a `Settings` is safe: a policy names the
environment variable that holds its secret (`connectionFromEnv`, `tokenFromEnv`) and the source
reads it at connect time. Callers: `config.validate` (allowed modules, cluster name for
`autoscaler validate`), the live controller and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Lists arrive from the environment as `a,b` (what people type) or as JSON (what tools write).
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOSCALER_", frozen=True, extra="ignore")

    policy_dir: Path = Field(Path("/etc/gpu-autoscaler/policies"), description="policy files, hot-reloaded")
    allowed_policy_modules: CommaList = Field(
        default_factory=list, description="modules `policy: {python: module:Class}` may name"
    )
    cluster_name: str = Field("default", min_length=1, description="cluster of pools that name none")
    namespaces: CommaList = Field(default_factory=list, description="namespaces to watch; empty: all")
    resync_seconds: float = Field(30.0, gt=0, description="safety-net reconcile period")
    metrics_port: int = Field(9102, ge=1, le=65535)
    dry_run: bool = Field(False, description="decide and log, but never resize")
    log_format: Literal["json", "text"] = "json"
    leader_election: bool = True

    @field_validator("allowed_policy_modules", "namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
