"""Compact, typed copies of the API objects the watch cache keeps.

The cache receives raw JSON (list items and watch events) and keeps only what the snapshot, the
actuator and the node classifier read, as frozen dataclasses: a fraction of the memory of the
client's models, no `Optional` chains at every read, and value equality, so the cache can tell a
change that matters (spec.replicas, a pod bound or readied) from one that does not (a status
heartbeat) and wake the control loop only for the former. `resource_version` is left out of the
equality for that reason. Callers: `kube.cache` (parsing), `kube.view`, `kube.nodes`,
`kube.actuator`.

Times are UNIX epoch seconds (wall clock), parsed from RFC 3339.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
PAUSED_ANNOTATION = "gpu-autoscaler/paused"
# Which pods a ReplicaSet removes first on scale-in (lower first); an int32 as a string.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

Raw = Mapping[str, Any]
_EMPTY: Mapping[str, str] = MappingProxyType({})


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_quantity(value: object) -> int:
    """Whole units of an extended resource (`nvidia.com/gpu` is an integer resource: "2", 2)."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return int(float(str(value)))


def _labels(meta: Raw, key: str) -> Mapping[str, str]:
    value = meta.get(key)
    return MappingProxyType(dict(value)) if value else _EMPTY


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str | None
    operator: str
    value: str | None
    effect: str | None


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str | None
    effect: str


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    namespace: str
    name: str
    uid: str
    spec_replicas: int
    ready_replicas: int
    available_replicas: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    # GPUs one pod of the template requests (the sum over its containers).
    gpus_per_pod: int
    resource_version: str = field(compare=False)
    # "namespace/name", made once here: the cache, the expectations and the actuator look it up for
    # every Deployment at every snapshot and event.
    key: str = field(compare=False, repr=False)

    @property
    def paused(self) -> bool:
        return self.annotations.get(PAUSED_ANNOTATION, "").strip().lower() == "true"

    @classmethod
    def from_raw(cls, raw: Raw) -> DeploymentInfo:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        template_spec = (spec.get("template") or {}).get("spec") or {}
        replicas = spec.get("replicas")
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        return cls(
            namespace=namespace,
            name=name,
            uid=meta.get("uid", ""),
            # An absent spec.replicas means 1 (the API default).
            spec_replicas=1 if replicas is None else int(replicas),
            ready_replicas=int(status.get("readyReplicas") or 0),
            available_replicas=int(status.get("availableReplicas") or 0),
            labels=_labels(meta, "labels"),
            annotations=_labels(meta, "annotations"),
            gpus_per_pod=_gpu_request(template_spec),
            resource_version=meta.get("resourceVersion", ""),
            key=f"{namespace}/{name}",
        )


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    # The Deployment that owns it through its ReplicaSet, "" for pods no Deployment owns.
    deployment: str
    node_name: str
    phase: str
    created: float
    deleted: float | None  # metadata.deletionTimestamp: terminating
    unschedulable: bool  # PodScheduled=False, reason Unschedulable
    ready: bool
    gpus: int
    resource_version: str = field(compare=False)
    # The pod's `DELETION_COST_ANNOTATION` as written (None: absent), for idle-first scale-in.
    deletion_cost: str | None = None
    # Every container reports a running state: a kubelet's own word. A Ready condition without it is
    # a provider's word at creation (SaladCloud's marks each pod Ready when it creates the container
    # group, minutes before an instance runs; see `kube.view`).
    running: bool = False

    @property
    def bound(self) -> bool:
        return bool(self.node_name)

    @property
    def terminal(self) -> bool:
        """Finished: holds no resources on its node any more."""
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_raw(cls, raw: Raw) -> PodInfo:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled") or {}
        ready = conditions.get("Ready") or {}
        containers = status.get("containerStatuses") or []
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            deployment=owner_deployment(meta),
            node_name=spec.get("nodeName") or "",
            phase=status.get("phase") or "Pending",
            created=parse_time(meta.get("creationTimestamp")) or 0.0,
            deleted=parse_time(meta.get("deletionTimestamp")),
            unschedulable=scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable",
            ready=ready.get("status") == "True",
            gpus=_gpu_request(spec),
            resource_version=meta.get("resourceVersion", ""),
            deletion_cost=(meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION),
            running=bool(containers) and all("running" in (c.get("state") or {}) for c in containers),
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    allocatable_gpus: int
    unschedulable: bool
    ready: bool
    resource_version: str = field(compare=False)

    @classmethod
    def from_raw(cls, raw: Raw) -> NodeInfo:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            name=meta.get("name", ""),
            labels=_labels(meta, "labels"),
            taints=tuple(
                Taint(t.get("key", ""), t.get("value"), t.get("effect", "")) for t in spec.get("taints") or []
            ),
            allocatable_gpus=parse_quantity((status.get("allocatable") or {}).get(GPU_RESOURCE)),
            unschedulable=bool(spec.get("unschedulable")),
            ready=conditions.get("Ready") == "True",
            resource_version=meta.get("resourceVersion", ""),
        )


def owner_deployment(meta: Raw) -> str:
    """The Deployment owning a pod, from its controller ownerReference.

    A Deployment's pods are owned by a ReplicaSet named `<deployment>-<pod-template-hash>`, and the
    pod carries the same hash in its `pod-template-hash` label, so cutting the label's value off the
    ReplicaSet name gives the Deployment's name exactly. This is used rather than the Deployment's
    label selector because pools of one workload often share labels (`app: llm-chat` on both the
    A100 and the Salad Deployment): overlapping selectors would count one pool's pods twice, while
    ownership is unambiguous. Without the label (hand-made ReplicaSets), the last `-` segment is cut.
    """
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") != "ReplicaSet" or ref.get("controller") is False:
            continue
        rs_name = str(ref.get("name", ""))
        pod_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if pod_hash and rs_name.endswith(f"-{pod_hash}"):
            return rs_name[: -len(pod_hash) - 1]
        return rs_name.rsplit("-", 1)[0]
    return ""


def _gpu_request(pod_spec: Raw) -> int:
    """GPUs a pod requests. Extended resources need requests == limits, and either may be written
    alone (a limit alone implies the request), so take the request, else the limit. Init containers
    run before the main ones, so the pod needs the larger of their maximum and the main sum."""

    def one(container: Raw) -> int:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        return parse_quantity(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE)))

    main = sum(one(c) for c in pod_spec.get("containers") or [])
    init = max((one(c) for c in pod_spec.get("initContainers") or []), default=0)
    return max(main, init)
