"""Hand-written fakes for the loop's tests: a source that reads what it is told to."""

from __future__ import annotations

import time
from collections.abc import Callable

from autoscaler.engine.types import Reading


class FakeSource:
    """Reports `value` (or fails with `error`) on every read; tests change them between reads.
    `calls` counts reads; `next_exception` makes the next read raise, as a buggy source would."""

    def __init__(
        self,
        value: float | None = 0.0,
        *,
        poll_seconds: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.value = value
        self.error: str | None = None
        self.poll_seconds = poll_seconds
        self.calls = 0
        self.closed = False
        self.next_exception: Exception | None = None
        self._clock = clock

    def fail(self, error: str) -> None:
        self.value, self.error = None, error

    def set(self, value: float) -> None:
        self.value, self.error = value, None

    async def read(self) -> Reading:
        self.calls += 1
        if self.next_exception is not None:
            exc, self.next_exception = self.next_exception, None
            raise exc
        if self.value is None:
            return Reading(None, self._clock(), self.error or "failed")
        return Reading(self.value, self._clock())

    async def close(self) -> None:
        self.closed = True
