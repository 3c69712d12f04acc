"""The per-pod load that idle-first scale-in ranks pods by (`kube.idlefirst`), read from Prometheus.

`PodLoadSource.read(namespace, pods)` runs the workload's pod-load query (`config.models.PodLoad`:
a preset's metric by pod, or the operator's PromQL) with `$pods` replaced by a regex matching
exactly those pods, and returns the load of each pod that has one. A series is a pod's when its
pod label names one of the pods and its namespace label, if it has one, is the namespace; other
series are ignored, so a query that is not scoped still works. Two series for one pod, or a series
without the pod label, make the whole reading an error (the query must aggregate by pod); a NaN or
infinite value leaves that pod without a value. Missing data is never a zero load: `kube.idlefirst`
falls back to the default order when a ready pod has no value. Errors are `QueryError`s whose
message names the workload, the query and the server, never a credential (`PrometheusSource`).

`PodLoadReaders` holds one reader per workload with `spec.scaleIn.podLoad`, looked up by pool key:
the live wiring rebuilds it on every configuration (keeping the readers whose options did not
change) and hands its `get` to the actuators. Callers: `autoscaler.live`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from autoscaler.config.access import DEFAULT_ACCESS, SecretAccess
from autoscaler.config.models import PodLoadOptions
from autoscaler.config.presets import PODS_PLACEHOLDER, promql_string
from autoscaler.engine.types import WorkloadSpec
from autoscaler.sources.base import SourceContext
from autoscaler.sources.prometheus import PrometheusSource, QueryError


def pods_regex(pods: Sequence[str]) -> str:
    """A regex matching exactly these pod names (PromQL anchors `=~`), written as it goes between
    the quotes of a PromQL string. Pod names hold only [a-z0-9.-]; '.' is the one metacharacter."""
    regex = "|".join(name.replace(".", "\\.") for name in pods)
    return promql_string(regex)[1:-1]


class PodLoadSource:
    """The pod load of one workload. See the module doc."""

    def __init__(
        self,
        label: str,
        options: PodLoadOptions,
        server: str,
        environ: Mapping[str, str],
        access: SecretAccess = DEFAULT_ACCESS,
        query_params: Mapping[str, str] | None = None,
    ) -> None:
        # Readings are not stamped (the ranking uses them at once): the clock is never read.
        # `query_params`: extra API parameters, as for `PrometheusSource` (a test's fixed `time`).
        self._prometheus = PrometheusSource(
            label,
            options,
            server,
            environ,
            clock=lambda: 0.0,
            access=access,
            what="pod load of",
            query_params=query_params,
        )
        self.pod_options = options

    @property
    def budget_seconds(self) -> float:
        return self.pod_options.budget_seconds

    async def read(self, namespace: str, pods: Sequence[str]) -> dict[str, float]:
        query = self.pod_options.query.replace(PODS_PLACEHOLDER, pods_regex(pods))
        result = await self._prometheus.query(query)
        try:
            return self._per_pod(result, namespace, set(pods))
        except QueryError as exc:
            raise QueryError(self._prometheus.message(str(exc))) from None

    async def close(self) -> None:
        await self._prometheus.close()

    def _per_pod(self, result: object, namespace: str, pods: set[str]) -> dict[str, float]:
        if not isinstance(result, list) or (result and not isinstance(result[0], dict)):
            raise QueryError("not an instant vector: the query must return one series per pod")
        pod_label, namespace_label = self.pod_options.pod_label, self.pod_options.namespace_label
        loads: dict[str, float] = {}
        seen: set[str] = set()
        for series in result:
            labels = series.get("metric") or {}
            if pod_label not in labels:
                raise QueryError(
                    f"a series without the label '{pod_label}': aggregate by it, e.g. sum by ({pod_label})"
                )
            pod = labels[pod_label]
            if pod not in pods or labels.get(namespace_label, namespace) != namespace:
                continue
            if pod in seen:
                raise QueryError(f"several series for pod {pod}: aggregate by pod, e.g. sum by ({pod_label})")
            seen.add(pod)
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                raise QueryError("not an instant vector: the query must return one series per pod") from None
            if math.isfinite(value):
                loads[pod] = value
        return loads


class _Unreadable:
    """A pod-load option with no Prometheus to ask: every reading fails, saying so."""

    def __init__(self, message: str, options: PodLoadOptions) -> None:
        self.message = message
        self.options = options
        self.budget_seconds = options.budget_seconds

    async def read(self, namespace: str, pods: Sequence[str]) -> dict[str, float]:
        raise QueryError(self.message)

    async def close(self) -> None:
        return None


class PodLoadReaders:
    """The pod-load reader of each pool whose workload has one. See the module doc."""

    def __init__(self, context: SourceContext, access: SecretAccess = DEFAULT_ACCESS) -> None:
        self._context = context
        self._access = access
        self._by_workload: dict[str, PodLoadSource | _Unreadable] = {}
        self._by_pool: dict[str, PodLoadSource | _Unreadable] = {}

    def get(self, pool: str) -> PodLoadSource | _Unreadable | None:
        return self._by_pool.get(pool)

    async def rebuild(self, workloads: Sequence[WorkloadSpec]) -> None:
        """Readers for these workloads; an unchanged one is kept, the others closed."""
        old, self._by_workload, self._by_pool = self._by_workload, {}, {}
        for workload in workloads:
            options = workload.pod_load
            if not isinstance(options, PodLoadOptions):
                continue
            key = f"{workload.namespace}/{workload.name}"
            reader = old.get(key)
            if reader is None or _options(reader) != options:
                reader = self._build(key, options)
            self._by_workload[key] = reader
            for pool in workload.pools:
                self._by_pool[pool.key] = reader
        for key, reader in old.items():
            if self._by_workload.get(key) is not reader:
                await reader.close()

    async def aclose(self) -> None:
        await self.rebuild(())

    def _build(self, key: str, options: PodLoadOptions) -> PodLoadSource | _Unreadable:
        server = options.server_address or self._context.prometheus_url
        label = f"'{key}'"
        if not server:
            return _Unreadable(
                f"pod load of {label} (prometheus query '{options.query}'): no serverAddress under "
                "scaleIn.podLoad and no default Prometheus address configured",
                options,
            )
        return PodLoadSource(label, options, server, self._context.environ, access=self._access)


def _options(reader: PodLoadSource | _Unreadable) -> PodLoadOptions:
    return reader.pod_options if isinstance(reader, PodLoadSource) else reader.options
