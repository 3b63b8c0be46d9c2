"""Retry delays shared by the Octopush client and the e-mail outbox (SPEC §4)."""

import random

FIRST = 1.5  # seconds: the first retry comes within about 2 s
CEILING = 300.0  # at most 5 minutes apart


def delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): doubling, with jitter."""
    base = min(CEILING, FIRST * 2 ** max(0, attempt - 1))
    return min(CEILING, base * random.uniform(0.75, 1.25)) if attempt > 1 else random.uniform(1.0, 2.0)
