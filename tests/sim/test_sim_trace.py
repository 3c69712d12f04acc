"""The bundled traces and the derived request streams (window, speed, scale, merged)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from autoscaler.sim.trace import BUNDLED, Trace, bundled_path, derive, load_trace, merge, read_trace

DATA = bundled_path("code").parent

# From shared/traces/README.md: the upstream files, byte for byte.
LICENCE = "AzurePublicDataset-LICENSE-CC-BY-4.0.txt"
SHA256 = {
    "AzureLLMInferenceTrace_code.csv": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
    "AzureLLMInferenceTrace_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    LICENCE: "9bbc1ea9fe5c96df01b311a2ac864d5b18fc87b9948bfd14770e4b44db755ee9",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_files_are_the_upstream_bytes(name: str) -> None:
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == SHA256[name]


def test_notice_gives_the_attribution_the_licence_asks_for() -> None:
    notice = (DATA / "NOTICE").read_text(encoding="utf-8")
    for needed in (
        "Splitwise: Efficient generative LLM inference using phase splitting",
        "ISCA 2024",
        "https://github.com/Azure/AzurePublicDataset",
        "https://creativecommons.org/licenses/by/4.0/",
        "unmodified copies",
        LICENCE,
    ):
        assert needed in notice


@pytest.mark.parametrize(
    ("name", "rows", "span", "first"),
    [
        # README: rows, span, and the first data row of each file.
        ("code", 8819, 3435.948, (4808, 10)),
        ("conv", 19366, 3501.722, (374, 44)),
    ],
)
def test_reading_the_bundled_traces(name: str, rows: int, span: float, first: tuple[int, int]) -> None:
    trace = read_trace(bundled_path(name))
    assert len(trace) == rows
    assert trace.arrival[0] == 0.0
    assert trace.span == pytest.approx(span, abs=1e-3)
    assert np.all(np.diff(trace.arrival) >= 0)
    assert (int(trace.context_tokens[0]), int(trace.generated_tokens[0])) == first


def test_a_trace_with_lf_endings_and_a_trailing_newline_reads_the_same(tmp_path: Path) -> None:
    lf = tmp_path / "lf.csv"
    lf.write_bytes(bundled_path("code").read_bytes().replace(b"\r\n", b"\n") + b"\n")
    a, b = read_trace(lf), read_trace(bundled_path("code"))
    assert np.array_equal(a.arrival, b.arrival)
    assert np.array_equal(a.context_tokens, b.context_tokens)


def test_a_bad_row_is_reported_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n2023-11-16 18:17:04,ten,2\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv:3: cannot read row"):
        read_trace(bad)


def test_window_keeps_the_requests_inside_it_and_starts_at_zero() -> None:
    full = load_trace("code")
    inside = int(np.count_nonzero((full.arrival >= 600) & (full.arrival < 1200)))
    part = load_trace("code", window=(600, 1200))
    assert len(part) == inside > 0
    assert part.arrival.min() >= 0
    assert part.arrival.max() < 600
    first = np.flatnonzero(full.arrival >= 600)[0]
    assert part.arrival[0] == pytest.approx(full.arrival[first] - 600)


def test_speed_compresses_time_and_keeps_every_request() -> None:
    full = load_trace("conv")
    fast = load_trace("conv", speed=4)
    assert len(fast) == len(full)
    assert fast.span == pytest.approx(full.span / 4)
    assert np.array_equal(fast.generated_tokens, full.generated_tokens)


def test_window_is_in_trace_time_before_the_speed_up() -> None:
    part = load_trace("code", window=(0, 600), speed=2)
    assert len(part) == len(load_trace("code", window=(0, 600)))
    assert part.span < 300


@pytest.mark.parametrize("scale", [0.5, 2.0, 2.5, 3.0])
def test_scale_multiplies_the_number_of_requests(scale: float) -> None:
    full = load_trace("conv")
    scaled = load_trace("conv", scale=scale, seed=7)
    n = len(full)
    expected = n * scale
    frac = scale % 1
    # Whole copies are exact; the fractional copy is one Bernoulli draw per request (5 sigma).
    assert abs(len(scaled) - expected) <= 5 * np.sqrt(n * frac * (1 - frac)) + 1e-9
    assert np.all(np.diff(scaled.arrival) >= 0)
    # Copies arrive shortly after their original, never before the trace starts.
    assert scaled.arrival.min() >= 0
    assert scaled.span <= full.span + 1.0


def test_scale_copies_keep_their_token_counts() -> None:
    full = load_trace("code", window=(0, 300))
    doubled = load_trace("code", window=(0, 300), scale=2, seed=1)
    assert sorted(doubled.context_tokens.tolist()) == sorted(full.context_tokens.tolist() * 2)


def test_scale_is_seeded() -> None:
    a = load_trace("code", scale=1.5, seed=3)
    b = load_trace("code", scale=1.5, seed=3)
    c = load_trace("code", scale=1.5, seed=4)
    assert np.array_equal(a.arrival, b.arrival)
    assert not np.array_equal(a.arrival, c.arrival) or len(a) != len(c)


def test_scale_one_is_the_trace_itself() -> None:
    full = read_trace(bundled_path("code"))
    same = derive(full, scale=1.0)
    assert np.array_equal(same.arrival, full.arrival)


def test_bundled_names() -> None:
    assert set(BUNDLED) == {"code", "conv"}
    assert load_trace("code").name == "code"


def _trace(name: str, arrival: list[float], context: list[int]) -> Trace:
    return Trace(name, np.array(arrival), np.array(context), np.array(context) * 10)


def test_merge_replays_every_request_of_each_stream_by_arrival() -> None:
    a = _trace("a", [0.0, 2.0, 5.0], [1, 2, 3])
    b = _trace("b", [1.0, 2.0, 9.0], [7, 8, 9])
    merged = merge([a, b])
    assert merged.name == "a+b"
    assert merged.arrival.tolist() == [0.0, 1.0, 2.0, 2.0, 5.0, 9.0]
    # Each request keeps its own tokens; at a tie the earlier stream's request comes first.
    assert merged.context_tokens.tolist() == [1, 7, 2, 8, 3, 9]
    assert merged.generated_tokens.tolist() == [10, 70, 20, 80, 30, 90]


def test_merging_one_stream_is_that_stream() -> None:
    a = _trace("a", [0.0, 2.0], [1, 2])
    assert merge([a]) is a
