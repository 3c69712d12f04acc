"""Request traces: reading the Azure LLM inference CSVs and deriving the stream a simulation replays.

A trace is three parallel arrays (arrival seconds since the first row, prompt tokens, generated
tokens). `load_trace` applies, in this order, a window of the original trace time, a time
compression (`speed`) and a load multiplier (`scale`); all randomness is seeded, so a derived stream
is a pure function of its arguments. `merge` replays several derived streams into one queue (a
workload serving two kinds of traffic). Callers: `sim.scenario` (building a run) and the tests.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Names a scenario or `--trace` may use instead of a path.
BUNDLED = {
    "code": "AzureLLMInferenceTrace_code.csv",
    "conv": "AzureLLMInferenceTrace_conv.csv",
}
HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
# Copies made by `scale` are shifted by up to this much so that they do not arrive in lockstep with
# their original (a real second user does not click at the same microsecond).
SCALE_JITTER_SECONDS = 1.0


class TraceError(ValueError):
    """A trace file we cannot read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    arrival: FloatArray  # seconds, sorted, the first row at 0 (or the window start)
    context_tokens: IntArray
    generated_tokens: IntArray

    def __len__(self) -> int:
        return int(self.arrival.size)

    @property
    def span(self) -> float:
        """Seconds from time 0 to the last arrival."""
        return float(self.arrival[-1]) if self.arrival.size else 0.0


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("autoscaler.sim").joinpath("data", BUNDLED[name])))


def resolve(source: str | Path) -> Path:
    """`code`, `conv` or a path."""
    if isinstance(source, str) and source in BUNDLED:
        return bundled_path(source)
    return Path(source)


def read_trace(path: str | Path) -> Trace:
    """Parse `TIMESTAMP,ContextTokens,GeneratedTokens` rows (any line endings) into a Trace."""
    path = Path(path)
    stamps: list[str] = []
    context: list[int] = []
    generated: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != HEADER:
                raise TraceError(f"{path}:1: expected the header {','.join(HEADER)}, got {header}")
            for row in reader:
                if not row:
                    continue
                try:
                    stamp, ctx, gen = row
                    context.append(int(ctx))
                    generated.append(int(gen))
                except ValueError as exc:
                    raise TraceError(f"{path}:{reader.line_num}: cannot read row {row}: {exc}") from exc
                # numpy's ISO parser wants the 'T'; the Azure files use a space.
                stamps.append(stamp.strip().replace(" ", "T", 1))
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from exc
    try:
        ts = np.array(stamps, dtype="datetime64[ns]")
    except ValueError as exc:
        raise TraceError(f"{path}: unreadable TIMESTAMP: {exc}") from exc
    arrival = (ts - ts[0]).astype(np.int64) / 1e9 if ts.size else np.zeros(0)
    order = np.argsort(arrival, kind="stable")  # the Azure files are sorted; others may not be
    return Trace(
        name=path.stem,
        arrival=np.asarray(arrival[order], dtype=np.float64),
        context_tokens=np.asarray(context, dtype=np.int64)[order],
        generated_tokens=np.asarray(generated, dtype=np.int64)[order],
    )


def load_trace(
    source: str | Path,
    *,
    window: tuple[float, float] | None = None,
    speed: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
) -> Trace:
    """Read a trace and derive the stream to replay.

    window: (start, end) in seconds of the original trace; the result starts at 0 = `start`.
    speed:  arrivals come `speed` times faster (a 3600 s trace at speed 4 lasts 900 s).
    scale:  load multiplier. Each request appears floor(scale) times (the original plus copies
            jittered by up to SCALE_JITTER_SECONDS), and once more with probability scale % 1.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    trace = read_trace(resolve(source))
    name = source if isinstance(source, str) and source in BUNDLED else trace.name
    return derive(trace, name=name, window=window, speed=speed, scale=scale, seed=seed)


def derive(
    trace: Trace,
    *,
    name: str | None = None,
    window: tuple[float, float] | None = None,
    speed: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
) -> Trace:
    """The `load_trace` transformations on an already parsed trace."""
    arrival, ctx, gen = trace.arrival, trace.context_tokens, trace.generated_tokens
    if window is not None:
        start, end = window
        if end <= start:
            raise ValueError(f"window end must be after its start, got {start}:{end}")
        keep = (arrival >= start) & (arrival < end)
        arrival, ctx, gen = arrival[keep] - start, ctx[keep], gen[keep]
    arrival = arrival / speed
    if scale != 1.0:
        arrival, ctx, gen = _scale(arrival, ctx, gen, scale, seed)
    return Trace(name or trace.name, arrival, ctx, gen)


def merge(traces: Sequence[Trace]) -> Trace:
    """One stream of every request of `traces`, by arrival time (ties keep the order of `traces`),
    named after them joined by '+'."""
    if len(traces) == 1:
        return traces[0]
    arrival = np.concatenate([t.arrival for t in traces])
    order = np.argsort(arrival, kind="stable")
    return Trace(
        "+".join(t.name for t in traces),
        arrival[order],
        np.concatenate([t.context_tokens for t in traces])[order],
        np.concatenate([t.generated_tokens for t in traces])[order],
    )


def _scale(
    arrival: FloatArray, ctx: IntArray, gen: IntArray, scale: float, seed: int
) -> tuple[FloatArray, IntArray, IntArray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CA1E]))
    whole = math.floor(scale)
    extra = rng.random(arrival.size) < (scale - whole)
    parts_t: list[FloatArray] = []
    parts_i: list[npt.NDArray[np.intp]] = []
    index = np.arange(arrival.size)
    if whole >= 1:
        parts_t.append(arrival)  # the original keeps its timestamp
        parts_i.append(index)
    for _ in range(max(whole - 1, 0)):
        parts_t.append(arrival + rng.uniform(0.0, SCALE_JITTER_SECONDS, arrival.size))
        parts_i.append(index)
    # Below 1 the kept share are originals; above 1 the fractional copy is jittered like the others.
    jitter = rng.uniform(0.0, SCALE_JITTER_SECONDS, arrival.size) if whole >= 1 else np.zeros(arrival.size)
    parts_t.append((arrival + jitter)[extra])
    parts_i.append(index[extra])
    t = np.concatenate(parts_t)
    i = np.concatenate(parts_i)
    order = np.argsort(t, kind="stable")
    return t[order], ctx[i[order]], gen[i[order]]
