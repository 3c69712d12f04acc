"""The one backoff (`autoscaler.backoff`): its delays, capped and jittered by an injected random
source, and a retry that steps through them and starts over. The loop's use of it is in
tests/live/test_controller.py."""

from __future__ import annotations

import pytest

from autoscaler.backoff import Backoff, Retry


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (1, 0.0, 0.5),  # the first retry waits the base
        (3, 0.0, 2.0),  # doubling
        (10, 0.0, 30.0),  # capped
        (10, 1.0, 15.0),  # jitter takes off at most half
        (5000, 0.0, 30.0),  # a long outage does not overflow the power
    ],
)
def test_backoff_delay(attempt: int, draw: float, expected: float) -> None:
    assert Backoff(base_seconds=0.5, cap_seconds=30.0).delay(attempt, lambda: draw) == expected


def test_a_retry_steps_through_its_backoff_with_the_injected_random_source_and_starts_over() -> None:
    draws = iter([0.0, 0.5, 0.0, 0.0])
    retry = Retry(Backoff(base_seconds=1.0, cap_seconds=3.0, jitter=0.5), rng=lambda: next(draws))
    assert [retry.next(), retry.next(), retry.next()] == [1.0, 1.5, 3.0]  # 1, 2 shortened by 25 %, capped
    retry.reset()
    assert retry.next() == 1.0
