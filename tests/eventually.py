"""`eventually`: the one way an async test waits for a condition, with a deadline.

The clock is the event loop's, which is the wall clock in a plain loop and the fake clock in a
looptime-patched one (`@pytest.mark.looptime`): there a timeout is in loop seconds, and a wait that
no timer ends fails at once instead of after `timeout` real seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Between two checks: short next to every timeout the tests use, long enough not to spin the loop.
POLL_SECONDS = 0.01


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    """Wait until `check()` holds; return the seconds that took. Fails naming `what` once `timeout`
    seconds passed without it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        await asyncio.sleep(POLL_SECONDS)
    return loop.time() - started
