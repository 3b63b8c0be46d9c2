"""The Worker base: one loop for the outbox, the send queue and the notifier (after Mailman 3's `Runner`).

A worker looks at its table, starts what is due, then naps until the next row is due, something wakes it (a
commit that queued work, a finished row, the scheduler's sweep) or its idle time passes. Rows it started are
tracked in flight, so a row is never started twice, and `stop()` gives them a bounded time to finish; what is
still unfinished then stays in the database and is picked up at the next start. A row that keeps failing is
counted, and set aside after `queues.MAX_FAILURES` (the Attention page) instead of blocking its worker.

Each subclass writes only its own part: `run_once()` (claim a batch, start or do its rows, say how long to nap)
and what one row is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

from relay import backoff
from relay.storage import queues
from relay.storage.database import Store, StoreError

log = logging.getLogger("relay.workers")


class Worker:
    """A background loop over one kind of durable work; subclasses implement `run_once()`."""

    name = "worker"  # the task's name, and the first word of its log lines
    idle = 30.0  # seconds between looks at the table when nothing is due (wake() cuts it short)
    stop_grace = 5.0  # seconds stop() lets rows in flight finish before cancelling them
    log = log

    def __init__(self, store: Store):
        self.store = store
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight: dict[int, asyncio.Task] = {}
        self._renewed = 0.0  # time.monotonic() of the last lease renewal

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking new work; let rows in flight finish for `timeout` (`stop_grace`), then cancel them.

        A cancelled row keeps its state in the database (pending, leased or `sending`), so the next start
        takes it up again; each worker's own idempotency (a request_id, a lease) keeps that from doubling.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight:
            grace = self.stop_grace if timeout is None else timeout
            _, pending = await asyncio.wait(list(self._inflight.values()), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._inflight.clear()

    def wake(self) -> None:
        """Look at the table now: after a commit that queued work, or from the scheduler's sweep."""
        self._wake.set()

    # ------------------------------------------------------------ the loop

    async def run_once(self) -> float:
        """Claim and start (or do) what is due; returns the seconds to nap before the next look (0: look again
        at once)."""
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must outlive a bad moment (disk full, locked database)
                self.log.exception("%s: cannot work through its queue; trying again shortly", self.name)
                wait = backoff.FIRST
            if wait > 0:
                await backoff.nap(self._wake, wait)

    # ------------------------------------------------------------ rows in flight

    @property
    def busy(self) -> list[int]:
        """The ids of the rows this worker has in flight: a claim must skip them."""
        return list(self._inflight)

    def spawn(self, row_id: int, work: Coroutine[Any, Any, None]) -> None:
        """Run one row's work as its own task, tracked until it ends; its end wakes the loop (a slot is free)."""
        if row_id in self._inflight:
            work.close()  # already running: never twice
            return
        task = asyncio.create_task(work, name=f"{self.name}-{row_id}")
        self._inflight[row_id] = task
        task.add_done_callback(partial(self._done, row_id))

    def _done(self, row_id: int, task: asyncio.Task) -> None:
        # Only now may the next claim pick the row again (one given back after an error, say).
        self._inflight.pop(row_id, None)
        self._wake.set()

    async def renew_leases(self, write, every: float) -> None:
        """Extend the leases of the rows this worker has in flight (`write`), about every `every` seconds.

        Another daemon on the same database takes over only the rows of one that stopped renewing, i.e. died
        (SPEC §8). Called at each pass, it writes at most twice per `every`, not at every wake: under a flood
        the passes come many times a second. A database fault is let pass: the rows go on, and a later pass
        renews them once it is back.
        """
        now = time.monotonic()
        if now - self._renewed < every / 2:
            return
        self._renewed = now
        with contextlib.suppress(StoreError):
            await self.store.write(write, small=True)

    # ------------------------------------------------------------ rows that keep failing

    async def note_failures(self, work: str, failures: dict[int, str], *, insist: bool = False) -> dict[int, int]:
        """Count one more failure for each row ({id: why}); log those set aside now. Returns each row's count.

        `insist`: retry the write until it commits (the disk may be full for a while) instead of raising.
        """
        write = partial(queues.note_failures, work=work, failures=failures)
        if insist:
            counts = await self.write_until_committed(write, f"{work}: counting failures", small=True)
        else:
            counts = await self.store.write(write)
        for row_id, count in counts.items():
            if count >= queues.MAX_FAILURES:
                self.log.error(
                    "%s: %s #%d failed %d times and is set aside (retry it from /attention): %s",
                    self.name,
                    work,
                    row_id,
                    count,
                    failures[row_id],
                )
        return counts

    async def write_until_committed(self, write, what: str, *, small: bool = False):
        """A write the work cannot go on without, retried with backoff until it commits.

        Stopped meanwhile, the row keeps its in-progress state and the next start takes it up again.
        """
        attempt = 0
        while True:
            try:
                return await self.store.write(write, small=small)
            except StoreError as exc:
                attempt += 1
                wait = backoff.delay(attempt)
                self.log.error("%s failed (%s); retrying in %.0f s", what, exc, wait)
                await asyncio.sleep(wait)
