"""Parsing a large e-mail in a child process, so that its CPU time never starves the event loop.

A worker thread is not enough for a message of several megabytes: parsing holds the GIL in long C calls
(decoding, splitting, HTML parsing), and every hand-off of the GIL to the loop or to the database
writer then waits for them, so callbacks waited hundreds of milliseconds. A child process has a GIL of
its own. It is started on the first large message (most mail is small and never needs it), with the
"spawn" method since forking a process that runs threads is unsafe, and it is replaced if it dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

log = logging.getLogger("relay.smtp")

T = TypeVar("T")


class ChildParser:
    """Runs a picklable function in one child process; falls back to a thread if no process can be had."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        for _ in range(2):  # a child that died (OOM killer, a crash) is replaced once
            try:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                return await loop.run_in_executor(self._pool, fn, *args)
            except BrokenProcessPool:
                log.warning("the e-mail parsing process died; starting a new one")
                self._discard()
            except OSError as exc:  # no process can be started here (limits, sandbox): parse in a thread
                log.warning("cannot start a process to parse large e-mails (%s); parsing in a thread", exc)
                self._discard()
                break
        return await asyncio.to_thread(fn, *args)

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
