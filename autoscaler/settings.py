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
import re
import socket
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Lists arrive from the environment as `a,b` (what people type) or as JSON (what tools write).
CommaList = Annotated[list[str], NoDecode]

# The variables the shipped Deployment fills from its Secret, each bound to the one option meant to
# read it. A connection URL carries its own destination, so reading it as `connectionFromEnv` sends
# it nowhere else; the Prometheus token goes only where `sources.access` lets credentials go.
DEFAULT_ALLOWED_SECRET_ENV = (
    "RABBITMQ_URL:connectionFromEnv",
    "RABBITMQ_MANAGEMENT_URL:connectionFromEnv",
    "PROMETHEUS_TOKEN:tokenFromEnv",
)
_SECRET_ENV_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:[a-z][A-Za-z0-9]*FromEnv")


class MemberCluster(BaseModel):
    """One cluster `autoscaler run` manages besides (or as) its home cluster: `name` is what policy
    files call it (a pool's `cluster`), and the kubeconfig file and/or context say how to reach it
    (typically a file mounted from a Secret holding a member ServiceAccount's token). Neither, for
    the home cluster only: the same resolution as `kubeconfig` (in-cluster in a pod)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    kubeconfig: str | None = Field(None, min_length=1)
    context: str | None = Field(None, min_length=1)


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
    # Every address by default: in a pod, Prometheus scrapes the pod IP and the kubelet probes it,
    # and the base's NetworkPolicy limits who may connect. Outside a cluster (a dry run on a laptop)
    # 127.0.0.1 keeps /metrics to the machine itself.
    metrics_bind_address: IPvAnyAddress = Field(
        IPv4Address("0.0.0.0"), description="IP address /metrics, /healthz and /readyz listen on"
    )
    # KEDA's external scaler gRPC API (`autoscaler.external`), off unless a port is given. Every
    # address once on, like /metrics: KEDA's operator connects to the pod through a Service.
    external_scaler_port: int | None = Field(
        None, ge=1, le=65535, description="gRPC port of the KEDA external scaler; unset: not served"
    )
    external_scaler_bind_address: IPvAnyAddress = Field(
        IPv4Address("0.0.0.0"), description="IP address the KEDA external scaler listens on"
    )
    dry_run: bool = Field(False, description="decide and log, but never resize")
    log_format: Literal["json", "text"] = "json"
    leader_election: bool = True
    prometheus_url: str | None = Field(
        None, description="Prometheus for triggers without serverAddress (no credentials in the URL)"
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig file; unset: in-cluster config in a pod, else $KUBECONFIG or ~/.kube"
    )
    # One company GPU budget over several clusters: the home cluster (`cluster_name`, reached through
    # `kubeconfig`, where the Lease and the leader live) and these. Empty: the home cluster alone.
    clusters: Annotated[list[MemberCluster], NoDecode] = Field(
        default_factory=list,
        description="member clusters, as JSON or the path of a YAML/JSON file: a list of "
        "{name, kubeconfig, context}; the home cluster (cluster_name) may be listed to say how to reach it",
    )
    # From the Downward API (metadata.name / metadata.namespace) in the Deployment: the leader
    # election's identity and the Lease's namespace.
    pod_name: str = Field(default_factory=socket.gethostname, min_length=1)
    pod_namespace: str | None = Field(
        None, description="namespace of the Lease; unset: the service account's namespace, else default"
    )
    lease_name: str = Field("gpu-autoscaler", min_length=1)
    lease_duration_seconds: float = Field(15.0, gt=0)
    lease_renew_deadline_seconds: float = Field(10.0, gt=0)
    lease_retry_seconds: float = Field(2.0, gt=0)
    policy_reload_seconds: float = Field(5.0, gt=0, description="how often policy files are checked")
    gpu_type_label: str = Field(
        "nvidia.com/gpu.product", min_length=1, description="node label naming the GPU"
    )
    cache_sync_timeout_seconds: float = Field(60.0, gt=0, description="first list of the watch cache")
    # A policy file (a ConfigMap) names the variables its triggers read; this is the operator's
    # say on which they may name, so a ConfigMap edit cannot send another secret out.
    allowed_secret_env: CommaList = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_SECRET_ENV),
        description="environment variables triggers may read, each as VARIABLE:option "
        "(e.g. RABBITMQ_URL:connectionFromEnv): that variable, for that option only",
    )
    allowed_prometheus_hosts: CommaList = Field(
        default_factory=list,
        description="hosts (host or host:port) a Prometheus trigger's serverAddress may name besides "
        "prometheus_url's; empty: any, but credentials (authModes) go only to prometheus_url",
    )

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        # client-go's rule: a leader gives up (renew deadline) before anyone may take over (lease
        # duration), and retries several times within the deadline.
        if not self.lease_retry_seconds < self.lease_renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "lease timings need lease_retry_seconds < lease_renew_deadline_seconds < "
                "lease_duration_seconds"
            )
        return self

    @field_validator("clusters", mode="before")
    @classmethod
    def _clusters_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        try:
            return yaml.safe_load(Path(text).read_text())
        except OSError as exc:
            raise ValueError(f"not a JSON list, nor a readable file: {exc}") from exc

    @model_validator(mode="after")
    def _members_reachable(self) -> Settings:
        seen: set[str] = set()
        for member in self.clusters:
            if member.name in seen:
                raise ValueError(f"cluster '{member.name}' is listed twice in clusters")
            seen.add(member.name)
            if member.name != self.cluster_name and member.kubeconfig is None and member.context is None:
                # In-cluster credentials reach the home cluster only: the member would be the home
                # cluster under another name, and its GPUs counted twice.
                raise ValueError(
                    f"cluster '{member.name}' needs a kubeconfig or a context: only the home cluster "
                    f"('{self.cluster_name}') is reached with the pod's own service account"
                )
        return self

    def members(self) -> list[MemberCluster]:
        """Every cluster to manage, the home cluster first (as listed, or through `kubeconfig`)."""
        home = next((m for m in self.clusters if m.name == self.cluster_name), None)
        if home is None or (home.kubeconfig is None and home.context is None):
            home = MemberCluster(name=self.cluster_name, kubeconfig=self.kubeconfig)
        return [home, *(m for m in self.clusters if m.name != self.cluster_name)]

    @field_validator("prometheus_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # Settings are logged; a Prometheus password belongs in the env var a trigger names
        # (`tokenFromEnv` and friends), so a URL carrying one is refused rather than printed.
        if value is not None and urlsplit(value).password is not None:
            raise ValueError("no credentials in the URL: give them to the trigger through an env var")
        return value

    @field_validator("allowed_secret_env")
    @classmethod
    def _bound_to_an_option(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _SECRET_ENV_ENTRY.fullmatch(entry):
                raise ValueError(
                    f"'{entry}' is not VARIABLE:option (e.g. RABBITMQ_URL:connectionFromEnv, "
                    "PROMETHEUS_TOKEN:tokenFromEnv): each variable is allowed for one option"
                )
        return value

    @field_validator(
        "allowed_policy_modules",
        "namespaces",
        "allowed_secret_env",
        "allowed_prometheus_hosts",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
