"""The SQLite store: one writer thread with group commit, and reader threads with their own connections.

sqlite-utils is synchronous, so every write is a function sent to the writer
thread. The writer takes every write waiting at that moment, runs each in its
own savepoint inside one transaction, commits once, and only then resolves each
caller's future: acknowledged means durable, and a burst of callbacks shares
one fsync instead of paying one each.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from relay.storage.schema import migrations

log = logging.getLogger("relay.storage")
T = TypeVar("T")
MAX_BATCH = 512


class StoreError(Exception):
    """The database could not commit (read-only, disk full, I/O error): nothing was stored."""


def connect(path: Path, *, readonly: bool = False) -> Database:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db = Database(conn)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss, not only a killed process.
        conn.execute("PRAGMA synchronous = FULL")
    return db


def migrate(path: Path) -> list[str]:
    """Apply pending migrations; returns their names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending
    finally:
        db.close()


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn, future, loop):
        self.fn, self.future, self.loop = fn, future, loop


class Store:
    """Owns the write connection (in one thread) and a small pool of read connections."""

    def __init__(self, path: Path, *, readers: int = 4):
        self.path = Path(path)
        self.commits = 0
        self.writes = 0
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers = readers
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[Database] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        applied = await asyncio.to_thread(migrate, self.path)
        if applied:
            log.info("database %s migrated: %s", self.path, ", ".join(applied))
        self._pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-read")
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._pool:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for db in self._read_conns:
                db.close()
            self._read_conns.clear()

    # ------------------------------------------------------------ API

    async def write(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` in the writer's transaction; returns once it is committed."""
        if self._thread is None:
            raise StoreError("the store is not started")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` on a reader thread's own connection, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, fn)

    def _read(self, fn: Callable[[Database], T]) -> T:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path, readonly=True)
            with self._lock:
                self._read_conns.append(db)
        return fn(db)

    # ------------------------------------------------------------ the writer

    def _run(self) -> None:
        db = connect(self.path)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                self._commit(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _commit(self, db: Database, batch: list[_Job]) -> None:
        results: list[tuple[bool, Any]] = []
        conn = db.conn
        try:
            conn.execute("BEGIN")
            for job in batch:
                # One savepoint per write, with a fixed name: one bad write does not spoil the others.
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job.fn(db)))
                except sqlite3.OperationalError:
                    raise  # disk full, read-only, I/O: the whole transaction is gone
                except Exception as exc:  # noqa: BLE001 - handed back to its own caller
                    conn.execute("ROLLBACK TO job")
                    results.append((False, exc))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("database commit failed: %s", self.last_error)
            error = StoreError(f"the database could not commit: {exc}")
            for job in batch:
                self._resolve(job, False, error)
            return
        self.commits += 1
        self.writes += len(batch)
        self.last_error = None
        for job, (ok, value) in zip(batch, results, strict=True):
            self._resolve(job, ok, value)

    @staticmethod
    def _resolve(job: _Job, ok: bool, value: Any) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more
