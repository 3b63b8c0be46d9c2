"""Retry delays shared by the Octopush client and the e-mail outbox (SPEC §4)."""

import asyncio
import contextlib
import random

FIRST = 1.5  # seconds: the first retry comes within about 2 s
CEILING = 300.0  # at most 5 minutes apart


ROW_PAUSE = 0.5  # seconds, times its failures so far: before a row that raised is tried again


def row_pause(failures: int) -> float:
    """Before a row that failed is tried again: short, since after a few failures it is set aside anyway."""
    return ROW_PAUSE * max(1, failures)


def delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): doubling, with jitter."""
    base = min(CEILING, FIRST * 2 ** max(0, attempt - 1))
    return min(CEILING, base * random.uniform(0.75, 1.25)) if attempt > 1 else random.uniform(1.0, 2.0)


async def nap(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` pass; a cancellation always goes through.

    Not `asyncio.wait_for(event.wait(), ...)`: on Python 3.11 that can swallow a cancellation that
    arrives as the event fires, and a worker's stop() would then wait a whole idle period.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
