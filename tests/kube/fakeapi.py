"""A fake Kubernetes API server, over real HTTP, for the tests of `autoscaler.kube`.

Role: stand in for kube-apiserver plus the three controllers the autoscaler depends on (the
Deployment/ReplicaSet controller, the scheduler and the kubelet's readiness), with the semantics the
real `kubernetes.aio` client and our cache rely on: one global resourceVersion counter, list
responses that carry it, watch streams (`?watch=1&resourceVersion=N`) of ADDED/MODIFIED/DELETED JSON
lines, BOOKMARKs, `410 Gone` once N is older than the bounded event history, optimistic concurrency
(a write with a stale `metadata.resourceVersion` gets 409 with a Status body), the Deployment `scale`
subresource, Events and Leases. Callers: the tests in tests/kube/ and the end-to-end tests.

What it models, and how:
- Like a real API server, it shows a write to watchers a little later, not at once: every watch event
  is delivered `watch_delay` seconds after the write (in order), and the ReplicaSet controller acts on
  a new `spec.replicas` `controller_delay` seconds after it was written, so a controller that reasons
  only from its watch cache right after a write sees the world before the write.
- Deployments own pods through a ReplicaSet named `<deployment>-<pod-template-hash>`; the fake's
  ReplicaSet logic creates pods up to `spec.replicas` and on scale-in deletes pods in the real
  ReplicaSet order (`ActivePodsWithRanks`): unscheduled first, then Pending before Unknown before
  Running, not ready before ready, lower `controller.kubernetes.io/pod-deletion-cost` first, then
  the newest (the real controller's further tie-breaks, pods doubled up on a node and restart
  counts, are left out). Pods accept merge patches (annotations, say).
- Deleted pods that were bound to a node linger with `deletionTimestamp` for `terminating_seconds`
  and keep holding their GPUs; unbound pods go at once (no kubelet has to confirm).
- The scheduler binds Pending pods in creation order to a Ready, schedulable node whose labels match
  the pod's nodeSelector, whose NoSchedule/NoExecute taints the pod tolerates and which has enough
  free `nvidia.com/gpu`; a pod that fits nowhere stays Pending with PodScheduled=False/Unschedulable.
- A bound pod turns Ready after `ready_delay[node class]` seconds (virtual nodes are those with the
  `virtual-kubelet.io/provider` taint or label, or `type=virtual-kubelet`), its containers then
  reporting a running state as a kubelet does. On a SaladCloud node (its provider's taint) the pod
  is first marked Running and Ready at once, with container statuses that say ready but no state,
  as the provider does when it creates the container group; its tracker then reports the container
  group as it is (`salad_tracker_seconds` later, every 5 s for the real one): Pending and not Ready
  until an instance runs (REFERENCE.md, "Virtual nodes").
- Fault injection (`faults`): the next N requests, optionally matching a verb and a path substring,
  answer a status (500, 429 with Retry-After, 409, ...) or are delayed; a random share of requests
  can fail; `drop_watches()` aborts every open watch connection.
- Every write request is recorded (`writes`) with the caller's bearer token and the Lease holders at
  that moment, and the invariants registered with `add_invariant` are checked after each write, so a
  test can assert "never above the cap at any write" rather than only at the end.

Timestamps are wall-clock RFC 3339 with whole seconds, as the real server writes them.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

GPU = "nvidia.com/gpu"
Obj = dict[str, Any]
# SaladCloud's virtual kubelet, as its provider registers the node (REFERENCE.md, "Virtual nodes"):
# this taint by default, no provider label, and no GPU resource at all (the GPU class is the pod's
# `salad.com/gpu-classes` annotation), so only pods that request no GPU can land there.
SALAD_NODE_TAINT = {"key": "virtual-kubelet.io/provider", "value": "saladCloud", "effect": "NoSchedule"}
SALAD_NODE_ALLOCATABLE = {"cpu": "16000", "memory": "60Ti", "ephemeral-storage": "50Ti", "pods": "1000"}

# Collections, by the kind the watch and list paths serve.
DEPLOYMENTS = "deployments"
PODS = "pods"
NODES = "nodes"
EVENTS = "events"
LEASES = "leases"

_LIST_KIND = {
    DEPLOYMENTS: ("apps/v1", "DeploymentList"),
    PODS: ("v1", "PodList"),
    NODES: ("v1", "NodeList"),
    EVENTS: ("v1", "EventList"),
    LEASES: ("coordination.k8s.io/v1", "LeaseList"),
}
_GROUP = {DEPLOYMENTS: "apps", PODS: "", NODES: "", EVENTS: "", LEASES: "coordination.k8s.io"}


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _template_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:10]


def gpu_request(pod: Obj) -> int:
    total = 0
    for c in pod.get("spec", {}).get("containers", []):
        res = c.get("resources", {})
        value = res.get("requests", {}).get(GPU, res.get("limits", {}).get(GPU, 0))
        total += int(value)
    return total


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


# ----------------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists" ("=" is "in" one value, "!=" is "notin")
    values: frozenset[str] = frozenset()

    def match(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        inside = labels.get(self.key) in self.values
        return inside if self.op == "in" else not inside


def _parse_label_selector(text: str) -> list[_Requirement]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> requirements, all of which must hold."""
    reqs: list[_Requirement] = []
    # Split on commas that are not inside parentheses.
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        part = raw.strip()
        if not part:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", part):
            reqs.append(_Requirement(m[1], m[2], frozenset(v.strip() for v in m[3].split(","))))
        elif "!=" in part:
            key, value = (x.strip() for x in part.split("!=", 1))
            reqs.append(_Requirement(key, "notin", frozenset([value])))
        elif "=" in part:
            key, value = (x.strip() for x in part.replace("==", "=").split("=", 1))
            reqs.append(_Requirement(key, "in", frozenset([value])))
        elif part.startswith("!"):
            reqs.append(_Requirement(part[1:].strip(), "!exists"))
        else:
            reqs.append(_Requirement(part, "exists"))
    return reqs


def _field(obj: Obj, dotted: str) -> str:
    cur: Any = obj
    for key in dotted.split("."):
        cur = cur.get(key, "") if isinstance(cur, dict) else ""
    return str(cur)


@dataclass
class _Filter:
    namespace: str | None = None
    labels: list[_Requirement] = field(default_factory=list)
    fields: list[tuple[str, str, bool]] = field(default_factory=list)  # (path, value, equal)

    @classmethod
    def from_query(cls, namespace: str | None, query: Mapping[str, str]) -> _Filter:
        flt = cls(namespace=namespace, labels=_parse_label_selector(query.get("labelSelector", "")))
        for part in query.get("fieldSelector", "").split(","):
            if not part.strip():
                continue
            if "!=" in part:
                key, value = part.split("!=", 1)
                flt.fields.append((key.strip(), value.strip(), False))
            else:
                key, value = part.replace("==", "=").split("=", 1)
                flt.fields.append((key.strip(), value.strip(), True))
        return flt

    def match(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        if not all(r.match(labels) for r in self.labels):
            return False
        return all((_field(obj, path) == value) == equal for path, value, equal in self.fields)


# ----------------------------------------------------------------------------------------------
# Fault injection and the write log


@dataclass
class Fault:
    status: int | None  # None: answer normally, after `delay`
    count: int
    verb: str | None = None
    path: str | None = None  # substring of the request path
    delay: float = 0.0
    retry_after: int | None = None

    def matches(self, verb: str, path: str) -> bool:
        if self.verb is not None and self.verb != verb:
            return False
        return self.path is None or self.path in path


class Faults:
    """What the next requests should suffer. Tests say what, the server consumes it."""

    def __init__(self) -> None:
        self.pending: list[Fault] = []
        self.fail_ratio = 0.0
        self.fail_status = 500
        self.fail_verbs: set[str] | None = None
        self._rng = random.Random(0)

    def add(
        self,
        status: int | None,
        *,
        count: int = 1,
        verb: str | None = None,
        path: str | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        self.pending.append(Fault(status, count, verb, path, delay, retry_after))

    def random_failures(
        self, ratio: float, *, status: int = 500, verbs: Iterable[str] | None = None, seed: int = 0
    ) -> None:
        self.fail_ratio, self.fail_status = ratio, status
        self.fail_verbs = set(verbs) if verbs is not None else None
        self._rng = random.Random(seed)

    def reset(self) -> None:
        self.pending.clear()
        self.fail_ratio = 0.0

    def take(self, verb: str, path: str) -> Fault | None:
        for fault in self.pending:
            if fault.count > 0 and fault.matches(verb, path):
                fault.count -= 1
                if fault.count == 0:
                    self.pending.remove(fault)
                return fault
        verb_ok = self.fail_verbs is None or verb in self.fail_verbs
        if self.fail_ratio and verb_ok and self._rng.random() < self.fail_ratio:
            return Fault(self.fail_status, 1)
        return None


@dataclass(frozen=True)
class Write:
    verb: str
    path: str
    body: Any
    at: float  # time.monotonic()
    who: str  # bearer token of the caller
    status: int
    lease_holders: Mapping[str, str]  # "namespace/name" -> holderIdentity at the time of the write


@dataclass(eq=False)
class _Watcher:
    collection: str
    flt: _Filter
    # (kind, object, monotonic time of the write): the stream waits until `watch_delay` after it.
    queue: asyncio.Queue[tuple[str, Obj, float] | None]
    request: web.Request


# ----------------------------------------------------------------------------------------------
# The server


class FakeKube:
    """State, controllers and the HTTP front of the fake API server. Start with `await start()`."""

    def __init__(
        self,
        *,
        ready_delay: Mapping[str, float] | None = None,
        terminating_seconds: float = 0.0,
        history_limit: int = 1000,
        bookmark_interval: float = 0.5,
        tick: float = 0.02,
        tokens: Iterable[str] | None = None,
        watch_delay: float = 0.03,
        controller_delay: float = 0.05,
        salad_tracker_seconds: float = 0.1,
    ) -> None:
        self.watch_delay = watch_delay
        self.salad_tracker_seconds = salad_tracker_seconds
        self.controller_delay = controller_delay
        self.ready_delay = dict(ready_delay or {"regular": 0.05, "virtual": 0.2})
        self.terminating_seconds = terminating_seconds
        self.bookmark_interval = bookmark_interval
        self.tick = tick
        self.tokens = set(tokens) if tokens is not None else None
        self.rv = 0
        self.store: dict[str, dict[tuple[str, str], Obj]] = {
            c: {} for c in (DEPLOYMENTS, PODS, NODES, EVENTS, LEASES)
        }
        self.history: deque[tuple[int, str, str, Obj]] = deque(maxlen=history_limit)
        # The oldest resourceVersion a watch may resume from: events after it are all in history.
        self.compacted_rv = 0
        self.faults = Faults()
        self.writes: list[Write] = []
        self.requests: list[tuple[str, str, str]] = []  # (verb, path?query, who)
        self.invariants: list[Callable[[FakeKube], str | None]] = []
        self.violations: list[str] = []
        self.watchers: set[_Watcher] = set()
        # Pod name -> monotonic time it becomes Ready; and when a terminating pod goes.
        self._ready_at: dict[tuple[str, str], float] = {}
        # Pods on a SaladCloud node that its provider marked Ready at creation -> when its tracker
        # first reports them as they are.
        self._tracked_at: dict[tuple[str, str], float] = {}
        self._gone_at: dict[tuple[str, str], float] = {}
        self._names = itertools.count(1)
        self._uids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/version", self._version)
        r.add_get("/apis/apps/v1/deployments", self._list_or_watch(DEPLOYMENTS))
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments", self._list_or_watch(DEPLOYMENTS))
        r.add_post("/apis/apps/v1/namespaces/{ns}/deployments", self._create_deployment)
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._get(DEPLOYMENTS))
        r.add_patch("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._patch_deployment)
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self._get_scale)
        r.add_put("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self._write_scale)
        r.add_patch("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self._write_scale)
        r.add_get("/api/v1/pods", self._list_or_watch(PODS))
        r.add_get("/api/v1/namespaces/{ns}/pods", self._list_or_watch(PODS))
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get(PODS))
        r.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self._patch_pod)
        r.add_delete("/api/v1/namespaces/{ns}/pods/{name}", self._delete_pod)
        r.add_get("/api/v1/nodes", self._list_or_watch(NODES))
        r.add_get("/api/v1/nodes/{name}", self._get(NODES))
        r.add_get("/api/v1/events", self._list_or_watch(EVENTS))
        r.add_get("/api/v1/namespaces/{ns}/events", self._list_or_watch(EVENTS))
        r.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        lease = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        r.add_post(lease, self._create_lease)
        r.add_get(lease + "/{name}", self._get(LEASES))
        r.add_put(lease + "/{name}", self._replace_lease)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for w in list(self.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, token: str = "test-token") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # ---- storage, resourceVersion and watch fan-out ------------------------------------------

    def _emit(self, collection: str, kind: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        snap = copy.deepcopy(obj)
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0][0]
        self.history.append((self.rv, collection, kind, snap))
        written = time.monotonic()
        for w in self.watchers:
            if w.collection == collection and w.flt.match(snap):
                w.queue.put_nowait((kind, snap, written))

    def _put(self, collection: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        kind = "MODIFIED" if key in self.store[collection] else "ADDED"
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("creationTimestamp", rfc3339(time.time()))
        self.store[collection][key] = obj
        self._emit(collection, kind, obj)
        return obj

    def _remove(self, collection: str, key: tuple[str, str]) -> None:
        obj = self.store[collection].pop(key, None)
        if obj is not None:
            self._emit(collection, "DELETED", obj)

    def compact(self) -> None:
        """Forget all watch history, as etcd compaction does: every resume from an older
        resourceVersion gets 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    def drop_watches(self) -> None:
        """Abort every open watch connection (no clean end of stream)."""
        for w in list(self.watchers):
            transport = w.request.transport
            if transport is not None:
                transport.abort()
            w.queue.put_nowait(None)

    def partition(self) -> None:
        """Unreachable from now on: every request answers 503 and every open watch is cut, until
        `heal()`. The state and the controllers go on (pods still start and terminate)."""
        self.faults.random_failures(1.0, status=503)
        self.drop_watches()

    def heal(self) -> None:
        self.faults.reset()

    def lease_holders(self) -> dict[str, str]:
        return {
            f"{ns}/{name}": (obj.get("spec") or {}).get("holderIdentity") or ""
            for (ns, name), obj in self.store[LEASES].items()
        }

    def add_invariant(self, check: Callable[[FakeKube], str | None]) -> None:
        """`check` runs after every write; a returned string is recorded in `violations`."""
        self.invariants.append(check)

    # ---- test helpers that change state directly (no HTTP, no write record) -----------------

    def add_node(
        self,
        name: str,
        gpus: int,
        *,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[Mapping[str, str]] = (),
        ready: bool = True,
        unschedulable: bool = False,
        allocatable: Mapping[str, str] | None = None,
    ) -> Obj:
        resources = (
            dict(allocatable) if allocatable is not None else {GPU: str(gpus), "cpu": "64", "memory": "512Gi"}
        )
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"taints": [dict(t) for t in taints], "unschedulable": unschedulable},
            "status": {
                "allocatable": resources,
                "capacity": dict(resources),
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
        self._put(NODES, node)
        self._schedule()
        return node

    def add_salad_node(self, name: str = "saladcloud-edge-provider-x7k2q") -> Obj:
        """A SaladCloud virtual node as the real provider registers it: the taint, the labels the
        virtual-kubelet library gives every node (`type`, `kubernetes.io/role`, `kubernetes.io/hostname`;
        no provider label), cpu/memory/storage/pods allocatable and no `nvidia.com/gpu`."""
        labels = {"type": "virtual-kubelet", "kubernetes.io/role": "agent", "kubernetes.io/hostname": name}
        return self.add_node(
            name, 0, labels=labels, taints=[SALAD_NODE_TAINT], allocatable=SALAD_NODE_ALLOCATABLE
        )

    def remove_node(self, name: str) -> None:
        self._remove(NODES, ("", name))

    def add_deployment(
        self,
        namespace: str,
        name: str,
        *,
        replicas: int = 0,
        gpus_per_replica: int = 1,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Iterable[Mapping[str, str]] = (),
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        pod_labels: Mapping[str, str] | None = None,
        pod_annotations: Mapping[str, str] | None = None,
    ) -> Obj:
        """`gpus_per_replica=0`: pods with no GPU request at all (SaladCloud's, whose GPU class is the
        `salad.com/gpu-classes` pod annotation)."""
        pod_labels = dict(pod_labels or {"app": name})
        gpus = {GPU: str(gpus_per_replica)} if gpus_per_replica else {}
        dep: Obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
                "generation": 1,
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(pod_labels)},
                "template": {
                    "metadata": {"labels": dict(pod_labels), "annotations": dict(pod_annotations or {})},
                    "spec": {
                        "nodeSelector": dict(node_selector or {}),
                        "tolerations": [dict(t) for t in tolerations],
                        "containers": [
                            {
                                "name": "main",
                                "image": "example/worker:1",
                                "resources": {"requests": dict(gpus), "limits": dict(gpus)},
                            }
                        ],
                    },
                },
            },
            "status": {"observedGeneration": 1, "replicas": 0, "readyReplicas": 0},
        }
        self._put(DEPLOYMENTS, dep)
        self._reconcile_replicas(dep)
        return dep

    def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        """A `kubectl scale` done behind the autoscaler's back (not recorded as our write)."""
        dep = self.store[DEPLOYMENTS][(namespace, name)]
        dep["spec"]["replicas"] = replicas
        dep["metadata"]["generation"] += 1
        self._put(DEPLOYMENTS, dep)
        self._reconcile_replicas(dep)

    def annotate(self, namespace: str, name: str, key: str, value: str | None) -> None:
        dep = self.store[DEPLOYMENTS][(namespace, name)]
        annotations = dep["metadata"].setdefault("annotations", {})
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
        self._put(DEPLOYMENTS, dep)

    def deployment(self, namespace: str, name: str) -> Obj:
        return self.store[DEPLOYMENTS][(namespace, name)]

    def run_now(self, namespace: str, name: str) -> None:
        """The Deployment's bound pods that are starting get Ready at the next tick (their instances run
        now, say, however long their node's `ready_delay`)."""
        now = time.monotonic()
        for pod in self.pods_of(namespace, name):
            key = (namespace, pod["metadata"]["name"])
            if key in self._ready_at:
                self._ready_at[key] = now

    def pods_of(self, namespace: str, name: str) -> list[Obj]:
        prefix = f"{name}-{_template_hash(name)}-"
        return [
            p for (ns, pname), p in self.store[PODS].items() if ns == namespace and pname.startswith(prefix)
        ]

    def add_pod(self, pod: Obj) -> Obj:
        """A pod not owned by any managed Deployment (another team's GPU job, say)."""
        pod.setdefault("status", {"phase": "Pending"})
        self._put(PODS, pod)
        self._schedule()
        return pod

    # ---- the controllers --------------------------------------------------------------------

    @staticmethod
    def _node_class(node: Obj) -> str:
        labels = node["metadata"].get("labels") or {}
        taints = node.get("spec", {}).get("taints") or []
        virtual = (
            labels.get("type") == "virtual-kubelet"
            or "virtual-kubelet.io/provider" in labels
            or any(t.get("key") == "virtual-kubelet.io/provider" for t in taints)
        )
        return "virtual" if virtual else "regular"

    def _reconcile_replicas(self, dep: Obj) -> None:
        """The ReplicaSet controller: pods up or down to spec.replicas, then the status."""
        meta = dep["metadata"]
        ns, name = meta["namespace"], meta["name"]
        rs = f"{name}-{_template_hash(name)}"
        live = [p for p in self.pods_of(ns, name) if not p["metadata"].get("deletionTimestamp")]
        want = int(dep["spec"].get("replicas", 1))
        now = time.time()
        if len(live) < want:
            template = dep["spec"]["template"]
            for _ in range(want - len(live)):
                suffix = f"{next(self._names):05x}"
                pod: Obj = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{rs}-{suffix}",
                        "namespace": ns,
                        "labels": {
                            **template["metadata"]["labels"],
                            "pod-template-hash": rs[len(name) + 1 :],
                        },
                        "annotations": dict(template["metadata"].get("annotations") or {}),
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": rs,
                                "uid": f"rs-{rs}",
                                "controller": True,
                            }
                        ],
                        "creationTimestamp": rfc3339(now),
                    },
                    "spec": copy.deepcopy(template["spec"]),
                    "status": {"phase": "Pending", "conditions": []},
                }
                self._put(PODS, pod)
        elif len(live) > want:
            for victim in sorted(live, key=_victim_order)[: len(live) - want]:
                self._delete(victim)
        self._schedule()
        self._update_status(ns, name)

    def _reconcile_later(self, key: tuple[str, str]) -> None:
        """The ReplicaSet controller's reaction to a written `spec.replicas`, `controller_delay` later
        (it reconciles whatever the spec is by then, so several quick writes end where the last one
        says)."""

        def run() -> None:
            dep = self.store[DEPLOYMENTS].get(key)
            if dep is not None:
                self._reconcile_replicas(dep)

        if self.controller_delay > 0:
            asyncio.get_running_loop().call_later(self.controller_delay, run)
        else:
            run()

    def _delete(self, pod: Obj) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._ready_at.pop(key, None)
        if pod["spec"].get("nodeName") and self.terminating_seconds > 0:
            pod["metadata"]["deletionTimestamp"] = rfc3339(time.time())
            pod["metadata"]["deletionGracePeriodSeconds"] = int(self.terminating_seconds)
            self._gone_at[key] = time.monotonic() + self.terminating_seconds
            self._put(PODS, pod)
        else:
            self._remove(PODS, key)

    def _update_status(self, ns: str, name: str) -> None:
        dep = self.store[DEPLOYMENTS].get((ns, name))
        if dep is None:
            return
        live = [p for p in self.pods_of(ns, name) if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in live if _pod_ready(p))
        status = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": len(live),
            "updatedReplicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": len(live) - ready,
        }
        if dep.get("status") != status:
            dep["status"] = status
            self._put(DEPLOYMENTS, dep)

    def _free_gpus(self) -> dict[str, int]:
        free: dict[str, int] = {}
        for (_, name), node in self.store[NODES].items():
            free[name] = int(node["status"]["allocatable"].get(GPU, "0"))
        for pod in self.store[PODS].values():
            node_name = pod["spec"].get("nodeName")
            if node_name in free and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                free[node_name] -= gpu_request(pod)
        return free

    def _schedule(self) -> None:
        pending = [
            p
            for p in self.store[PODS].values()
            if not p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        ]
        if not pending:
            return
        pending.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        free = self._free_gpus()
        touched: set[tuple[str, str]] = set()
        for pod in pending:
            want = gpu_request(pod)
            node = next((n for n in self._nodes_in_order() if _fits(pod, n, free, want)), None)
            ns = pod["metadata"]["namespace"]
            if node is None:
                cond = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": f"0/{len(self.store[NODES])} nodes are available: Insufficient {GPU}.",
                }
                if pod["status"].get("conditions") != [cond]:
                    pod["status"]["conditions"] = [cond]
                    self._put(PODS, pod)
                continue
            node_name = node["metadata"]["name"]
            free[node_name] -= want
            pod["spec"]["nodeName"] = node_name
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            delay = self.ready_delay[self._node_class(node)]
            key = (ns, pod["metadata"]["name"])
            self._ready_at[key] = time.monotonic() + delay
            if _salad(node):
                # The provider's word at creation: Running and Ready, before any instance runs.
                pod["status"]["phase"] = "Running"
                pod["status"]["conditions"] = [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "PodScheduled", "status": "True"},
                ]
                pod["status"]["containerStatuses"] = _container_statuses(pod, ready=True, state=None)
                if self.salad_tracker_seconds < delay:
                    self._tracked_at[key] = time.monotonic() + self.salad_tracker_seconds
            self._put(PODS, pod)
            touched.add((ns, _owner_deployment(pod)))
        for ns, dep_name in touched:
            self._update_status(ns, dep_name)

    def _nodes_in_order(self) -> list[Obj]:
        return [self.store[NODES][k] for k in sorted(self.store[NODES])]

    def _advance(self) -> None:
        now = time.monotonic()
        touched: set[tuple[str, str]] = set()
        for key, at in list(self._tracked_at.items()):
            if at <= now:
                del self._tracked_at[key]
                pod = self.store[PODS].get(key)
                if pod is None or key not in self._ready_at:
                    continue
                # The tracker's first report: no instance runs yet.
                pod["status"]["phase"] = "Pending"
                pod["status"]["conditions"] = [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                ]
                waiting = {"waiting": {"reason": "ContainerCreating"}}
                pod["status"]["containerStatuses"] = _container_statuses(pod, ready=False, state=waiting)
                self._put(PODS, pod)
                touched.add((key[0], _owner_deployment(pod)))
        for key, at in list(self._ready_at.items()):
            if at <= now:
                del self._ready_at[key]
                self._tracked_at.pop(key, None)
                pod = self.store[PODS].get(key)
                if pod is None:
                    continue
                pod["status"]["phase"] = "Running"
                pod["status"]["conditions"] = [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ]
                running = {"running": {"startedAt": rfc3339(time.time())}}
                pod["status"]["containerStatuses"] = _container_statuses(pod, ready=True, state=running)
                self._put(PODS, pod)
                touched.add((key[0], _owner_deployment(pod)))
        freed = False
        for key, at in list(self._gone_at.items()):
            if at <= now:
                del self._gone_at[key]
                self._remove(PODS, key)
                freed = True
        if freed:
            self._schedule()
        for ns, name in touched:
            self._update_status(ns, name)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self._advance()

    # ---- HTTP: middleware, faults, auth, write log -------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        who = auth.removeprefix("Bearer ").strip()
        self.requests.append((request.method, request.path_qs, who))
        if self.tokens is not None and who not in self.tokens:
            return _json(401, status_body(401, "Unauthorized", "Unauthorized"))
        fault = self.faults.take(request.method, request.path)
        response: web.StreamResponse | None = None
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                reason = {409: "Conflict", 429: "TooManyRequests"}.get(fault.status, "InternalError")
                response = _json(fault.status, status_body(fault.status, reason, "injected fault"))
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = str(fault.retry_after)
        if response is None:
            response = await handler(request)
        if request.method != "GET":
            await self._record_write(request, who, response.status)
        return response

    async def _record_write(self, request: web.Request, who: str, status: int) -> None:
        try:
            body = await request.json() if request.body_exists else None
        except ValueError:
            body = None
        holders = self.lease_holders()
        self.writes.append(Write(request.method, request.path, body, time.monotonic(), who, status, holders))
        if status < 300:
            for check in self.invariants:
                problem = check(self)
                if problem:
                    self.violations.append(problem)

    async def _version(self, request: web.Request) -> web.Response:
        return _json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"})

    # ---- HTTP: list and watch ----------------------------------------------------------------

    def _list_or_watch(self, collection: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = request.match_info.get("ns")
            flt = _Filter.from_query(ns, request.query)
            if request.query.get("watch") in ("1", "true", "True"):
                return await self._watch(request, collection, flt)
            items = [copy.deepcopy(o) for o in self.store[collection].values() if flt.match(o)]
            api_version, kind = _LIST_KIND[collection]
            return _json(
                200,
                {
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                },
            )

        return handler

    async def _watch(self, request: web.Request, collection: str, flt: _Filter) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(request.query.get("timeoutSeconds", "0") or 0)
        queue: asyncio.Queue[tuple[str, Obj, float] | None] = asyncio.Queue()
        if rv_text in ("", "0"):
            # "Any" version: a synthetic ADDED for everything there is, then the changes.
            backlog = [
                ("ADDED", copy.deepcopy(o), 0.0) for o in self.store[collection].values() if flt.match(o)
            ]
        else:
            since = int(rv_text)
            if since < self.compacted_rv:
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                await resp.prepare(request)
                gone = status_body(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
                await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                await resp.write_eof()
                return resp
            backlog = [
                (kind, obj, 0.0)
                for rv, coll, kind, obj in self.history
                if rv > since and coll == collection and flt.match(obj)
            ]
        for earlier in backlog:
            queue.put_nowait(earlier)
        watcher = _Watcher(collection, flt, queue, request)
        self.watchers.add(watcher)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        try:
            while True:
                wait = self.bookmark_interval if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    item: tuple[str, Obj, float] | None = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    api_version, kind = _LIST_KIND[collection]
                    mark = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": kind.removesuffix("List"),
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                    await resp.write(json.dumps(mark).encode() + b"\n")
                    continue
                if item is None:
                    break
                kind, obj, written = item
                lag = written + self.watch_delay - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            if request.transport is not None and not request.transport.is_closing():
                await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.watchers.discard(watcher)
        return resp

    def _get(self, collection: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            key = (request.match_info.get("ns", ""), request.match_info["name"])
            obj = self.store[collection].get(key)
            if obj is None:
                return _not_found(collection, key[1])
            return _json(200, obj)

        return handler

    # ---- HTTP: deployments and the scale subresource -----------------------------------------

    async def _create_deployment(self, request: web.Request) -> web.Response:
        body = await request.json()
        ns = request.match_info["ns"]
        name = body["metadata"]["name"]
        if (ns, name) in self.store[DEPLOYMENTS]:
            return _json(409, status_body(409, "AlreadyExists", f'deployments.apps "{name}" already exists'))
        body["metadata"]["namespace"] = ns
        body["metadata"]["generation"] = 1
        body.setdefault("status", {})
        self._put(DEPLOYMENTS, body)
        self._reconcile_replicas(body)
        return _json(201, body)

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        dep = self.store[DEPLOYMENTS].get(key)
        if dep is None:
            return _not_found(DEPLOYMENTS, key[1])
        patch = await request.json()
        conflict = _precondition(dep, patch, DEPLOYMENTS)
        if conflict is not None:
            return conflict
        before = dep["spec"].get("replicas")
        _merge(dep, patch)
        if dep["spec"].get("replicas") != before:
            dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
        self._put(DEPLOYMENTS, dep)
        self._reconcile_replicas(dep)
        return _json(200, dep)

    def _scale_of(self, dep: Obj) -> Obj:
        meta = dep["metadata"]
        labels = dep["spec"]["selector"].get("matchLabels", {})
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": dep["spec"].get("replicas", 1)},
            "status": {
                "replicas": dep.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        dep = self.store[DEPLOYMENTS].get(key)
        if dep is None:
            return _not_found(DEPLOYMENTS, key[1])
        return _json(200, self._scale_of(dep))

    async def _write_scale(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        dep = self.store[DEPLOYMENTS].get(key)
        if dep is None:
            return _not_found(DEPLOYMENTS, key[1])
        body = await request.json()
        conflict = _precondition(dep, body, DEPLOYMENTS)
        if conflict is not None:
            return conflict
        replicas = (body.get("spec") or {}).get("replicas")
        if request.method == "PUT" and not isinstance(replicas, int):
            return _json(422, status_body(422, "Invalid", "spec.replicas: Required value"))
        if isinstance(replicas, int):
            if replicas < 0:
                return _json(422, status_body(422, "Invalid", "spec.replicas: must be >= 0"))
            if replicas != dep["spec"].get("replicas"):
                dep["spec"]["replicas"] = replicas
                dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
                self._put(DEPLOYMENTS, dep)
                self._reconcile_later(key)
        return _json(200, self._scale_of(dep))

    # ---- HTTP: pods, events, leases ----------------------------------------------------------

    async def _patch_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        pod = self.store[PODS].get(key)
        if pod is None:
            return _not_found(PODS, key[1])
        if request.content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            return _json(
                415, status_body(415, "UnsupportedMediaType", f"{request.content_type} is not supported here")
            )
        patch = await request.json()
        conflict = _precondition(pod, patch, PODS)
        if conflict is not None:
            return conflict
        _merge(pod, patch)
        self._put(PODS, pod)
        return _json(200, pod)

    async def _delete_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        pod = self.store[PODS].get(key)
        if pod is None:
            return _not_found(PODS, key[1])
        self._delete(pod)
        dep_name = _owner_deployment(pod)
        dep = self.store[DEPLOYMENTS].get((key[0], dep_name))
        if dep is not None:
            self._reconcile_replicas(dep)
        return _json(200, pod)

    async def _create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        meta = body.setdefault("metadata", {})
        meta["namespace"] = request.match_info["ns"]
        if not meta.get("name"):
            meta["name"] = f"{meta.get('generateName', 'event.')}{next(self._names):x}"
        message = body.get("message") or ""
        if len(message) > 1024:
            # The real server rejects it (events.k8s.io: note must be at most 1 kB).
            return _json(422, status_body(422, "Invalid", "message: Too long: must have at most 1024 bytes"))
        self._put(EVENTS, body)
        return _json(201, body)

    async def _create_lease(self, request: web.Request) -> web.Response:
        body = await request.json()
        ns = request.match_info["ns"]
        name = body["metadata"]["name"]
        if (ns, name) in self.store[LEASES]:
            return _json(409, status_body(409, "AlreadyExists", f'leases "{name}" already exists'))
        body["metadata"]["namespace"] = ns
        body["metadata"].pop("resourceVersion", None)
        self._put(LEASES, body)
        return _json(201, body)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        lease = self.store[LEASES].get(key)
        if lease is None:
            return _not_found(LEASES, key[1])
        body = await request.json()
        conflict = _precondition(lease, body, LEASES, required=True)
        if conflict is not None:
            return conflict
        body["metadata"] = {**lease["metadata"], **body["metadata"]}
        self.store[LEASES][key] = body
        self._put(LEASES, body)
        return _json(200, body)

    # ---- queries for tests -------------------------------------------------------------------

    def scale_writes(self) -> list[Write]:
        return [w for w in self.writes if w.path.endswith("/scale") and w.status < 300]

    def events_for(self, namespace: str, name: str) -> list[Obj]:
        return [
            e
            for (ns, _), e in self.store[EVENTS].items()
            if ns == namespace and e.get("involvedObject", {}).get("name") == name
        ]


# ----------------------------------------------------------------------------------------------
# Helpers


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status)


def _not_found(collection: str, name: str) -> web.Response:
    group = _GROUP[collection]
    resource = f"{collection}.{group}" if group else collection
    return _json(404, status_body(404, "NotFound", f'{resource} "{name}" not found', {"name": name}))


def _precondition(current: Obj, body: Obj, collection: str, *, required: bool = False) -> web.Response | None:
    """Optimistic concurrency: a write naming a resourceVersion must name the current one."""
    sent = (body.get("metadata") or {}).get("resourceVersion")
    if (sent or required) and sent != current["metadata"]["resourceVersion"]:
        name = current["metadata"]["name"]
        group = _GROUP[collection]
        resource = f"{collection}.{group}" if group else collection
        message = (
            f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return _json(409, status_body(409, "Conflict", message, {"name": name, "kind": collection}))
    return None


def _merge(target: Obj, patch: Obj) -> None:
    """JSON merge patch (RFC 7386); good enough for strategic merge on the fields we patch."""
    for key, raw in patch.items():
        value = raw
        if key == "metadata" and isinstance(raw, dict):
            value = {k: v for k, v in raw.items() if k != "resourceVersion"}
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _salad(node: Obj) -> bool:
    """A SaladCloud virtual node: its provider's taint (`saladCloud`, any case)."""
    return any(
        t.get("key") == "virtual-kubelet.io/provider" and str(t.get("value", "")).lower() == "saladcloud"
        for t in node.get("spec", {}).get("taints") or []
    )


def _container_statuses(pod: Obj, *, ready: bool, state: Obj | None) -> list[Obj]:
    """One status per container of the pod; `state` None: none reported (a provider's first word)."""
    statuses = []
    for c in pod["spec"].get("containers", []):
        status: Obj = {"name": c.get("name", ""), "image": c.get("image", ""), "ready": ready}
        # Required fields; a Go provider writes "" for an image ID it does not know.
        status["imageID"] = "" if state is None else f"example.com/{c.get('image', '')}@sha256:0"
        status["restartCount"] = 0
        if state is not None:
            status["state"] = copy.deepcopy(state)
        statuses.append(status)
    return statuses


def _pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"].get("conditions", [])
    )


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def _victim_order(pod: Obj) -> tuple[int, int, int, int, str]:
    """The ReplicaSet controller's scale-in order (`ActivePodsWithRanks.Less`), first removed first:
    unscheduled, then by phase (Pending < Unknown < Running), not ready, lower pod-deletion-cost
    (an int32; 0 when absent, as the controller reads an unparsable one), then newest first."""
    bound = 1 if pod["spec"].get("nodeName") else 0
    phase = _PHASE_RANK.get(pod["status"].get("phase", "Pending"), 0)
    ready = 1 if _pod_ready(pod) else 0
    try:
        cost = int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0"))
    except ValueError:
        cost = 0
    # Newest first among equals: negate the (sortable) creation time.
    return (bound, phase, ready, cost, _invert(pod["metadata"]["creationTimestamp"]))


def _owner_deployment(pod: Obj) -> str:
    for ref in pod["metadata"].get("ownerReferences", []):
        if ref.get("kind") == "ReplicaSet":
            return str(ref["name"]).rsplit("-", 1)[0]
    return ""


def _invert(timestamp: str) -> str:
    # Sort key that puts later RFC 3339 timestamps first.
    return "".join(chr(0x10FFFF - ord(ch)) for ch in timestamp)


def _tolerates(pod: Obj, taint: Mapping[str, str]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for tol in pod["spec"].get("tolerations") or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _fits(pod: Obj, node: Obj, free: Mapping[str, int], want: int) -> bool:
    spec = node.get("spec", {})
    if spec.get("unschedulable"):
        return False
    conditions = node["status"].get("conditions", [])
    if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
        return False
    labels = node["metadata"].get("labels") or {}
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    if not all(_tolerates(pod, t) for t in spec.get("taints") or []):
        return False
    return free[node["metadata"]["name"]] >= want


async def start_fake(**kwargs: Any) -> FakeKube:
    fake = FakeKube(**kwargs)
    await fake.start()
    return fake
