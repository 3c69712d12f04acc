"""Watch-based cache of Deployments, Pods and Nodes: the autoscaler's only way to read the cluster.

Role: keep an in-memory copy of what `ClusterView.snapshot()` and the actuator need, so that a
reconcile costs zero API reads. Callers: `kube.view` (reads), `kube.actuator` (the resourceVersion
seen, manual-change detection through `add_deployment_listener`), the live controller (`start`,
`wait_synced`, `changed`, `stop`).

How it stays right (the client-go reflector protocol):
- list, then watch from the list's resourceVersion with bookmarks on, so a quiet watch still moves
  its resourceVersion forward and a reconnect resumes close to now;
- a watch that ends (server timeout) or drops (connection lost) resumes from the last
  resourceVersion seen, after a jittered backoff when it failed;
- `410 Gone` (an ERROR event with code 410, or the HTTP status) means the history we need is gone:
  relist, and turn the difference between the old and the new list into change notifications so
  nothing that happened during the gap is lost.

What it watches: Deployments in the configured namespaces (all when none), optionally narrowed by a
label selector; Pods in all namespaces, because a node's free GPUs depend on every pod bound there,
not only on ours (pods neither requesting GPUs nor owned by a Deployment are dropped on arrival);
all Nodes. Objects are kept as the compact dataclasses of `kube.objects`.

Wake-ups: `changed` (an asyncio.Event) is set, and the callbacks from `add_wakeup` are called, when
something the decisions depend on changed: a managed Deployment (all Deployments when no managed
set is given via `manage`), a pod of one, a pod holding GPUs, a node. Status heartbeats that change
nothing we keep do not wake the loop.

Reachability: `down_since` is when the first of the collections failed to list or watch (an API
error, a broken connection) and has not been listed or watched again since; None while every
collection is being watched. `last_heard` is the oldest of the collections' latest word from the
server (a list, an event or a bookmark): how stale the cache may be. A change of reachability
wakes the loop too, and is told to the `add_health_listener` callbacks. The items stay as last seen
while the server is away: the multi-cluster wiring (`kube.fleet`) counts them, and the engine holds
the pools of a cluster that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from autoscaler.backoff import Backoff, Retry
from autoscaler.kube.objects import DeploymentInfo, NodeInfo, PodInfo, Raw

log = logging.getLogger(__name__)

# Reconnects of a broken watch: quick at first, at most every 10 s while the API server is away.
WATCH_BACKOFF = Backoff(base_seconds=0.2, cap_seconds=10.0, jitter=0.2)

T = TypeVar("T", DeploymentInfo, PodInfo, NodeInfo)
ListFn = Callable[..., Awaitable[aiohttp.ClientResponse]]
ChangeFn = Callable[[Any, Any], None]


class _GoneError(Exception):
    """The watch's resourceVersion is older than the server's history: relist."""


@dataclass
class ReflectorStats:
    lists: int = 0
    watches: int = 0
    relists_after_gone: int = 0
    reconnects_after_error: int = 0
    events: int = 0
    bookmarks: int = 0


class Reflector(Generic[T]):
    """List-then-watch of one collection into `items`, calling `on_change(old, new)` per change
    (`new is None`: deleted; `old is None`: added)."""

    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        parse: Callable[[Raw], T],
        key: Callable[[T], str],
        on_change: ChangeFn,
        *,
        keep: Callable[[T], bool] = lambda _: True,
        watch_timeout: tuple[int, int] = (240, 300),
        backoff: Retry | None = None,
        clock: Callable[[], float] = time.time,
        on_health: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._parse: Callable[[Raw], T] = parse
        self._key: Callable[[T], str] = key
        self._keep: Callable[[T], bool] = keep
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._backoff = backoff or Retry(WATCH_BACKOFF)
        self.items: dict[str, T] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.stats = ReflectorStats()
        self._clock = clock
        self._on_health = on_health
        # When listing or watching started to fail (None: it works); when the server last spoke.
        self.failing_since: float | None = None
        self.last_heard: float | None = None

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                if not await self._watch():
                    # Ended at once with nothing said (a proxy cutting watches, say): do not spin.
                    await asyncio.sleep(self._backoff.next())
            except _GoneError:
                self.stats.relists_after_gone += 1
                log.info("%s: watch history expired (410 Gone), relisting", self.name)
                need_list = True
            except (ApiException, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.stats.reconnects_after_error += 1
                self._failing(True)
                delay = self._backoff.next()
                log.warning("%s: %s; retrying in %.2fs", self.name, _describe(exc), delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        self.stats.lists += 1
        resp = await self._list_fn(_request_timeout=60.0)
        try:
            body = await read_json(resp)
        finally:
            resp.release()
        fresh: dict[str, T] = {}
        for raw in body.get("items") or []:
            obj = self._parse(raw)
            if self._keep(obj):
                fresh[self._key(obj)] = obj
        old_items, self.items = self.items, fresh
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        for k, old in old_items.items():
            if k not in fresh:
                self._on_change(old, None)
        for k, new in fresh.items():
            old_obj = old_items.get(k)
            if old_obj != new:
                self._on_change(old_obj, new)
        self._backoff.reset()
        self._heard()
        self._failing(False)
        self.synced.set()

    async def _watch(self) -> bool:
        """One watch until the server ends it; False when it ended at once without a word."""
        self.stats.watches += 1
        started = asyncio.get_running_loop().time()
        heard = False
        timeout = random.randint(*self._watch_timeout)
        resp = await self._list_fn(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # The server ends the watch after `timeout`; past that plus a margin the connection is
            # hung (a silent network drop), and the client's own timeout breaks it.
            _request_timeout=float(timeout + 30),
        )
        try:
            if resp.status == 410:
                raise _GoneError
            if resp.status != 200:
                await read_json(resp)  # raises ApiException with the Status body
            self._heard()
            self._failing(False)
            while True:
                line = await resp.content.readline()
                if not line:
                    # The server ended the watch: resume from resource_version.
                    return heard or asyncio.get_running_loop().time() - started >= 1.0
                if line.strip():
                    heard = True
                    self._heard()
                    self._apply(json.loads(line))
        finally:
            resp.release()

    def _heard(self) -> None:
        self.last_heard = self._clock()

    def _failing(self, failing: bool) -> None:
        if failing == (self.failing_since is not None):
            return
        self.failing_since = self._clock() if failing else None
        self._on_health()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        raw = event.get("object") or {}
        if kind == "ERROR":
            code = raw.get("code")
            if code == 410:
                raise _GoneError
            raise ApiException(status=code or 500, reason=f"watch error: {raw.get('message', '')}")
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            if rv:
                self.resource_version = str(rv)
            return
        self.stats.events += 1
        obj = self._parse(raw)
        k = self._key(obj)
        old = self.items.get(k)
        if kind == "DELETED" or not self._keep(obj):
            if old is not None:
                del self.items[k]
                self._on_change(old, None)
        else:
            self.items[k] = obj
            if old != obj:
                self._on_change(old, obj)
        if rv:
            self.resource_version = str(rv)
        self._backoff.reset()


class KubeCache:
    """The three reflectors, indexes over them, and the wake-up signal. See the module doc."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespaces: Iterable[str] = (),
        deployment_selector: str | None = None,
        watch_timeout: tuple[int, int] = (240, 300),
        backoff: Callable[[], Retry] = lambda: Retry(WATCH_BACKOFF),
        clock: Callable[[], float] = time.time,
    ) -> None:
        apps = client.AppsV1Api(api)
        core = client.CoreV1Api(api)
        self.namespaces = tuple(namespaces)
        self.changed = asyncio.Event()
        self._wakeups: list[Callable[[], None]] = []
        self._deployment_listeners: list[Callable[[DeploymentInfo | None, DeploymentInfo | None], None]] = []
        self._managed: frozenset[str] | None = None
        # Pod indexes: "namespace/deployment" -> pod key -> pod; node name -> pod key -> pod.
        self._by_deployment: dict[str, dict[str, PodInfo]] = {}
        self._by_node: dict[str, dict[str, PodInfo]] = {}
        # "namespace/deployment" -> a number that changes whenever one of its pods does (from one
        # counter for all, so a number is never reused): lets a reader reuse what it worked out
        # from a Deployment's pods until they change (`pods_generation`).
        self._pods_generation: dict[str, int] = {}
        self._pods_changes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._health_listeners: list[Callable[[bool], None]] = []
        self._up = True

        deployment_lists: list[tuple[str, ListFn]] = (
            [
                (
                    f"deployments[{ns}]",
                    partial(
                        apps.list_namespaced_deployment_without_preload_content,
                        ns,
                        label_selector=deployment_selector,
                    ),
                )
                for ns in self.namespaces
            ]
            if self.namespaces
            else [
                (
                    "deployments",
                    partial(
                        apps.list_deployment_for_all_namespaces_without_preload_content,
                        label_selector=deployment_selector,
                    ),
                )
            ]
        )
        self.deployment_reflectors: list[Reflector[DeploymentInfo]] = [
            Reflector(
                name,
                fn,
                DeploymentInfo.from_raw,
                _deployment_key,
                self._deployment_changed,
                watch_timeout=watch_timeout,
                backoff=backoff(),
                clock=clock,
                on_health=self._health_changed,
            )
            for name, fn in deployment_lists
        ]
        self.pod_reflector: Reflector[PodInfo] = Reflector(
            "pods",
            core.list_pod_for_all_namespaces_without_preload_content,
            PodInfo.from_raw,
            _ns_key,
            self._pod_changed,
            keep=lambda p: p.gpus > 0 or bool(p.deployment),
            watch_timeout=watch_timeout,
            backoff=backoff(),
            clock=clock,
            on_health=self._health_changed,
        )
        self.node_reflector: Reflector[NodeInfo] = Reflector(
            "nodes",
            core.list_node_without_preload_content,
            NodeInfo.from_raw,
            lambda n: n.name,
            self._node_changed,
            watch_timeout=watch_timeout,
            backoff=backoff(),
            clock=clock,
            on_health=self._health_changed,
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def reflectors(self) -> list[Reflector[Any]]:
        return [*self.deployment_reflectors, self.pod_reflector, self.node_reflector]

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(r.run(), name=f"reflector-{r.name}") for r in self.reflectors]

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Until every collection has been listed once (raises TimeoutError after `timeout`)."""
        await asyncio.wait_for(asyncio.gather(*(r.synced.wait() for r in self.reflectors)), timeout)

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ---- reachability ------------------------------------------------------------------------

    @property
    def down_since(self) -> float | None:
        """When the first collection that is failing now started to fail; None: all watched."""
        failing = [r.failing_since for r in self.reflectors if r.failing_since is not None]
        return min(failing) if failing else None

    @property
    def last_heard(self) -> float | None:
        """The oldest of the collections' latest word from the server (None: one never spoke)."""
        heard = [r.last_heard for r in self.reflectors]
        return None if any(t is None for t in heard) else min(t for t in heard if t is not None)

    def add_health_listener(self, callback: Callable[[bool], None]) -> None:
        """`callback(up)` at each change of reachability (see the module doc)."""
        self._health_listeners.append(callback)

    def _health_changed(self) -> None:
        up = self.down_since is None
        if up == self._up:
            return
        self._up = up
        for listener in self._health_listeners:
            listener(up)
        self._wake()

    # ---- what matters ------------------------------------------------------------------------

    def manage(self, keys: Iterable[str] | None) -> None:
        """The `namespace/deployment` keys of the managed pools (None: every Deployment matters).
        Only changes to these, their pods, GPU pods and nodes wake the loop."""
        self._managed = frozenset(keys) if keys is not None else None

    def add_wakeup(self, callback: Callable[[], None]) -> None:
        self._wakeups.append(callback)

    def add_deployment_listener(
        self, callback: Callable[[DeploymentInfo | None, DeploymentInfo | None], None]
    ) -> None:
        self._deployment_listeners.append(callback)

    # ---- reads (no API calls) ----------------------------------------------------------------

    def deployment(self, key: str) -> DeploymentInfo | None:
        for r in self.deployment_reflectors:
            found = r.items.get(key)
            if found is not None:
                return found
        return None

    def deployments(self) -> list[DeploymentInfo]:
        return [d for r in self.deployment_reflectors for d in r.items.values()]

    def pods_of(self, key: str) -> Iterable[PodInfo]:
        return self._by_deployment.get(key, {}).values()

    def pods_generation(self, key: str) -> int:
        """A number that is the same as long as the pods of Deployment `key` are (`pods_of`)."""
        return self._pods_generation.get(key, 0)

    def pods_on(self, node: str) -> Iterable[PodInfo]:
        return self._by_node.get(node, {}).values()

    def nodes(self) -> Iterable[NodeInfo]:
        return self.node_reflector.items.values()

    # ---- change handling ---------------------------------------------------------------------

    def _wake(self) -> None:
        self.changed.set()
        for callback in self._wakeups:
            callback()

    def is_managed(self, key: str) -> bool:
        return self._managed is None or key in self._managed

    def _deployment_changed(self, old: DeploymentInfo | None, new: DeploymentInfo | None) -> None:
        for listener in self._deployment_listeners:
            listener(old, new)
        either = new or old
        if either is not None and self.is_managed(either.key):
            self._wake()

    def _pod_changed(self, old: PodInfo | None, new: PodInfo | None) -> None:
        self._pods_changes += 1
        if old is not None:
            _unindex(self._by_deployment, f"{old.namespace}/{old.deployment}", old)
            _unindex(self._by_node, old.node_name, old)
            self._pods_generation[f"{old.namespace}/{old.deployment}"] = self._pods_changes
        if new is not None:
            if new.deployment:
                key = f"{new.namespace}/{new.deployment}"
                self._by_deployment.setdefault(key, {})[_ns_key(new)] = new
                self._pods_generation[key] = self._pods_changes
            if new.node_name:
                self._by_node.setdefault(new.node_name, {})[_ns_key(new)] = new
        either = new or old
        assert either is not None
        if either.gpus > 0 or (
            either.deployment and self.is_managed(f"{either.namespace}/{either.deployment}")
        ):
            self._wake()

    def _node_changed(self, old: NodeInfo | None, new: NodeInfo | None) -> None:
        self._wake()


def _ns_key(obj: PodInfo) -> str:
    return f"{obj.namespace}/{obj.name}"


def _deployment_key(dep: DeploymentInfo) -> str:
    return dep.key  # the same string, not a second one per Deployment


def _unindex(index: dict[str, dict[str, PodInfo]], bucket: str, pod: PodInfo) -> None:
    pods = index.get(bucket)
    if pods is not None:
        pods.pop(_ns_key(pod), None)
        if not pods:
            del index[bucket]


async def read_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of a `*_without_preload_content` response; ApiException (with the
    response headers, for Retry-After) when the status is not 200."""
    text = await resp.text()
    if resp.status != 200:
        exc = ApiException(status=resp.status, reason=resp.reason or "", body=text)
        exc.headers = resp.headers
        raise exc
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
