"""Prometheus exposition text written directly, for fleets too big for a per-scrape conversion.

Role: the text of `/metrics` (classic 0.0.4 and OpenMetrics 1.0) for the families `telemetry`
keeps itself: metric headers, label and value formatting that match prometheus_client's encoders
byte for byte, counters that keep each series' rendered line (a scrape of 180,000 counter series
is one join, not 180,000 formattings), and a histogram. Callers: `autoscaler.telemetry` only.

Going through the OpenTelemetry SDK and its Prometheus exporter instead, a scrape of 1,000
workloads took 1.8 s of CPU and one of 10,000 timed out (benchmarks/scrape.py): every series of
every scrape became an `Observation`, a data point, a prometheus_client `Sample`, then text.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from prometheus_client import utils

go_float = cast(Callable[[float], str], utils.floatToGoString)  # untyped upstream

# Replica counts and GPUs are small whole numbers: most of the values a scrape formats. (Not 0: a
# lookup would give -0.0 the text of 0.0.)
_SMALL_INTS = {float(i): go_float(i) for i in range(1, 1025)}


def fmt(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting: `4.0`, `1e+21`, `NaN`)."""
    text = _SMALL_INTS.get(value)
    return text if text is not None else go_float(value)


def _escape_label(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value  # nearly always: Kubernetes names and trigger names
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(attributes: Mapping[str, str]) -> str:
    """`{a="1",b="2"}` with the names sorted, as the encoders write it; empty for no labels."""
    if not attributes:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(attributes.items())) + "}"


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family: `name` as OpenMetrics names it (a counter's without `_total`)."""

    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    help: str
    unit: str = ""

    @property
    def sample_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def header(self, openmetrics: bool) -> str:
        if openmetrics:
            doc = self.help.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            unit = f"# UNIT {self.name} {self.unit}\n" if self.unit else ""
            return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n{unit}"
        # The classic format names a counter's family by its sample name and has no UNIT line.
        name = self.sample_name
        doc = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n"


class Counter:
    """A counter family whose series are kept as rendered lines: an `add` formats one line, a scrape
    joins them (and reuses the join until the next `add`). Thread-safe: `add` runs on the event loop,
    `text` in the HTTP server's thread."""

    def __init__(self, family: Family) -> None:
        self.family = family
        # Per series (its sorted labels): value, and its line up to the value.
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._prefixes: dict[tuple[tuple[str, str], ...], str] = {}
        self._lines: dict[tuple[tuple[str, str], ...], str] = {}
        self._text: bytes | None = b""
        self._lock = threading.Lock()

    def add(self, amount: float, attributes: Mapping[str, str]) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            prefix = self._prefixes.get(key)
            if prefix is None:
                prefix = self._prefixes[key] = f"{self.family.sample_name}{label_text(attributes)} "
            value = self._values.get(key, 0.0) + amount
            self._values[key] = value
            self._lines[key] = f"{prefix}{fmt(value)}\n"
            self._text = None

    def text(self) -> bytes:
        with self._lock:
            if self._text is None:
                self._text = "".join(self._lines.values()).encode()
            return self._text

    def series(self) -> list[tuple[dict[str, str], float]]:
        """(attributes, value) of every series (the OTLP exporter's view)."""
        with self._lock:
            return [(dict(key), value) for key, value in self._values.items()]


class Histogram:
    """A label-less histogram with fixed bucket bounds (a value counts in the first bucket whose
    bound is >= it, as OpenTelemetry's explicit-bucket aggregation does)."""

    def __init__(self, family: Family, bounds: Sequence[float]) -> None:
        self.family = family
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def record(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    def text(self) -> bytes:
        with self._lock:
            counts, total = list(self._counts), self._sum
        name = self.family.name
        lines = []
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{go_float(bound)}"}} {fmt(cumulative)}\n')
        lines.append(f"{name}_count {fmt(cumulative)}\n{name}_sum {fmt(total)}\n")
        return "".join(lines).encode()


def exposition(prefix: bytes, families: Iterable[tuple[Family, bytes]], openmetrics: bool) -> bytes:
    """`prefix` (another encoder's output, e.g. prometheus_client's process metrics) followed by
    each family's header and sample lines, ended as the format wants (`# EOF` for OpenMetrics). A
    family with no sample is left out, as the OpenTelemetry exporter did. One copy of the samples:
    at 10,000 workloads they are tens of megabytes."""
    eof = b"# EOF\n"
    if openmetrics and prefix.endswith(eof):
        prefix = prefix[: -len(eof)]
    parts = [prefix]
    for family, samples in families:
        if samples:
            parts.append(family.header(openmetrics).encode())
            parts.append(samples)
    if openmetrics:
        parts.append(eof)
    return b"".join(parts)
