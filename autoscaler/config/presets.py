"""GPU-inference trigger presets: what vLLM, Triton, the DCGM exporter and TGI export, and the one
function that turns a preset into its PromQL query.

A preset trigger (`type: vllm`, `metric: waiting`, scoped by namespace and Deployment) is a
Prometheus trigger whose query is written here, from the metric and label names those servers
really export, instead of by hand in every policy file. `config.models` validates the preset's
fields against `PRESETS`; `config.compile` compiles it into an ordinary `PrometheusOptions` whose
`query` is `preset_query(...)`, so the Prometheus source and everything after it see a plain
prometheus trigger. Pure: no I/O, no pydantic.

Every name below was checked against the servers' sources and docs (see `PresetMetric.exported_by`).
Labels the servers do not set themselves (`namespace`, `pod`) are the scrape target's, added by
Prometheus' Kubernetes discovery (prometheus-operator's PodMonitor/ServiceMonitor name them so);
`namespaceLabel` and `podLabel` rename them for a Prometheus that relabels otherwise.

Label values reach PromQL only through `promql_string`, which quotes them and escapes `\\` and `"`,
and refuses control characters: a policy file cannot close the string and append PromQL of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Aggregation = Literal["avg", "max"]

# A queue that grows by this many requests per replica adds a replica. A request that waits is one
# its replica had no room for (batch or KV cache full): a few per replica keeps the wait to a few
# completions, without chasing the single request that waits one scheduler step. A starting point
# to tune with a load test, like every default here.
QUEUED_PER_REPLICA = 5.0
# The KV-cache fraction to hold. Above it a burst of long sequences runs the cache out, and vLLM
# preempts running requests to make room (recomputing them later): 20 % headroom absorbs one.
KV_CACHE_LEVEL = 0.8
# DCGM_FI_DEV_GPU_UTIL is the percentage of time a kernel was running. Past about 80 % a GPU has no
# idle gaps left to absorb a burst; the HPA's own CPU examples hold the same level.
GPU_UTIL_LEVEL = 80.0


@dataclass(frozen=True, slots=True)
class PresetMetric:
    """One metric of one server, as a preset reads it.

    A `count` (requests waiting, running, pending) is summed over the scoped pods and compared with
    a target per replica (AverageValue: replicas = sum / target). A `level` (a cache fraction, a
    utilisation, a latency) is averaged (or maxed) over the pods and held at a target for the whole
    workload (Value: replicas = ready replicas x level / target)."""

    series: tuple[str, ...]  # metric names; several: the first a server exports is read
    kind: Literal["count", "level"]
    unit: str
    default_target: float | None  # None: no default is right within an order of magnitude
    no_default: str  # why there is none, and how to choose (when default_target is None)
    max_target: float | None  # a level's ceiling: 1 for a fraction, 100 for a percent
    exported_by: str
    rate_ratio: bool = False  # Triton's queue time: rate(series[0]) / rate(series[1])


PRESETS: dict[str, dict[str, PresetMetric]] = {
    "vllm": {
        "waiting": PresetMetric(
            ("vllm:num_requests_waiting",),
            "count",
            "requests",
            QUEUED_PER_REPLICA,
            "",
            None,
            "vLLM 0.4 onwards (V0 and V1 engines), labels model_name (and engine, V1)",
        ),
        "running": PresetMetric(
            ("vllm:num_requests_running",),
            "count",
            "requests",
            None,
            "the requests one replica runs at once within your latency goal, "
            "from a load test (at most its --max-num-seqs, which differs by vLLM version and GPU)",
            None,
            "vLLM 0.4 onwards (V0 and V1 engines), labels model_name (and engine, V1)",
        ),
        "kvCacheUsage": PresetMetric(
            # vLLM 0.9 renamed the gauge (V1 engine) and kept the old name, deprecated; by vLLM's
            # deprecation policy 0.10 hides it (unless --show-hidden-metrics-for-version=0.9) and a
            # later release drops it. Reading the new name, else the old, serves every version;
            # where both exist they carry the same value.
            ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            "level",
            "a fraction, 1 = full",
            KV_CACHE_LEVEL,
            "",
            1.0,
            "vllm:kv_cache_usage_perc from vLLM 0.9; vllm:gpu_cache_usage_perc before it, and deprecated "
            "in 0.9 (hidden from 0.10); labels model_name (and engine, V1)",
        ),
    },
    "triton": {
        "pending": PresetMetric(
            ("nv_inference_pending_request_count",),
            "count",
            "requests",
            QUEUED_PER_REPLICA,
            "",
            None,
            "Triton 23.09+ (absent from 23.08), labels model and version",
        ),
        "queueDuration": PresetMetric(
            ("nv_inference_queue_duration_us", "nv_inference_request_success"),
            "level",
            "milliseconds per request",
            None,
            "the mean queue time per request, in milliseconds, that your latency goal "
            "allows (Triton queues for dynamic batching on purpose: max_queue_delay_microseconds)",
            None,
            "Triton 2.x (20.x) onwards, counters in microseconds, labels model and version",
            rate_ratio=True,
        ),
    },
    "dcgm": {
        "gpuUtil": PresetMetric(
            ("DCGM_FI_DEV_GPU_UTIL",),
            "level",
            "percent",
            GPU_UTIL_LEVEL,
            "",
            100.0,
            "dcgm-exporter 2.x to 4.x default counters; labels gpu, UUID, device, modelName, Hostname, "
            "and namespace, pod, container with Kubernetes pod attribution",
        ),
        "fbUsed": PresetMetric(
            ("DCGM_FI_DEV_FB_USED",),
            "level",
            "MiB",
            None,
            "the MiB to hold, for your GPU's memory (24576 on an L4, 81920 on an H100); note that "
            "vLLM and TGI preallocate most of the memory at start, so it does not follow load there",
            None,
            "dcgm-exporter 2.x to 4.x default counters; labels as DCGM_FI_DEV_GPU_UTIL",
        ),
    },
    "tgi": {
        "queueSize": PresetMetric(
            ("tgi_queue_size",),
            "count",
            "requests",
            QUEUED_PER_REPLICA,
            "",
            None,
            "text-generation-inference router 1.x to 3.x (gauge, no labels of its own)",
        ),
        "batchSize": PresetMetric(
            ("tgi_batch_current_size",),
            "count",
            "requests",
            None,
            "the batch one replica runs within your latency goal, from a load "
            "test (at most what --max-batch-total-tokens allows)",
            None,
            "text-generation-inference router 1.x to 3.x (gauge, no labels of its own)",
        ),
    },
}

# Trigger types whose options name a Prometheus server (serverAddress, credentials).
PROMETHEUS_TRIGGER_TYPES = ("prometheus", *PRESETS)

# What Prometheus accepts as a label name, and as a range duration (one unit, e.g. 1m, 90s).
LABEL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
RANGE_DURATION = r"^[1-9][0-9]{0,5}(ms|s|m|h)$"
# Characters a label value may not hold: a newline (or any control character) in a policy file's
# label value is a mistake, and refusing it keeps every query on one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The pod names a Deployment's ReplicaSets give: <deployment>-<pod-template-hash>-<5 characters>.
# Both parts are alphanumeric, so a sibling Deployment `<deployment>-small` (whose pods have one
# more dash-separated part) does not match.
_DEPLOYMENT_POD_SUFFIX = "-[a-z0-9]+-[a-z0-9]+"


def control_character(value: str) -> str | None:
    """The first control character in `value` (as repr), or None."""
    found = _CONTROL.search(value)
    return repr(found.group()) if found else None


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal. PromQL strings unescape like Go's, so only
    the backslash and the quote need escaping; control characters are refused (ValueError) rather
    than escaped, since the models reject them before a query is built."""
    bad = control_character(value)
    if bad is not None:
        raise ValueError(f"label value holds a control character {bad}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def deployment_pod_regex(deployments: Sequence[str]) -> str:
    """A regex matching the pods of these Deployments and no other Deployment's. Deployment names
    hold only [a-z0-9.-]; '.' is the only regex metacharacter among them."""
    names = [name.replace(".", "\\.") for name in deployments]
    alternatives = names[0] if len(names) == 1 else "(?:" + "|".join(names) + ")"
    return alternatives + _DEPLOYMENT_POD_SUFFIX


@dataclass(frozen=True, slots=True)
class Scope:
    """Which series a preset reads: the namespace, the pods (a regex on the pod label), and further
    label equalities (`selector`, e.g. vLLM's model_name or Triton's model)."""

    namespace: str
    pod_regex: str | None = None
    selector: Mapping[str, str] | None = None
    namespace_label: str = "namespace"
    pod_label: str = "pod"

    def matchers(self) -> str:
        parts = [f"{self.namespace_label}={promql_string(self.namespace)}"]
        if self.pod_regex is not None:
            parts.append(f"{self.pod_label}=~{promql_string(self.pod_regex)}")
        selector = sorted((self.selector or {}).items())
        parts.extend(f"{name}={promql_string(value)}" for name, value in selector)
        return "{" + ",".join(parts) + "}"


def preset_query(
    server: str,
    metric: str,
    scope: Scope,
    aggregation: Aggregation = "avg",
    rate_window: str = "1m",
    by: str | None = None,
) -> str:
    """The PromQL query of one preset: the only place one is written. `by`: a label to keep, one
    series per value of it (idle-first scale-in reads one per pod), instead of one in all.

    Counts are summed over the scoped pods. Levels are averaged (or maxed) over them; a level with
    two names reads the first where a pod exports it and the second elsewhere (`or` matches series
    by their labels, the metric name aside). Triton's queue time is the queued microseconds per
    successful request over `rate_window`, in milliseconds; an idle server reads 0 (its counters
    exist and did not move), while a server with no series at all is an empty result, an error."""
    spec = PRESETS[server][metric]
    selector = scope.matchers()
    group = f" by ({by}) " if by else ""
    if spec.rate_ratio:
        queued, done = spec.series
        # clamp_min: no request in the window is 0 ms of queueing, not 0/0.
        return (
            f"sum{group}(rate({queued}{selector}[{rate_window}])) / "
            f"clamp_min(sum{group}(rate({done}{selector}[{rate_window}])), 1e-9) / 1000"
        )
    vector = " or ".join(f"{name}{selector}" for name in spec.series)
    operator = "sum" if spec.kind == "count" else aggregation
    return f"{operator}{group}({vector})"


# The placeholder a pod-load query holds for the pods to read: a regex matching exactly their names,
# written by the reader just before a scale-in (`sources.podload`).
PODS_PLACEHOLDER = "$pods"


def pod_load_query(server: str, metric: str, namespace: str, namespace_label: str, pod_label: str) -> str:
    """The query of a preset's metric per pod (idle-first scale-in): one series per pod, labelled
    with `pod_label`, over the pods `PODS_PLACEHOLDER` will name. Counts are summed and levels
    averaged over a pod's series (a pod with two GPUs has two DCGM series)."""
    scope = Scope(namespace, PODS_PLACEHOLDER, None, namespace_label, pod_label)
    return preset_query(server, metric, scope, "avg", "1m", by=pod_label)
