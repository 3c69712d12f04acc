"""Capped exponential backoff with jitter: the one retry timing of the autoscaler's edges.

`Backoff` is the timing, pure and frozen: attempt n waits min(cap, base * factor**(n-1)), shortened
by up to `jitter` of itself at random, so that many clients failing together (one broker down, an
API server restarting, two autoscaler replicas) do not retry in lockstep. The random source is a
parameter. `Retry` counts the attempts of one retrying loop over a `Backoff`, with its random source
injected (a watch reconnecting, a write retried). Callers: `autoscaler.controller` (source polls),
`kube.cache` (watches), `kube.actuator` (scale writes).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """The wait before retry number `attempt` (1 for the first); `rng()` draws in [0, 1)."""
        exponent = max(attempt - 1, 0)
        # Bound the power before multiplying: 2.0 ** 2000 overflows a float.
        raw = self.cap_seconds if exponent > 64 else self.base_seconds * self.factor**exponent
        capped = min(self.cap_seconds, raw)
        return capped * (1.0 - self.jitter * rng())


class Retry:
    """The successive waits of one retrying loop: `next()` before each retry, `reset()` after a
    success."""

    def __init__(self, backoff: Backoff, rng: Callable[[], float] = random.random) -> None:
        self.backoff = backoff
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        self._attempt += 1
        return self.backoff.delay(self._attempt, self._rng)

    def reset(self) -> None:
        self._attempt = 0
